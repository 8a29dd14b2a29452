"""The proof of issue 13's script half ("Never lose an hour"), end to end.

A simulated PM Mini Gen3 runs kilowatch's real metering script (``hourly_energy.js``) in V8 on an
accelerated clock and publishes its status and the script's hours through a real mosquitto to
``kilowatch serve`` (SQLite). Over 24 simulated hours it has three MQTT outages of 2 hours, a
reboot during the second one, and every message published twice. The ledger spreads each
outage's energy evenly and marks those slots estimated (rule 7); the script keeps the hours it
could not publish in KVS and sends them when MQTT is back; serve's repair service replaces the
estimated slots with them. Then every UTC hour of the device in the store equals the simulator's
truth within 1 mWh and none is marked estimated.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kilowatch.fleet.scripts import read_script
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import load_settings
from kilowatch.service.server import Running, ingest_metrics, serve
from kilowatch.store import Store, open_store
from kilowatch.testing import MosquittoServer
from shellysim import Fleet
from shellysim.scripting import ScriptEngine

HOUR = 3600
D0 = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp())
"""The simulated day (fixed: the loads are seeded, the run is reproducible)."""
HOURS = 24
SPEED = 3600.0
"""One simulated hour per real second; the device's reconnect poll (0.5 s real) is half an
hour, so each outage keeps MQTT down for 2 to 2.5 hours."""
OUTAGES_H = (3.3, 10.3, 17.6)
REBOOT_H = 11.3
"""During the second outage; a boot takes 0.3 s real (18 simulated minutes): same hour."""
TOLERANCE_MWH = 1


async def _hours(store: Store, device: str) -> dict[int, tuple[int, int, bool]]:
    rows = await store.energy(
        EnergyQuery(
            by="hour",
            tz="UTC",
            start=datetime.fromtimestamp(D0, UTC),
            end=datetime.fromtimestamp(D0 + HOURS * HOUR, UTC),
            devices=(device,),
            group="device",
        )
    )
    return {
        int(r.start.timestamp()): (
            round(r.energy_wh * 1000),
            round(r.returned_energy_wh * 1000),
            r.estimated,
        )
        for r in rows
    }


def _wrong(
    stored: dict[int, tuple[int, int, bool]], truth: dict[int, tuple[int, int]]
) -> list[str]:
    bad = []
    for hour, (imp, exp) in truth.items():
        got = stored.get(hour)
        label = datetime.fromtimestamp(hour, UTC).strftime("%H:%M")
        if got is None:
            if imp > TOLERANCE_MWH or exp > TOLERANCE_MWH:  # an hour without energy has no row
                bad.append(f"{label}: missing (truth {imp} mWh)")
        elif abs(got[0] - imp) > TOLERANCE_MWH or abs(got[1] - exp) > TOLERANCE_MWH or got[2]:
            bad.append(f"{label}: stored {got}, truth {(imp, exp)}")
    return bad


async def test_every_hour_is_measured_after_outages_a_reboot_and_duplicates(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    settings = load_settings(
        {
            "broker": mosquitto.url,
            "store": f"sqlite:///{tmp_path / 'proof.db'}",
            "data_dir": str(tmp_path),
            "mqtt_client_id": f"kilowatch-hourly-proof-{uuid.uuid4().hex[:8]}",
            "tz": "UTC",
            "repair_interval_s": 0.5,
            "repair_window_h": (time.time() - D0) / HOUR + 48,  # the simulated day is in the past
        },
        env={},
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    running: list[Running] = []

    def on_ready(r: Running) -> None:
        running.append(r)
        ready.set()

    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        service = tg.create_task(serve(settings, stop, on_ready=on_ready, web=None))
        async with asyncio.timeout(20):
            await ready.wait()
        fleet = Fleet(
            devices=1,
            models=("pm1",),
            broker=mosquitto.url,
            http=False,
            engine=ScriptEngine(),
            script=read_script(),
            speed=SPEED,
            start=D0 - HOUR,  # the script's first hour is partial: it starts in the hour before
            seed=13,
            tick_s=0.05,
        )
        dev = fleet.devices[0]
        dev.duplicate_publishes = True
        try:
            async with fleet:
                await fleet.wait_connected()
                for at in sorted((*OUTAGES_H, REBOOT_H)):
                    await fleet.wait_until(D0 + at * HOUR)
                    if at == REBOOT_H:
                        dev.spawn(dev.reboot())
                    else:
                        dev.fault_outage(2 * HOUR)
                await fleet.wait_until(D0 + (HOURS + 1) * HOUR + 600)
            simulated = time.monotonic() - started
            truth = {
                h: tuple(round(x * 1000) for x in fleet.truth.total(dev.id, "pm1:0", h, h + HOUR))
                for h in range(D0, D0 + HOURS * HOUR, HOUR)
            }
            async with open_store(settings.store_url) as store:
                deadline = time.monotonic() + 15  # the last hours' ingest and repair
                while True:
                    stored = await _hours(store, dev.id)
                    bad = _wrong(stored, truth)  # type: ignore[arg-type]
                    left = await store.estimated_slots(
                        start=D0, end=D0 + HOURS * HOUR, device=dev.id
                    )
                    if left:
                        bad.append(f"{len(left)} slots still estimated: {left[:8]}")
                    if not bad or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert not bad, "\n".join(bad)
        finally:
            stop.set()
        await service
    worst = max(abs(stored.get(h, (0, 0, False))[0] - imp) for h, (imp, _) in truth.items())
    stats = running[0].repair
    assert stats is not None and stats.slots_from_hours >= 3 * 8, stats
    metrics = ingest_metrics(running[0].stats, running[0].poll, stats)  # what /metrics shows
    assert metrics["repaired_slots_from_hours"] == stats.slots_from_hours
    print(
        f"\n24 h simulated in {simulated:.1f} s; repaired {stats.slots_from_hours} slots "
        f"in {stats.passes} passes, {stats.inconsistent_hours} inconsistent hour(s); "
        f"largest difference from the truth {worst} mWh"
    )
