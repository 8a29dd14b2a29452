"""The Shelly RPC client: transport-independent :class:`ShellyRpc` over the LAN (aioshelly's
WebSocket RPC, :func:`connect_lan`; :func:`probe` for ``GET /shelly``) or MQTT (:class:`MqttRpc`,
for remote sites). Knows nothing of the ledger, the store or the broker."""

from kilowatch.fleet.rpc.base import (
    CALL_TIMEOUT_S,
    DEVICE_CONCURRENCY,
    SCRIPT_CHUNK,
    ShellyRpc,
    Transport,
)
from kilowatch.fleet.rpc.lan import PROBE_TIMEOUT_S, LanTransport, connect_lan, lan_session, probe
from kilowatch.fleet.rpc.mqtt import MqttRpc, MqttVersion

__all__ = [
    "CALL_TIMEOUT_S",
    "DEVICE_CONCURRENCY",
    "PROBE_TIMEOUT_S",
    "SCRIPT_CHUNK",
    "LanTransport",
    "MqttRpc",
    "MqttVersion",
    "ShellyRpc",
    "Transport",
    "connect_lan",
    "lan_session",
    "probe",
]
