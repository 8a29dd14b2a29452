"""Issue 12's device page: how long reading a device's last 24 hours of power per minute takes.

One device with three channels gets 24 hours of minute means (3 x 1 440 ``PowerMinute``), committed
in batches as the pipeline would; then ``Store.power(device, start, end)`` for those 24 hours is
timed (median of ``--runs``) beside a baseline in the same process: the same device's energy over
the same 24 hours by 15-minute slot (``Store.energy``, 3 x 96 rows), which the device page also
reads. SQLite (a temporary file) and Redis (a redis-server on a free loopback port, when one is
installed).

Prints one line per store, then one JSON object (last line) with the medians in ms and the ratio
power / energy.

    PYTHONPATH=src python bench/power.py
    PYTHONPATH=src python bench/power.py --runs 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, PowerMinute, open_store
from kilowatch.testing.servers import RedisServer

DEVICE = "shellypro3em-0000000000b1"
CHANNELS = ("em:0/a", "em:0/b", "em:0/c")
END = 1_796_083_200  # 2026-12-01T00:00:00Z
START = END - 86_400


async def seed(url: str) -> None:
    async with open_store(url) as store:
        for first in range(START, END, 3_600):  # an hour of minutes per commit
            power = [
                PowerMinute(DEVICE, ch, m, 100.0 + (m // 60) % 50 + i, 12)
                for m in range(first, first + 3_600, 60)
                for i, ch in enumerate(CHANNELS)
            ]
            slots = [
                SlotEnergy(DEVICE, ch, s, 25_000 + i, 0)
                for s in range(first, first + 3_600, SLOT_SECONDS)
                for i, ch in enumerate(CHANNELS)
            ]
            await store.commit(Batch(slots=slots, power=power))


async def median_ms(call: Callable[[], Awaitable[Any]], runs: int) -> float:
    await call()  # warm
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def measure(name: str, url: str, runs: int) -> dict[str, Any]:
    await seed(url)
    query = EnergyQuery(
        by="15min", tz="UTC", start=datetime.fromtimestamp(START, UTC),
        end=datetime.fromtimestamp(END, UTC), devices=(DEVICE,),
    )  # fmt: skip
    async with open_store(url) as store:
        minutes = await store.power(DEVICE, start=START, end=END)
        assert len(minutes) == 3 * 1_440, len(minutes)
        power_ms = await median_ms(lambda: store.power(DEVICE, start=START, end=END), runs)
        energy_ms = await median_ms(lambda: store.energy(query), runs)
    ratio = power_ms / energy_ms
    print(f"{name}: 24 h x 3 channels of power {power_ms:.2f} ms; "
          f"the same day's 15-minute energy {energy_ms:.2f} ms; ratio {ratio:.2f}")  # fmt: skip
    return {"power_ms": round(power_ms, 2), "energy_ms": round(energy_ms, 2),
            "ratio": round(ratio, 2)}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed reads per store (median)")
    args = parser.parse_args()
    out: dict[str, Any] = {"minutes": 3 * 1_440, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = await measure("sqlite", f"sqlite:///{Path(tmp) / 'power.db'}", args.runs)
    try:
        redis = RedisServer()
        redis.start()
    except Exception as err:  # no redis-server here: SQLite alone
        print(f"redis: skipped ({err})")
    else:
        try:
            out["redis"] = await measure("redis", redis.url, args.runs)
        finally:
            redis.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
