"""Issue 13's polling proof: simulated devices without MQTT, polled over HTTP every 10 simulated s.

N unprovisioned simulated Shellies (MQTT off; PM Mini Gen3, Pro 3EM, Plus 1PM, Pro EM-50 in
turn) stand on their own loopback addresses, port 80 (127.0.80.1 ... by default; needs root).
``kilowatch serve`` runs in this process (SQLite, embedded broker) with every device registered
and ``poll = ["*"]``, ``poll_interval_s`` = 10 simulated seconds (10 / speed real seconds). Once
every device has answered, the window starts at the next 15-minute boundary and lasts ``--hours``
simulated hours (24: a device-day). Then the store's energy over the window, per device and
channel, is compared with the simulator's truth.

Prints one line per device outside the tolerance, then one JSON object (last line): devices,
hours, speed, polls, failures, polls per real second, worst difference in Wh, channels outside
``--tolerance``, slots marked estimated. Exit 1 when any channel is outside it.

    PYTHONPATH=src python bench/polling.py                       # 200 devices, 24 h
    PYTHONPATH=src python bench/polling.py --devices 200 --hours 2 --speed 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import load_settings
from kilowatch.service.server import Running, serve
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration
from kilowatch.testing.truth import read_truth
from shellysim import Fleet

START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()
"""Simulated start (a Monday: the load profiles have their weekday shape)."""
SLOT_S = 900
POLL_SIM_S = 10.0
MODELS = ("pm1", "3em", "switch", "em")


async def proof(
    *,
    devices: int,
    hours: float,
    speed: float,
    hosts: str,
    workdir: Path,
    tolerance: float = 1.0,
    models: tuple[str, ...] = MODELS,
    tick_sim_s: float = 1.0,
) -> dict[str, Any]:
    """Run the proof; its figures (see the module docstring)."""
    truth_path = workdir / "truth.json"
    store_url = f"sqlite:///{workdir / 'kilowatch.db'}"
    settings = load_settings(
        {
            "broker": "embedded", "store": store_url, "mqtt_port": 0, "tz": "UTC",
            "mqtt_client_id": f"kw-poll-{uuid.uuid4().hex[:12]}",
            "data_dir": str(workdir / "data"), "log_level": "WARNING",
            "poll": "*", "poll_interval_s": POLL_SIM_S / speed,
            "poll_concurrency": 64,
        },
        env={},
    )  # fmt: skip
    async with Fleet(
        devices=devices,
        models=list(models),
        http_hosts=hosts,
        unprovisioned=True,
        speed=speed,
        start=START,
        truth_path=truth_path,
        engine=None,
        # The simulator integrates its counters at each tick, and Shelly.GetStatus reports them as
        # of the last tick while sys.unixtime says now: a counter stale by a tick (0.5 real s =
        # 20 simulated s at 40x) would be stamped up to that much late. A tick of one simulated
        # second keeps that within the second sys.unixtime is rounded to anyway.
        tick_s=tick_sim_s / speed,
    ) as fleet:
        async with open_store(store_url) as store:
            await store.register(
                [
                    Registration(
                        device=d.id,
                        address=fleet.address(d),
                        transport="lan",
                        gen=2,
                        model=d.spec.model,
                    )
                    for d in fleet.devices
                ]
            )
        stop = asyncio.Event()
        ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tg:
            served = tg.create_task(serve(settings, stop, on_ready=ready.set_result))
            running = await ready
            ids = {d.id for d in fleet.devices}
            while {r.device for r in await running.store.latest()} < ids:
                await asyncio.sleep(0.2)
            window_start = math.ceil(fleet.clock.now() / SLOT_S) * SLOT_S
            window_end = window_start + hours * 3600
            wall_start = time.monotonic()
            poll = running.poll
            assert poll is not None
            polls_start = poll.polls
            # a poll after the window's end, and its commit, before stopping
            await fleet.wait_until(window_end + 4 * POLL_SIM_S)
            await asyncio.sleep(2.0)
            wall = time.monotonic() - wall_start
            polls = poll.polls - polls_start
            failures = poll.failures
            stop.set()
            await served
    truth = read_truth(truth_path)
    expected: dict[tuple[str, str], list[float]] = {}
    for device, channels in truth.items():
        for channel, slots in channels.items():
            row = expected.setdefault((device, channel), [0.0, 0.0])
            for slot, (imported, exported) in slots.items():
                if window_start <= int(slot) < window_end:
                    row[0] += imported
                    row[1] += exported
    stored: dict[tuple[str, str], list[float]] = {}
    estimated = 0
    async with open_store(store_url) as store:
        query = EnergyQuery(
            by="hour",
            tz="UTC",
            start=datetime.fromtimestamp(window_start, UTC),
            end=datetime.fromtimestamp(window_end, UTC),
        )
        for r in await store.energy(query):
            row = stored.setdefault((str(r.device), str(r.channel)), [0.0, 0.0])
            row[0] += r.energy_wh
            row[1] += r.returned_energy_wh
            estimated += r.estimated
    worst = 0.0
    outside: list[str] = []
    for key in sorted(set(expected) | set(stored)):
        t = expected.get(key, [0.0, 0.0])
        s = stored.get(key, [0.0, 0.0])
        diff = max(abs(s[0] - t[0]), abs(s[1] - t[1]))
        worst = max(worst, diff)
        if diff > tolerance:
            outside.append(f"{key[0]} {key[1]}: stored {s} truth {[round(x, 3) for x in t]}")
    return {
        "devices": devices,
        "channels": len(expected),
        "hours": hours,
        "speed": speed,
        "poll_interval_sim_s": POLL_SIM_S,
        "polls": polls,
        "failures": failures,
        "polls_per_s": round(polls / wall, 1),
        "tick_sim_s": tick_sim_s,
        "wall_s": round(wall, 1),
        "truth_wh": round(sum(t[0] + t[1] for t in expected.values()), 1),
        "worst_diff_wh": round(worst, 4),
        "tolerance_wh": tolerance,
        "outside": outside,
        "estimated_hours": estimated,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--speed", type=float, default=40.0, help="simulated s per real s")
    parser.add_argument("--hosts", default="127.0.81.0/24")
    parser.add_argument("--tolerance", type=float, default=1.0, help="Wh per device channel")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="kw-poll-") as tmp:
        figures = asyncio.run(
            proof(
                devices=args.devices,
                hours=args.hours,
                speed=args.speed,
                hosts=args.hosts,
                workdir=Path(tmp),
                tolerance=args.tolerance,
            )
        )
    for line in figures["outside"]:
        print(line)
    print(json.dumps(figures))
    return 1 if figures["outside"] else 0


if __name__ == "__main__":
    sys.exit(main())
