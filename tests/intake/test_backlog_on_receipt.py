"""Issue 9, hole 2, end to end: a backlog of readings stamped on receipt counts whole.

A real mosquitto keeps kilowatch's persistent session while ``serve()`` is stopped; a 2 kW meter of
each source whose payloads carry no time (Gen1, Tasmota, Zigbee2MQTT, Shelly ``status/<component>``)
publishes at QoS 1 meanwhile; then kilowatch starts (SQLite store) and reads the backlog in one
rush. Every channel must store its counter's whole rise, spread over the outage, not into the
moment it was read (docs/energy-accounting.md, rule 12).

The outage lasts hours, the test seconds: the intake's clock (the ``received_at`` it stamps) is the
real one plus an offset that the test moves forward while kilowatch is down, and by one period
before each report on time, as if that much time passed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import kilowatch.intake.client
from kilowatch.decode import DecoderState, default_registry
from kilowatch.model.messages import Reading
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.service.config import Settings, load_settings
from kilowatch.store import open_store
from kilowatch.testing import MosquittoServer

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))  # the service tests' helpers
from svchelpers import Publisher, forget_session, poll, running_service, unique

POWER_W = 2000.0


@dataclass(frozen=True)
class Meter:
    """One meter of one source: where it publishes and what."""

    source: str
    device: str
    channel: str
    topic: str
    payload: Callable[[float], Any]
    """The message for a counter of so many Wh."""


def meters() -> list[Meter]:
    gen1, tasmota, z2m, plus = (unique(p) for p in ("shellyplug-s-", "tasmota_", "plug-", "sp-"))
    return [
        Meter(
            "gen1", gen1, "relay/0", f"shellies/{gen1}/relay/0/energy",
            lambda wh: f"{round(wh * 60)}".encode(),  # Watt-minutes
        ),
        Meter(
            "tasmota", tasmota, "ENERGY", f"tele/{tasmota}/SENSOR",
            lambda wh: {"Time": "2026-01-01T10:00:00", "ENERGY": {"Total": round(wh / 1000, 3)}},
        ),
        Meter(
            "zigbee2mqtt", z2m, "default", f"zigbee2mqtt/{z2m}",
            lambda wh: {"energy": round(wh / 1000, 2), "power": POWER_W, "linkquality": 120},
        ),
        Meter(
            "shelly status", plus, "switch:0", f"{plus}/status/switch:0",
            lambda wh: {"id": 0, "apower": POWER_W, "aenergy": {"total": round(wh, 3)}},
        ),
    ]  # fmt: skip


class IntakeClock:
    """``time`` as the intake client sees it: the real clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[IntakeClock]:
    fake = IntakeClock()
    monkeypatch.setattr(kilowatch.intake.client, "time", fake)
    yield fake


def settings(mosquitto: MosquittoServer, tmp_path: Path) -> Settings:
    return load_settings(
        {
            "broker": mosquitto.url,
            "store": f"sqlite:///{tmp_path}/kilowatch.db",
            "mqtt_client_id": unique("kw-backlog-"),
            "data_dir": str(tmp_path / "data"),
            "tz": "UTC",
        },
        env={},
    )


async def slots(store_url: str, meter: Meter) -> list[EnergyRow]:
    now = datetime.now(UTC)
    query = EnergyQuery(
        by="15min", tz="UTC", start=now - timedelta(days=1), end=now + timedelta(days=4),
        devices=(meter.device,), channels=(meter.channel,), group="channel",
    )  # fmt: skip
    async with open_store(store_url) as store:
        return await store.energy(query)


def mwh(message: Any, meter: Meter) -> int:
    """The counter, as the ledger reads it from the message the meter sends."""
    payload = message if isinstance(message, bytes) else json.dumps(message).encode()
    decoded = default_registry().decode(
        meter.topic, payload, received_at=time.time(), state=DecoderState()
    )
    [reading] = [m for m in decoded if isinstance(m, Reading)]
    assert reading.stamped_on_receipt and reading.energy_wh is not None
    assert "stamped_on_receipt" not in reading.to_json()  # kilowatch decode prints what it did
    return round(reading.energy_wh * 1000)


@pytest.mark.parametrize(("hours", "period_s"), [(10, 30), (48, 60)])
async def test_a_backlog_stamped_on_receipt_counts_whole(
    mosquitto: MosquittoServer,
    tmp_path: Path,
    clock: IntakeClock,
    hours: int,
    period_s: int,
) -> None:
    config = settings(mosquitto, tmp_path)
    fleet = meters()
    step_wh = POWER_W * period_s / 3600
    start_wh = 10_000.0
    reports = hours * 3600 // period_s  # kept by the broker while kilowatch is down

    def report(k: int) -> list[tuple[str, Any]]:
        return [(m.topic, m.payload(start_wh + k * step_wh)) for m in fleet]

    pub = Publisher(mosquitto.port)
    try:
        # Two reports on time, a period apart, while kilowatch runs.
        async with running_service(config) as running:
            pub.publish_many(report(0))
            await poll(lambda: running.stats.committed >= len(fleet), what="the first report")
            clock.offset += period_s
            pub.publish_many(report(1))
            await poll(lambda: running.stats.committed >= 2 * len(fleet), what="the second")
        # Down for hours: the broker keeps every report for the session.
        pub.publish_many([m for k in range(2, 2 + reports) for m in report(k)])
        clock.offset += hours * 3600
        async with running_service(config) as running:
            await poll(
                lambda: running.stats.committed >= reports * len(fleet),
                timeout=60,
                what="the backlog",
            )
            clock.offset += period_s  # the next report, on time
            pub.publish_many(report(2 + reports))
            await poll(
                lambda: running.stats.committed >= (reports + 1) * len(fleet), what="the last"
            )
    finally:
        pub.close()
        forget_session(mosquitto.port, config.mqtt_client_id)

    last = 2 + reports
    slot_mwh = POWER_W * 900 / 3.6
    async with open_store(config.store) as store:
        states = await store.load_ledger_states()
    for m in fleet:
        assert "suspect" not in states[(m.device, m.channel)]["import"], m.source  # all decided
    for m in fleet:
        rows = await slots(config.store, m)
        rise = mwh(m.payload(start_wh + last * step_wh), m) - mwh(m.payload(start_wh), m)
        stored = round(sum(r.energy_wh for r in rows) * 1000)
        assert stored == rise, m.source  # every mWh the counter rose, once
        # Spread over the outage: no slot holds much more than 2 kW can use in 15 minutes (the
        # counters' rounding, 10 Wh for Zigbee2MQTT, and one report of the backlog's own spread).
        assert max(r.energy_wh for r in rows) * 1000 <= slot_mwh + step_wh * 1000 + 20_000
        outage = [r for r in rows if r.estimated]
        assert len(outage) >= hours * 4 - 1, m.source
        assert sum(r.energy_wh for r in outage) >= (hours - 1) * POWER_W / 1000 * 1000
