"""MQTT-only publishers in other vendors' formats, for multi-vendor demos (shelly-api.md §19–§20).

* ``gen1``: a Shelly Plug S (Gen1), ``shellies/<id>/relay/0/power`` (W) and ``.../energy``
  (Watt-minutes, a counter that restarts at boot), ``shellies/<id>/online`` with a ``false`` will.
* ``tasmota``: a Tasmota plug, ``tele/<topic>/SENSOR`` with ``ENERGY.Total`` in kWh and
  ``tele/<topic>/LWT`` ``Online``/``Offline``.

Both book their energy in the fleet's :class:`Truth` under the channel names kilowatch uses
(``relay/0``, ``ENERGY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from shellysim.clock import Clock
from shellysim.errors import MqttError, SimConfigError
from shellysim.meter import MeterChannel, Truth
from shellysim.models import mac_for
from shellysim.mqttwire import MqttConnection, Will
from shellysim.profiles import LoadKind, LoadProfile

log = logging.getLogger(__name__)

GEN1_PERIOD_S = 30
"""Gen1 ``mqtt_update_period`` default."""
TASMOTA_PERIOD_S = 60
"""Tasmota ``TelePeriod`` (300 s by default; 60 s keeps demos lively)."""
VENDORS = ("gen1", "tasmota")


class VendorPublisher:
    """A metered plug that only speaks MQTT in a foreign format."""

    period_s = 60
    online_payload = b"true"
    offline_payload = b"false"

    def __init__(self, device_id: str, meter: MeterChannel, clock: Clock, broker: str) -> None:
        self.id = device_id
        self.meter = meter
        self.clock = clock
        self.broker = broker
        self.conn: MqttConnection | None = None
        self._next = clock.now()

    @property
    def online_topic(self) -> str:
        """Availability topic (will and on-connect)."""
        raise NotImplementedError

    def messages(self) -> list[tuple[str, str]]:
        """Topic/payload pairs of one report."""
        raise NotImplementedError

    async def run(self) -> None:
        """Stay connected to the broker; reconnect with backoff."""
        parts = urlsplit(self.broker)
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        delay = 0.2
        while True:
            try:
                self.conn = await MqttConnection.connect(
                    host,
                    port,
                    client_id=self.id,
                    username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None,
                    will=Will(self.online_topic, self.offline_payload, 0, True),
                    keepalive=60,
                    on_message=lambda *a: None,
                )
            except MqttError as err:
                log.debug("%s: %s", self.id, err)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(5.0, delay * 2)
                continue
            delay = 0.2
            self.conn.publish(self.online_topic, self.online_payload, qos=1, retain=True)
            await self.conn.run()
            self.conn = None

    def tick(self) -> None:
        """Integrate, and publish a report when the period has elapsed."""
        now = self.clock.now()
        self.meter.advance(now)
        if now < self._next:
            return
        self._next = (now // self.period_s + 1) * self.period_s
        if self.conn is not None and self.conn.is_open:
            with contextlib.suppress(ConnectionError):
                for topic, payload in self.messages():
                    self.conn.publish(topic, payload.encode(), qos=1)


class Gen1Plug(VendorPublisher):
    """Shelly Plug S (Gen1): ``shellies/shellyplug-s-<MAC6>/relay/0/...``."""

    period_s = GEN1_PERIOD_S

    @property
    def online_topic(self) -> str:
        """``shellies/<id>/online``."""
        return f"shellies/{self.id}/online"

    def messages(self) -> list[tuple[str, str]]:
        """Relay state, power (W) and energy (Watt-minutes)."""
        base = f"shellies/{self.id}/relay/0"
        wmin = int(self.meter.aenergy.total_wh * 60)
        return [
            (base, "on"),
            (f"{base}/power", f"{self.meter.sample().power_w:.2f}"),
            (f"{base}/energy", str(wmin)),
        ]


class TasmotaPlug(VendorPublisher):
    """A Tasmota plug: ``tele/tasmota_<MAC6>/SENSOR``."""

    period_s = TASMOTA_PERIOD_S
    online_payload = b"Online"
    offline_payload = b"Offline"

    def __init__(self, device_id: str, meter: MeterChannel, clock: Clock, broker: str) -> None:
        super().__init__(device_id, meter, clock, broker)
        self._started = clock.now()

    @property
    def online_topic(self) -> str:
        """``tele/<topic>/LWT``."""
        return f"tele/{self.id}/LWT"

    def messages(self) -> list[tuple[str, str]]:
        """One SENSOR report (energy in kWh, local time without zone)."""
        tz = timedelta(hours=1)
        now = datetime.fromtimestamp(self.clock.now(), UTC) + tz
        start = datetime.fromtimestamp(self._started, UTC) + tz
        s = self.meter.sample()
        energy = {
            "TotalStartTime": start.strftime("%Y-%m-%dT%H:%M:%S"),
            "Total": round(self.meter.aenergy.total_wh / 1000.0, 3),
            "Yesterday": 0.0,
            "Today": round(self.meter.aenergy.total_wh / 1000.0, 3),
            "Power": round(s.power_w),
            "ApparentPower": round(s.apparent_power_va),
            "ReactivePower": 0,
            "Factor": round(abs(s.pf), 2),
            "Voltage": round(s.voltage_v),
            "Current": round(s.current_a, 3),
        }
        body = {"Time": now.strftime("%Y-%m-%dT%H:%M:%S"), "ENERGY": energy}
        return [(f"tele/{self.id}/SENSOR", json.dumps(body))]


def make_publishers(
    vendors: Sequence[str], *, clock: Clock, truth: Truth, seed: int, broker: str | None
) -> list[VendorPublisher]:
    """One publisher per entry of ``vendors`` (``gen1`` / ``tasmota``)."""
    out: list[VendorPublisher] = []
    if vendors and broker is None:
        raise SimConfigError("Gen1 and Tasmota publishers only speak MQTT: pass --broker")
    for i, vendor in enumerate(vendors):
        mac6 = mac_for(seed, 0xF00000 + i)[-6:]
        if vendor == "gen1":
            dev_id, channel, cls = f"shellyplug-s-{mac6}", "relay/0", Gen1Plug
        elif vendor == "tasmota":
            dev_id, channel, cls = f"tasmota_{mac6}", "ENERGY", TasmotaPlug  # type: ignore[assignment]
        else:
            raise SimConfigError(f"unknown vendor {vendor!r}; choose from {', '.join(VENDORS)}")
        profile = LoadProfile(LoadKind.FRIDGE, seed=seed * 7919 + i)
        meter = MeterChannel(
            profile, device_id=dev_id, truth_keys=(channel,), truth=truth, start=clock.now()
        )
        assert broker is not None
        out.append(cls(dev_id, meter, clock, broker))
    return out


__all__ = ["Gen1Plug", "TasmotaPlug", "VendorPublisher", "make_publishers"]
