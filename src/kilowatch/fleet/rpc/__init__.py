"""The Shelly RPC client: transport-independent :class:`ShellyRpc` over the LAN (aioshelly) or
MQTT. Knows nothing of the ledger, the store or the broker."""

from kilowatch.fleet.rpc.base import (
    CALL_TIMEOUT_S,
    DEVICE_CONCURRENCY,
    SCRIPT_CHUNK,
    ShellyRpc,
    Transport,
)

__all__ = ["CALL_TIMEOUT_S", "DEVICE_CONCURRENCY", "SCRIPT_CHUNK", "ShellyRpc", "Transport"]
