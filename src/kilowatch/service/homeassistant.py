"""Publish kilowatch's meters to Home Assistant over MQTT (``homeassistant = true``).

A paho client of its own (client id ``<mqtt_client_id>-ha``, clean session, MQTT 3.1.1 so it also
works with the embedded broker) on the broker the intake uses. Everything is published at QoS 1 and
retained, so Home Assistant finds it whenever it (re)subscribes:

- the discovery configs (:mod:`kilowatch.homeassistant`) of every known device and channel: at
  connect, when a device or channel appears or a device record changes (a rename), and all of them
  again when Home Assistant says ``online`` on ``homeassistant/status`` (its birth message);
- ``kilowatch/status``: ``online`` while connected, ``offline`` at stop and as the last will;
- each device's availability and the states: energy (the corrected total from the store) and
  power (the latest reading), after fresh readings at most every :data:`MIN_GAP_S`, and all of
  them every :data:`STATE_INTERVAL_S`.

paho runs its own network thread here (it reconnects by itself, with capped backoff): this client
carries a few messages a second, not the ingest's load. Its callbacks only hand events to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from kilowatch import __version__
from kilowatch.errors import KilowatchError
from kilowatch.homeassistant import (
    OFFLINE,
    ONLINE,
    SERVICE_STATUS_TOPIC,
    STATUS_ONLINE,
    STATUS_TOPIC,
    Message,
    availability_messages,
    discovery_messages,
    energy_totals,
    state_messages,
    totals_query,
)
from kilowatch.intake.client import MqttOptions, ssl_context
from kilowatch.intake.live import LiveHub
from kilowatch.store import Store

log = logging.getLogger("kilowatch.homeassistant")

QOS = 1
MIN_GAP_S = 2.0
"""States are published at most this often, however fast readings arrive."""
STATE_INTERVAL_S = 60.0
"""Every state (and config) is published again this often, changed or not."""
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
"""paho's reconnect delay doubles from the first to the second (seconds)."""
STOP_FLUSH_S = 2.0
"""How long a stop waits for ``kilowatch/status offline`` to reach the broker."""


class HomeAssistantPublisher:
    """``async with HomeAssistantPublisher(options, store, hub) as p: await p.run(stop)``."""

    def __init__(
        self,
        options: MqttOptions,
        store: Store,
        hub: LiveHub,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self._store = store
        self._hub = hub
        self._clock = clock
        self._wake = asyncio.Event()
        self._full = True
        self._connected = False
        self._sent: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        o = self.options
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{o.client_id}-ha", protocol=paho.MQTTv311
        )
        if o.user is not None:
            client.username_pw_set(o.user, o.password)
        if o.tls:
            client.tls_set_context(ssl_context(o))
        client.will_set(SERVICE_STATUS_TOPIC, OFFLINE, qos=QOS, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    async def __aenter__(self) -> HomeAssistantPublisher:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.options.host, self.options.port, self.options.keepalive)
        self._client.loop_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        client = self._client
        if self._connected:
            info = client.publish(SERVICE_STATUS_TOPIC, OFFLINE, qos=QOS, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, STOP_FLUSH_S)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    # -- paho's thread ----------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("homeassistant connect refused reason=%r", str(reason))
            return
        client.subscribe(STATUS_TOPIC, qos=QOS)
        client.publish(SERVICE_STATUS_TOPIC, ONLINE, qos=QOS, retain=True)
        self._call(self._republish, True)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        log.info("homeassistant disconnected reason=%r", str(reason))
        self._call(self._republish, False)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic == STATUS_TOPIC and message.payload.decode(errors="replace") == (
            STATUS_ONLINE
        ):
            self._call(self._republish, True)

    # -- the loop ---------------------------------------------------------------------------------

    def _republish(self, connected: bool) -> None:
        """Publish everything again at the next cycle (connected), or stop publishing."""
        self._connected = connected
        if connected:
            log.info("homeassistant: publishing every discovery config")
            self._full = True
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set."""
        last = 0.0
        async with self._hub.subscribe() as readings:
            while not stop.is_set():
                if self._connected:
                    await self._cycle()
                    last = time.monotonic()
                await self._wait(stop, readings, last)

    async def _wait(self, stop: asyncio.Event, readings: asyncio.Queue[Any], last: float) -> None:
        """Until a reconnect or birth message, fresh readings (no sooner than MIN_GAP_S after
        ``last``), the periodic republish, or ``stop``."""
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        timeout = None
        if self._connected:  # disconnected: only a (re)connect or the stop wakes us
            waits.add(asyncio.ensure_future(readings.get()))
            timeout = max(0.0, last + STATE_INTERVAL_S - time.monotonic())
        try:
            await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()
        if self._wake.is_set() or stop.is_set() or not self._connected:
            self._wake.clear()
            return
        if time.monotonic() >= last + STATE_INTERVAL_S:
            self._full = True
            return
        while not readings.empty():
            readings.get_nowait()
        pause = last + MIN_GAP_S - time.monotonic()
        if pause > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def _cycle(self) -> None:
        full, self._full = self._full, False
        now = self._clock()
        try:
            records = await self._store.devices()
            totals = energy_totals(await self._store.energy(totals_query(now)))
            latest = await self._store.latest()
        except KilowatchError as err:
            log.warning("homeassistant: cannot read the store, trying again later: %s", err)
            self._full = self._full or full
            return
        messages = discovery_messages(records, origin_version=__version__)
        messages += availability_messages(records, now)
        messages += state_messages(totals, latest)
        self._publish([m for m in messages if full or self._sent.get(m.topic) != m.payload])

    def _publish(self, messages: list[Message]) -> None:
        for m in messages:
            self._client.publish(m.topic, m.payload, qos=QOS, retain=True)
            self._sent[m.topic] = m.payload
        if messages:
            log.debug("homeassistant published=%d", len(messages))


async def publish_to_homeassistant(
    options: MqttOptions, store: Store, hub: LiveHub, stop: asyncio.Event
) -> None:
    """Run a :class:`HomeAssistantPublisher` until ``stop`` (a task of ``serve``'s TaskGroup)."""
    async with HomeAssistantPublisher(options, store, hub) as publisher:
        await publisher.run(stop)


__all__ = ["HomeAssistantPublisher", "publish_to_homeassistant"]
