"""The device side of the script API: a :class:`ScriptHost` backed by one device.

The host knows its device only as a :class:`ScriptedDevice` (what :class:`shellysim.device.Device`
offers), so the device can own its host without the two modules importing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import shellysim.rpcutil as r
from shellysim.clock import Clock
from shellysim.errors import RpcCallError
from shellysim.host import (
    Cancellable,
    EventListener,
    MqttConnectionListener,
    MqttMessageCallback,
    StatusListener,
    Unsubscribe,
)


class ScriptedDevice(Protocol):
    """What the script host uses of its device."""

    @property
    def channels(self) -> Mapping[str, object]:
        """Metering and switching components by key (``pm1:0``)."""
        ...

    @property
    def active_mqtt(self) -> Mapping[str, Any]:
        """The MQTT config active since the last boot."""
        ...

    @property
    def clock(self) -> Clock:
        """The fleet's simulated clock."""
        ...

    async def call(self, method: str, params: dict[str, Any] | None, *, source: str) -> Any:
        """Run one RPC method; raises :class:`RpcCallError`."""
        ...

    def tick(self) -> None:
        """Integrate energy up to now."""
        ...

    def component_status(self, key: str) -> dict[str, Any] | None:
        """Status of one component, or ``None``."""
        ...

    def component_config(self, key: str) -> dict[str, Any] | None:
        """Config of one component, or ``None``."""
        ...

    def device_info(self) -> dict[str, Any]:
        """``Shelly.GetDeviceInfo``."""
        ...

    def emit_event(self, component: str, event: str, **fields: Any) -> None:
        """NotifyEvent with one event item."""
        ...

    def now(self) -> float:
        """The device's own clock."""
        ...

    def log(self, where: str, message: str) -> None:
        """One debug-log line."""
        ...


class MqttLink(Protocol):
    """What the device's MQTT connection offers scripts (implemented in ``shellysim.mqtt``)."""

    def connected(self) -> bool:
        """Whether the broker connection is up."""
        ...

    def publish(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        """Queue a publish; ``False`` when not connected."""
        ...

    def subscribe(self, topic_filter: str, callback: MqttMessageCallback) -> None:
        """Subscribe for a script."""
        ...

    def unsubscribe(self, topic_filter: str) -> bool:
        """Drop a script subscription."""
        ...


class _Timer:
    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel()


class DeviceScriptHost:
    """Implements :class:`shellysim.host.ScriptHost` for one device."""

    def __init__(self, device: ScriptedDevice) -> None:
        self.device = device
        self.mqtt: MqttLink | None = None
        self._status: list[StatusListener] = []
        self._events: list[EventListener] = []
        self._mqtt_listeners: list[MqttConnectionListener] = []

    async def call(self, method: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
        """Run an RPC method on the device."""
        result = await self.device.call(method, params, source="script")
        return result if isinstance(result, dict) else None

    def component_status(self, key: str) -> dict[str, Any] | None:
        """Status of a component."""
        if key.lower() in self.device.channels:
            # A real meter's counters are current when a script reads them, not as of the
            # fleet's last tick (at 3600x a 0.5 s tick is half an hour of energy).
            self.device.tick()
        return self.device.component_status(key)

    def component_config(self, key: str) -> dict[str, Any] | None:
        """Config of a component."""
        return self.device.component_config(key)

    def device_info(self) -> dict[str, Any]:
        """``Shelly.GetDeviceInfo``."""
        return self.device.device_info()

    def emit_event(self, script_id: int, name: str, data: Any) -> None:
        """NotifyEvent from ``script:<id>``."""
        self.device.emit_event(f"script:{script_id}", name, data=data)

    def mqtt_connected(self) -> bool:
        """Whether MQTT is connected."""
        return self.mqtt is not None and self.mqtt.connected()

    def mqtt_publish(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        """Publish from a script."""
        return self.mqtt is not None and self.mqtt.publish(topic, payload, qos, retain)

    def mqtt_subscribe(self, topic_filter: str, callback: MqttMessageCallback) -> None:
        """Subscribe from a script (-109 when MQTT is disabled)."""
        if self.mqtt is None or not self.device.active_mqtt.get("enable"):
            raise RpcCallError(r.FAILED_PRECONDITION, "MQTT is not enabled")
        self.mqtt.subscribe(topic_filter, callback)

    def mqtt_unsubscribe(self, topic_filter: str) -> bool:
        """Unsubscribe from a script."""
        return self.mqtt is not None and self.mqtt.unsubscribe(topic_filter)

    def add_mqtt_connection_listener(self, listener: MqttConnectionListener) -> Unsubscribe:
        """Be told of MQTT connect/disconnect."""
        self._mqtt_listeners.append(listener)
        return lambda: _discard(self._mqtt_listeners, listener)

    def mqtt_connection_changed(self, up: bool) -> None:
        """Called by the MQTT link when the connection comes up or drops."""
        for listener in list(self._mqtt_listeners):
            _safe(listener, up)

    def now(self) -> float:
        """The device's clock."""
        return self.device.now()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        """Schedule on the simulated clock."""
        speed = self.device.clock.speed
        handle = asyncio.get_running_loop().call_later(max(0.0, delay_s / speed), callback)
        return _Timer(handle.cancel)

    def log(self, script_id: int, text: str) -> None:
        """Script output to the debug log."""
        self.device.log(f"shos_script.c:{script_id}", text)

    def add_status_listener(self, listener: StatusListener) -> Unsubscribe:
        """Status deltas."""
        self._status.append(listener)
        return lambda: _discard(self._status, listener)

    def add_event_listener(self, listener: EventListener) -> Unsubscribe:
        """Events."""
        self._events.append(listener)
        return lambda: _discard(self._events, listener)

    def status_changed(self, deltas: dict[str, dict[str, Any]]) -> None:
        """Fan a NotifyStatus out to script status handlers."""
        for key, delta in deltas.items():
            for listener in list(self._status):
                _safe(listener, key, delta)

    def event_emitted(self, item: dict[str, Any]) -> None:
        """Fan a NotifyEvent item out to script event handlers."""
        for listener in list(self._events):
            _safe(listener, item)


def _discard(items: list[Any], item: Any) -> None:
    if item in items:
        items.remove(item)


def _safe(fn: Callable[..., None], *args: Any) -> None:
    # A script handler that raises must not break the device's notification path; the engine
    # records script errors itself.
    with contextlib.suppress(Exception):
        fn(*args)


__all__ = ["DeviceScriptHost", "MqttLink", "ScriptedDevice"]
