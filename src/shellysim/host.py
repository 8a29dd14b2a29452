"""The contract between a simulated device and the JavaScript engine that runs its scripts.

A running script sees its device only through :class:`ScriptHost`; the device sees the engine
only through :class:`ScriptEngineLike` / :class:`ScriptRuntimeLike`. Neither side imports the
other, so the device works (and its tests run) without an engine, and the engine can be tested
against a tiny host.

Time is the device's *simulated* clock (``now()``, ``call_later``): with a speed factor of 3600 a
script's ``Timer.set(60000, ...)`` fires after one simulated minute, i.e. 1/60 s of real time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

StatusListener = Callable[[str, dict[str, Any]], None]
"""``(component key, changed status fields)`` — the delta of one component, as in NotifyStatus."""

EventListener = Callable[[dict[str, Any]], None]
"""One NotifyEvent item: ``{"component", "id", "event", "ts", ...}`` (shelly-api.md §9.2)."""

MqttMessageCallback = Callable[[str, str], None]
"""``(topic, payload text)`` of a message that matched a script's MQTT subscription."""

MqttConnectionListener = Callable[[bool], None]
"""Called with ``True`` when the device's MQTT connection comes up and ``False`` when it drops."""

Unsubscribe = Callable[[], None]
"""Calling it removes the listener it was returned for; calling it twice is harmless."""


class Cancellable(Protocol):
    """A scheduled callback that can still be cancelled."""

    def cancel(self) -> None:
        """Cancel the callback if it has not run yet (harmless afterwards)."""


class ScriptHost(Protocol):
    """What a device offers to a running script (the device side of the Shelly script API)."""

    def call(self, method: str, params: dict[str, Any] | None) -> Awaitable[dict[str, Any] | None]:
        """Run an RPC method on the device (``Shelly.call``) and return its ``result``.

        Raises :class:`shellysim.errors.RpcCallError` with the device's error code and message.
        """
        ...

    def component_status(self, key: str) -> dict[str, Any] | None:
        """Status of component ``key`` (``"pm1:0"``, ``"sys"``), or ``None`` if there is none."""
        ...

    def component_config(self, key: str) -> dict[str, Any] | None:
        """Config of component ``key``, or ``None`` if there is none."""
        ...

    def device_info(self) -> dict[str, Any]:
        """The object ``Shelly.GetDeviceInfo`` returns."""
        ...

    def emit_event(self, script_id: int, name: str, data: Any) -> None:
        """Emit NotifyEvent ``{component: "script:<id>", event: name, data}`` (``emitEvent``)."""
        ...

    def mqtt_connected(self) -> bool:
        """Whether the device's MQTT client is connected right now (``MQTT.isConnected``)."""
        ...

    def mqtt_publish(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        """Queue a publish on the device's MQTT connection; ``False`` if MQTT is not connected."""
        ...

    def mqtt_subscribe(self, topic_filter: str, callback: MqttMessageCallback) -> None:
        """Deliver messages matching ``topic_filter`` to ``callback`` (``MQTT.subscribe``).

        Raises :class:`shellysim.errors.RpcCallError` (-109) when MQTT is disabled on the device.
        """
        ...

    def mqtt_unsubscribe(self, topic_filter: str) -> bool:
        """Drop a subscription made with :meth:`mqtt_subscribe`; ``False`` if there was none."""
        ...

    def add_mqtt_connection_listener(self, listener: MqttConnectionListener) -> Unsubscribe:
        """Be told when MQTT connects or drops (``MQTT.setConnectHandler`` and friends)."""
        ...

    def now(self) -> float:
        """The device's simulated wall clock, unix seconds (UTC)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` once after ``delay_s`` *simulated* seconds (``Timer.set``)."""
        ...

    def log(self, script_id: int, text: str) -> None:
        """Write one line of script output (``print``/``console.log``) to the device's debug log."""
        ...

    def add_status_listener(self, listener: StatusListener) -> Unsubscribe:
        """Be told of every component status change (``Shelly.addStatusHandler``)."""
        ...

    def add_event_listener(self, listener: EventListener) -> Unsubscribe:
        """Be told of every event the device emits (``Shelly.addEventHandler``)."""
        ...


class ScriptRuntimeLike(Protocol):
    """One running script, as the device sees it."""

    @property
    def running(self) -> bool:
        """``True`` until the script is stopped or crashes."""
        ...

    def status(self) -> dict[str, Any]:
        """``Script.GetStatus`` fields the engine owns (shelly-api.md §14.1).

        ``running``, ``mem_used``, ``mem_peak``, ``mem_free`` and, after a failure, ``errors``
        (e.g. ``["syntax_error"]``).
        """
        ...

    async def eval(self, code: str) -> Any:
        """Evaluate ``code`` in the script's context (``Script.Eval``) and return the value.

        Raises :class:`shellysim.errors.RpcCallError` when the code throws.
        """
        ...

    async def stop(self) -> None:
        """Stop the script: cancel its timers, subscriptions and handlers, free its context."""
        ...


class ScriptEngineLike(Protocol):
    """Starts scripts; one engine serves every device of a fleet."""

    async def start(self, script_id: int, code: str, host: ScriptHost) -> ScriptRuntimeLike:
        """Start ``code`` as script ``script_id`` of the device behind ``host``.

        A script that fails to parse or throws at top level still returns a runtime whose
        ``status()`` shows ``running: False`` and the ``errors``, as on a device.
        """
        ...


__all__ = [
    "Cancellable",
    "EventListener",
    "MqttConnectionListener",
    "MqttMessageCallback",
    "ScriptEngineLike",
    "ScriptHost",
    "ScriptRuntimeLike",
    "StatusListener",
    "Unsubscribe",
]
