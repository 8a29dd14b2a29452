"""The transport-independent face of a Shelly Gen2+ device's RPC (``shared/shelly-api.md`` §2).

A :class:`Transport` carries one call and returns the frame's ``result`` (or raises one of the
:class:`~kilowatch.errors.DeviceError` family). :class:`ShellyRpc` sits on any transport (LAN over
aioshelly, MQTT for remote sites) and gives:

* a small per-device concurrency limit (the firmware serves at most 6 non-persistent channels,
  §3; scripts at most 5 concurrent calls);
* a bounded timeout on every call;
* typed methods named after the RPC they send (``script_put_code`` ↔ ``Script.PutCode``).

It knows nothing of the ledger, the store or the broker, like aioshelly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kilowatch.errors import DeviceTimeoutError

CALL_TIMEOUT_S = 10.0
"""Default bound of one RPC call (a device on a busy Wi-Fi answers in well under a second)."""
DEVICE_CONCURRENCY = 3
"""Calls in flight to one device at once: below the firmware's 6 channels (§3), leaving room for
the owner's app and Home Assistant."""
SCRIPT_CHUNK = 1024
"""Characters per ``Script.PutCode`` / ``Shelly.Put*`` call: the official uploader's chunk
(``SYMBOLS_IN_CHUNK = 1024``, §14.1)."""

Listener = Callable[[str, dict[str, Any]], None]
"""Receives a device's notifications: ``(method, params)``, e.g. ``("NotifyEvent", {...})``."""


class Transport(Protocol):
    """Carries RPC calls to one device."""

    @property
    def label(self) -> str:
        """How errors name the device: its id when known, else its address."""
        ...

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        """Send one request frame and return its ``result`` (``None`` when the device returns
        none). Raises ``DeviceConnectionError``, ``DeviceTimeoutError``, ``InvalidAuthError`` or
        ``RpcCallError``; never a foreign exception."""
        ...

    async def close(self) -> None:
        """Release the connection (idempotent)."""
        ...


class ShellyRpc:
    """One device's RPC: typed methods over a :class:`Transport`. An async context manager that
    closes the transport."""

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = CALL_TIMEOUT_S,
        concurrency: int = DEVICE_CONCURRENCY,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self._limit = asyncio.Semaphore(concurrency)

    @property
    def label(self) -> str:
        return self.transport.label

    async def __aenter__(self) -> ShellyRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def listen(self, callback: Listener) -> Callable[[], None] | None:
        """Receive the device's notifications (``NotifyEvent``, ``NotifyStatus``, §9) as
        ``callback(method, params)`` until the returned function is called, when the transport
        carries them (``listen`` on the LAN WebSocket and on MQTT); ``None`` when it does not.
        Best effort: notifications sent while a connection is down are lost, so a caller that
        needs a state reads it by calling too."""
        listen = getattr(self.transport, "listen", None)
        if listen is None:
            return None
        remove: Callable[[], None] = await listen(callback)
        return remove

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call ``method``; at most ``concurrency`` calls are in flight, each bounded by
        ``timeout`` (default :data:`CALL_TIMEOUT_S`)."""
        seconds = self.timeout if timeout is None else timeout
        async with self._limit:
            try:
                async with asyncio.timeout(seconds):
                    return await self.transport.call(method, params, timeout=seconds)
            except TimeoutError as err:
                raise DeviceTimeoutError(
                    self.label, f"{method}: no answer within {seconds:g} s", seconds=seconds
                ) from err

    # --- Shelly.* (§10) ---------------------------------------------------------------------

    async def get_device_info(self) -> dict[str, Any]:
        return dict(await self.call("Shelly.GetDeviceInfo"))

    async def get_status(self) -> dict[str, Any]:
        return dict(await self.call("Shelly.GetStatus"))

    async def get_config(self) -> dict[str, Any]:
        return dict(await self.call("Shelly.GetConfig"))

    async def reboot(self, delay_ms: int = 1000) -> None:
        await self.call("Shelly.Reboot", {"delay_ms": delay_ms})

    async def set_auth(self, realm: str, ha1: str | None) -> None:
        """``Shelly.SetAuth``: ``ha1`` = sha256("admin:<realm>:<password>"), ``None`` removes it."""
        await self.call("Shelly.SetAuth", {"user": "admin", "realm": realm, "ha1": ha1})

    async def put_pem(self, method: str, data: str | None, *, append: bool) -> int:
        """``Shelly.PutUserCA`` / ``PutTLSClientCert`` / ``PutTLSClientKey``: one chunk."""
        result = await self.call(method, {"data": data, "append": append})
        return int(result.get("len", 0)) if isinstance(result, dict) else 0

    async def list_methods(self) -> list[str]:
        """``Shelly.ListMethods``: what this device's firmware answers."""
        result = await self.call("Shelly.ListMethods")
        return [str(m) for m in result.get("methods", [])] if isinstance(result, dict) else []

    async def check_for_update(self) -> dict[str, Any]:
        """``Shelly.CheckForUpdate`` (§17): ``{stage: {"version", "build_id"}}`` for each stage
        newer than the running firmware (``{}`` when up to date)."""
        result = await self.call("Shelly.CheckForUpdate")
        return dict(result) if isinstance(result, dict) else {}

    async def update(self, *, stage: str | None = None, url: str | None = None) -> None:
        """``Shelly.Update`` (§17) to ``stage`` (``"stable"``/``"beta"``) or from ``url``; the
        device then reboots into the new firmware."""
        if (stage is None) == (url is None):
            raise ValueError("Shelly.Update takes exactly one of stage and url")
        await self.call("Shelly.Update", {"stage": stage} if stage is not None else {"url": url})

    # --- Sys (§11), MQTT (§7) ---------------------------------------------------------------

    async def sys_get_status(self) -> dict[str, Any]:
        return dict(await self.call("Sys.GetStatus"))

    async def sys_get_config(self) -> dict[str, Any]:
        return dict(await self.call("Sys.GetConfig"))

    async def sys_set_config(self, config: Mapping[str, Any]) -> bool:
        """Returns ``restart_required``."""
        result = await self.call("Sys.SetConfig", {"config": dict(config)})
        return bool(result.get("restart_required")) if isinstance(result, dict) else False

    async def mqtt_get_config(self) -> dict[str, Any]:
        return dict(await self.call("MQTT.GetConfig"))

    async def mqtt_set_config(self, config: Mapping[str, Any]) -> bool:
        """Returns ``restart_required`` (true for MQTT on current firmware, §7.1)."""
        result = await self.call("MQTT.SetConfig", {"config": dict(config)})
        return bool(result.get("restart_required")) if isinstance(result, dict) else False

    async def mqtt_get_status(self) -> dict[str, Any]:
        return dict(await self.call("MQTT.GetStatus"))

    # --- Script.* (§14) ---------------------------------------------------------------------

    async def script_list(self) -> list[dict[str, Any]]:
        result = await self.call("Script.List")
        return list(result.get("scripts", [])) if isinstance(result, dict) else []

    async def script_create(self, name: str) -> int:
        return int((await self.call("Script.Create", {"name": name}))["id"])

    async def script_put_code(self, script_id: int, code: str, *, append: bool) -> int:
        result = await self.call(
            "Script.PutCode", {"id": script_id, "code": code, "append": append}
        )
        return int(result.get("len", 0)) if isinstance(result, dict) else 0

    async def script_get_code(self, script_id: int, *, offset: int = 0) -> dict[str, Any]:
        return dict(await self.call("Script.GetCode", {"id": script_id, "offset": offset}))

    async def script_start(self, script_id: int) -> bool:
        return bool((await self.call("Script.Start", {"id": script_id})).get("was_running"))

    async def script_stop(self, script_id: int) -> bool:
        return bool((await self.call("Script.Stop", {"id": script_id})).get("was_running"))

    async def script_get_status(self, script_id: int) -> dict[str, Any]:
        return dict(await self.call("Script.GetStatus", {"id": script_id}))

    async def script_get_config(self, script_id: int) -> dict[str, Any]:
        return dict(await self.call("Script.GetConfig", {"id": script_id}))

    async def script_set_config(self, script_id: int, config: Mapping[str, Any]) -> None:
        await self.call("Script.SetConfig", {"id": script_id, "config": dict(config)})

    async def script_delete(self, script_id: int) -> None:
        await self.call("Script.Delete", {"id": script_id})

    async def script_eval(self, script_id: int, code: str) -> Any:
        """``Script.Eval`` in a running script: the expression's value (``result``)."""
        result = await self.call("Script.Eval", {"id": script_id, "code": code})
        return result.get("result") if isinstance(result, dict) else None

    # --- EMData / EM1Data history (§13.5) ----------------------------------------------------

    async def emdata_get_records(self, emdata_id: int, ts: int | None = None) -> dict[str, Any]:
        """``EMData.GetRecords``: ``{"data_blocks": [{"ts", "period", "records"}, ...]}``, the
        contiguous stored intervals (from ``ts`` when given)."""
        return await self._history("EMData.GetRecords", emdata_id, ts, None)

    async def emdata_get_data(
        self, emdata_id: int, ts: int, end_ts: int | None = None
    ) -> dict[str, Any]:
        """``EMData.GetData`` with keys: ``{"keys", "data": [{"ts", "period", "values"}],
        "next_record_ts"?}``, 60-second records from ``ts`` (up to ``end_ts``); one answer holds
        as many rows as the device wants to send, the rest follows from ``next_record_ts``."""
        return await self._history("EMData.GetData", emdata_id, ts, end_ts)

    async def em1data_get_records(self, em1data_id: int, ts: int | None = None) -> dict[str, Any]:
        """``EM1Data.GetRecords``: as :meth:`emdata_get_records`."""
        return await self._history("EM1Data.GetRecords", em1data_id, ts, None)

    async def em1data_get_data(
        self, em1data_id: int, ts: int, end_ts: int | None = None
    ) -> dict[str, Any]:
        """``EM1Data.GetData``: as :meth:`emdata_get_data`, with EM1Data's 14 keys."""
        return await self._history("EM1Data.GetData", em1data_id, ts, end_ts)

    async def _history(
        self, method: str, component_id: int, ts: int | None, end_ts: int | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"id": component_id}
        if ts is not None:
            params["ts"] = ts
        if end_ts is not None:
            params["end_ts"] = end_ts
        if method.endswith("GetData"):
            params["add_keys"] = True  # the column names travel with the rows (§13.5)
        result = await self.call(method, params)
        return dict(result) if isinstance(result, dict) else {}

    # --- KVS (§15) --------------------------------------------------------------------------

    async def kvs_get(self, key: str) -> dict[str, Any]:
        """``KVS.Get``: ``{"etag", "value"}``; RpcCallError -105 for a missing key."""
        return dict(await self.call("KVS.Get", {"key": key}))

    async def kvs_set(self, key: str, value: Any, *, etag: str | None = None) -> dict[str, Any]:
        """``KVS.Set`` (with ``etag``: only if the value is still that one): ``{"etag", "rev"}``."""
        params: dict[str, Any] = {"key": key, "value": value}
        if etag is not None:
            params["etag"] = etag
        return dict(await self.call("KVS.Set", params))


__all__ = [
    "CALL_TIMEOUT_S",
    "DEVICE_CONCURRENCY",
    "SCRIPT_CHUNK",
    "Listener",
    "ShellyRpc",
    "Transport",
]
