"""How many simulated devices one process sustains at 1 message/s each, with RSS and CPU.

Starts a real mosquitto, then for each fleet size runs a Fleet whose devices publish one
NotifyStatus per second (QoS 1) plus their minute counters, and measures over a steady window:
messages the broker acknowledged per second (PUBACK), the event loop's worst lag, the process's
CPU share and RSS. A size is "sustained" when >= 95 % of the target rate is acknowledged and the
loop never lags more than 1 s. The last line printed is one JSON object with every figure.

    PYTHONPATH=src python bench/simulator.py [--sizes 100,500,1000,1500] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kilowatch.testing import MosquittoServer
from shellysim import Fleet


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def lag_monitor(stats: dict[str, float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.1)
        stats["max_lag_s"] = max(stats["max_lag_s"], loop.time() - t - 0.1)


async def measure(n: int, broker: str, window: float) -> dict[str, Any]:
    t_start = time.monotonic()
    async with Fleet(devices=n, models=["pm1", "switch", "3em", "em"], broker=broker, speed=1.0,
                     report_every_s=1.0, tick_s=0.5, seed=n) as fleet:  # fmt: skip
        await fleet.wait_connected(timeout=120)
        startup = time.monotonic() - t_start
        await asyncio.sleep(2.0)  # settle
        links = list(fleet.mqtt.values())
        acked0 = sum(link.conn.acked for link in links if link.conn)
        pub0 = sum(link.conn.published for link in links if link.conn)
        cpu0, t0 = cpu_s(), time.monotonic()
        stats = {"max_lag_s": 0.0}
        async with asyncio.TaskGroup() as tg:
            mon = tg.create_task(lag_monitor(stats))
            await asyncio.sleep(window)
            mon.cancel()
        elapsed = time.monotonic() - t0
        cpu = cpu_s() - cpu0
        acked = sum(link.conn.acked for link in links if link.conn) - acked0
        published = sum(link.conn.published for link in links if link.conn) - pub0
        rate = acked / elapsed
        return {
            "devices": n,
            "target_msgs_per_s": n,
            "acked_msgs_per_s": round(rate, 1),
            "published_msgs_per_s": round(published / elapsed, 1),
            "cpu_percent": round(100 * cpu / elapsed, 1),
            # CPU per published message: what one core could carry if it had no neighbours
            "cpu_ms_per_msg": round(1000 * cpu / max(published, 1), 3),
            "rss_mb": round(rss_mb(), 1),
            "max_loop_lag_s": round(stats["max_lag_s"], 3),
            "startup_s": round(startup, 2),
            "sustained": rate >= 0.95 * n and stats["max_lag_s"] < 1.0,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000,1500")
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with MosquittoServer() as broker:
        for n in sizes:
            r = await measure(n, broker.url, args.window)
            print(json.dumps(r), flush=True)
            results.append(r)
    ok = [r["devices"] for r in results if r["sustained"]]
    per_msg = max(r["cpu_ms_per_msg"] for r in results)
    summary = {
        "bench": "simulator",
        "message_rate_per_device_per_s": 1,
        "window_s": args.window,
        "max_sustained_devices": max(ok) if ok else 0,
        "cpu_bound_capacity_msgs_per_s_one_core": round(1000 / per_msg) if per_msg else None,
        "runs": results,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: context
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
