"""The proof of issue 13 for meters that keep history: a Pro 3EM (per phase and in total) and a Pro
EM, publishing to kilowatch's service over a real mosquitto on an accelerated clock, lose MQTT
for 2 simulated hours; kilowatch spreads the gap's energy and marks it estimated; ``kilowatch
backfill`` (the CLI, through the registry: the Pro 3EM on the LAN, the Pro EM over MQTT RPC)
replaces those slots with the meters' own one-minute records. Then no slot is estimated, every
backfilled slot holds exactly what the records say, every slot and hour of every channel matches
the simulator's truth within the resolution of what the devices report, and a second backfill
makes no call and changes nothing.

What "within the resolution" means (docs/backfill.md): a record carries a minute's energy in Wh
with 3 decimals (whole mWh), so a slot summed from 15 records is within 15 x 0.5 = 7.5 mWh of the
physical truth (a Pro 3EM's ``em:0``, 45 records, within 22.5 mWh); slots measured from the
counters (``EMData``/``EM1Data`` report Wh with 2 decimals) are within 10 mWh.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from kilowatch.fleet.history import (
    NOTHING_ESTIMATED,
    BackfillReport,
    backfill_fleet,
    fetch_records,
    history_channels,
    slot_energy_from_records,
)
from kilowatch.fleet.registry import LAN, MQTT, open_rpc
from kilowatch.fleet.rpc import MqttRpc
from kilowatch.fleet.rpc.lan import connect_lan
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import load_settings
from kilowatch.service.server import Running, serve
from kilowatch.store import Registration, Store, open_store
from kilowatch.testing import MosquittoServer
from kilowatch.testing.truth import Truth, read_truth
from shellysim import Fleet

SRC = Path(__file__).resolve().parents[2] / "src"
H = datetime(2026, 3, 12, 10, tzinfo=UTC).timestamp()
"""10:00 UTC of a fixed day (the Pro EM's PV exports): the window compared is [H, END)."""
LEAD_S = 1800
OUTAGE_AT = H + 3600 + 420
"""11:07: the gap begins inside a slot, so its first slot mixes measured and estimated energy."""
OUTAGE_S = 7200
END = H + 5 * 3600
SPEED = 1800.0
"""Half a simulated hour per real second (as the day-long e2e test): the run takes ~12 s."""
SEED = 0x13B
SLOT = 900
RECORD_MWH = 0.5
"""A record's rounding: Wh with 3 decimals."""
COUNTER_MWH = 10.0 + 1e-6
"""Two counter readings of Wh with 2 decimals (EMData/EM1Data status) around a slot (and float
noise of the truth's sums)."""


Key = tuple[str, str, int]
"""(device, channel, slot or hour start)."""
Stored = dict[Key, tuple[int, int, bool]]
"""Key → (import mWh, export mWh, estimated)."""


def _setter(event: asyncio.Event) -> Callable[[Running], None]:
    return lambda _running: event.set()


def _channels(device: str) -> list[str]:
    if device.startswith("shellypro3em"):
        return list(history_channels("emdata:0"))
    return [*history_channels("em1data:0"), *history_channels("em1data:1")]


async def _slots(store: Store, devices: list[str], by: str = "15min") -> Stored:
    """(device, channel, start) → (import mWh, export mWh, estimated) over [H, END)."""
    query = EnergyQuery(
        by=by,  # type: ignore[arg-type]
        tz="UTC",
        start=datetime.fromtimestamp(H, UTC),
        end=datetime.fromtimestamp(END, UTC),
        devices=tuple(devices),
    )
    return {
        (str(r.device), str(r.channel), int(r.start.timestamp())): (
            round(r.energy_wh * 1000),
            round(r.returned_energy_wh * 1000),
            r.estimated,
        )
        for r in await store.energy(query)
    }


async def _caught_up(store: Store, devices: list[str], timeout: float = 15.0) -> None:
    """Wait until every device's newest reading in the store is at or past END."""
    async with asyncio.timeout(timeout):
        while True:
            newest = {d: max((r.ts for r in await store.latest(d)), default=0.0) for d in devices}
            if all(ts >= END for ts in newest.values()):
                return
            await asyncio.sleep(0.1)


def _cli_backfill(store_url: str, broker: str, data_dir: Path) -> dict[str, Any]:
    cli = subprocess.run(
        [
            sys.executable, "-m", "kilowatch", "backfill", "--all",
            "--from", datetime.fromtimestamp(H, UTC).isoformat(),
            "--to", datetime.fromtimestamp(END, UTC).isoformat(),
            "--store", store_url, "--broker", broker, "--data-dir", str(data_dir),
            "--format", "json",
        ],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr + cli.stdout
    result: dict[str, Any] = json.loads(cli.stdout)
    return result


async def test_backfill_from_emdata_and_em1data_matches_the_truth(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'proof.db'}"
    truth_path = tmp_path / "truth.json"
    settings = load_settings(
        {
            "broker": mosquitto.url,
            "store": url,
            "data_dir": str(tmp_path),
            "mqtt_client_id": f"kilowatch-backfill-{uuid.uuid4().hex[:8]}",
            "tz": "UTC",
        },
        env={},
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(serve(settings, stop, on_ready=_setter(ready), web=None))
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            fleet = Fleet(
                devices=2, models=["3em", "em"], broker=mosquitto.url, speed=SPEED,
                start=H - LEAD_S, seed=SEED, engine=None, truth_path=truth_path,
            )  # fmt: skip
            async with fleet, open_store(url) as store:
                three, em = fleet.devices
                ids = [three.id, em.id]
                await store.register(
                    [
                        Registration(three.id, address=fleet.address(three), transport=LAN),
                        Registration(em.id, prefix=em.id, transport=MQTT),
                    ]
                )
                await fleet.wait_connected()
                await fleet.wait_until(OUTAGE_AT)
                for dev in fleet.devices:
                    dev.fault_outage(OUTAGE_S)
                await fleet.wait_until(END + SLOT)
                await _caught_up(store, ids)
                before = await _slots(store, ids)
                estimated = await store.estimated_slots(start=int(H), end=int(END))
                hours_before = await _slots(store, ids, by="hour")

                report = await asyncio.to_thread(_cli_backfill, url, mosquitto.url, tmp_path)
                after = await _slots(store, ids)
                hours_after = await _slots(store, ids, by="hour")
                records = await _records(fleet)
                again = await _second_backfill(store, mosquitto)
                assert await _slots(store, ids) == after
        finally:
            stop.set()
    truth = read_truth(truth_path)

    # the gap left estimated slots on every channel, phases too
    gap = {(d, c, s) for d, c, s in estimated}
    assert {(d, c) for d, c, _ in gap} == {(d, c) for d in ids for c in _channels(d)}
    per_channel = {len([g for g in gap if g[:2] == (d, c)]) for d in ids for c in _channels(d)}
    assert min(per_channel) >= OUTAGE_S // SLOT, per_channel
    assert all(before[g][2] for g in gap)

    # the CLI replaced every one of them (3em on the LAN, the Pro EM over MQTT RPC)
    by_device = {r["device"]: r for r in report["devices"]}
    for device in ids:
        r = by_device[device]
        n = len([g for g in gap if g[0] == device])
        assert (r["estimated"], r["replaced"], r["left"], r["error"]) == (n, n, 0, None), r
    assert by_device[three.id]["components"] == ["emdata:0"]
    assert by_device[em.id]["components"] == ["em1data:0", "em1data:1"]

    # nothing is estimated any more; every backfilled slot is exactly its records' sum
    assert not any(v[2] for v in after.values())
    assert not any(v[2] for v in hours_after.values())
    for key in gap:
        assert after.get(key, (0, 0, False))[:2] == records[key], key
    for _, _, slot in (g for g in gap if g[:2] == (three.id, "em:0")):
        parts = [after.get((three.id, f"em:0/{p}", slot), (0, 0, False)) for p in "abc"]
        assert after[three.id, "em:0", slot][:2] == (
            sum(p[0] for p in parts),
            sum(p[1] for p in parts),
        )

    # every slot of every channel within the resolution of what the device reports
    worst = {"gap phase": 0.0, "gap total": 0.0, "counters": 0.0}
    for device in ids:
        for channel in _channels(device):
            for slot in range(int(H), int(END), SLOT):
                key = (device, channel, slot)
                want = truth[device][channel].get(str(slot), [0.0, 0.0])
                got = after.get(key, (0, 0, False))
                off = max(abs(got[0] - want[0] * 1000), abs(got[1] - want[1] * 1000))
                if key in gap:
                    kind, rows = ("gap total", 45) if channel == "em:0" else ("gap phase", 15)
                    assert off <= rows * RECORD_MWH, (key, got, want)
                else:
                    kind = "counters"
                    assert off <= COUNTER_MWH, (key, got, want)
                worst[kind] = max(worst[kind], off)
    # and every hour (a slot's bound, four times: counter slots telescope, so this is loose)
    for (device, channel, hour), (imported, exported, _) in hours_after.items():
        slots = [
            truth[device][channel].get(str(s), [0.0, 0.0]) for s in range(hour, hour + 3600, SLOT)
        ]
        bound = 4 * (45 * RECORD_MWH if channel == "em:0" else COUNTER_MWH)
        assert abs(imported - sum(s[0] for s in slots) * 1000) <= bound, (device, channel, hour)
        assert abs(exported - sum(s[1] for s in slots) * 1000) <= bound, (device, channel, hour)
    assert len(hours_after) == 5 * 6
    hour_off = _hour_errors(truth, ids, hours_before, hours_after)
    calls = {d: (r["estimated"], r["calls"]) for d, r in by_device.items()}
    print(f"worst slot error, mWh: {worst}; gap hours before -> after: {hour_off}; "
          f"(estimated slots, calls) per device: {calls}")  # fmt: skip
    assert hour_off["after"] < hour_off["before"]

    # a second backfill finds nothing estimated: no call, no write
    assert [(r.device, r.replaced, r.calls, r.note) for r in again] == [
        (d, 0, 0, NOTHING_ESTIMATED) for d in ids
    ]


def _hour_errors(truth: Truth, ids: list[str], before: Stored, after: Stored) -> dict[str, float]:
    """The worst import error of an hour that held estimated slots, before and after (mWh)."""
    out = {"before": 0.0, "after": 0.0}
    for (device, channel, hour), value in before.items():
        if not value[2]:
            continue
        slots = truth[device][channel]
        want = sum(slots.get(str(s), [0.0])[0] for s in range(hour, hour + 3600, SLOT)) * 1000
        out["before"] = max(out["before"], abs(value[0] - want))
        out["after"] = max(out["after"], abs(after[device, channel, hour][0] - want))
    return out


async def _records(fleet: Fleet) -> dict[Key, tuple[int, int]]:
    """(device, channel, slot) → what the device's records say for [H, END), read directly."""
    out: dict[Key, tuple[int, int]] = {}
    async with aiohttp.ClientSession() as session:
        for dev in fleet.devices:
            comps = (
                ["emdata:0"] if dev.id.startswith("shellypro3em") else ["em1data:0", "em1data:1"]
            )
            rpc = await connect_lan(fleet.address(dev), session=session, device_id=dev.id)
            async with rpc:
                for comp in comps:
                    kind, _, cid = comp.partition(":")
                    answers = await fetch_records(rpc, kind, int(cid), start=int(H), end=int(END))
                    for s in slot_energy_from_records(
                        dev.id, comp, answers, start=int(H), end=int(END)
                    ):
                        out[dev.id, s.channel, s.slot] = (s.import_mwh, s.export_mwh)
    return out


async def _second_backfill(store: Store, mosquitto: MosquittoServer) -> list[BackfillReport]:
    async with (
        aiohttp.ClientSession() as session,
        MqttRpc("127.0.0.1", mosquitto.port) as mqtt,
    ):
        return await backfill_fleet(
            store,
            await store.registry(),
            lambda reg: open_rpc(reg, secrets=None, session=session, mqtt=mqtt),
            start=int(H),
            end=int(END),
        )
