"""Energy endpoint speed: kilowatch's stores against the seed's naive Redis scan, in one run.

Data is written through the store API (``Store.commit`` of 15-minute ``SlotEnergy`` batches):

- A: one channel, a year of 15-minute slots (35 040);
- B: 500 devices, one channel each, a month of 15-minute slots (1.44 million).

Then ``GET /api/v1/energy`` is timed through the ASGI app in-process (httpx ``ASGITransport``:
routing, parameter checks, the store query, JSON rendering), for the SQLite store (a file) and the
Redis store (a real redis-server from ``kilowatch.testing``):

- A: ``by=hour`` over the year (8 760 rows);
- B: ``by=day&group=device`` over the month (500 × 30 rows).

The same questions are answered the proof of concept's way: SCAN the seed's hourly hashes
(``energy:<MAC>_<hour start>``, which the Redis store keeps writing), HGETALL each (pipelined per
SCAN page, which is kinder than one round trip per key), filter and bucket in Python.

    PYTHONPATH=src python bench/query.py [--devices 500] [--runs 30] [--stores sqlite,redis]

The last line printed is one JSON object with every figure (milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import redis.asyncio as aioredis

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import Role, add_user, users
from kilowatch.intake.live import LiveHub
from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, DeviceUpdate, Store, open_store
from kilowatch.testing import RedisServer
from kilowatch.web import create_app

TZ = "Europe/Berlin"
ZONE = ZoneInfo(TZ)
YEAR = (datetime(2023, 1, 1, tzinfo=ZONE), datetime(2024, 1, 1, tzinfo=ZONE))
"""Dataset A's year; not overlapping B's month, so each question reads only its own data."""
MONTH = (datetime(2025, 6, 1, tzinfo=ZONE), datetime(2025, 7, 1, tzinfo=ZONE))
ONE = "shellypmminig3-a0a0a0000001"
COMMIT_SLOTS = 30_000
"""Slots per committed batch while loading (one ingest step is far smaller; this is bulk load)."""


def fleet(n: int) -> list[str]:
    return [f"shellyplugsg3-b0b0b0{i:06x}" for i in range(n)]


def mac_of(device: str) -> str:
    return device.rsplit("-", 1)[1].upper()


def slot_range(span: tuple[datetime, datetime]) -> range:
    return range(int(span[0].timestamp()), int(span[1].timestamp()), SLOT_SECONDS)


async def load(store: Store, devices: int) -> None:
    """Write datasets A and B through the store API."""
    rng = random.Random(42)
    batch: list[SlotEnergy] = []

    async def flush() -> None:
        if batch:
            await store.commit(Batch(slots=list(batch)))
            batch.clear()

    await store.commit(
        Batch(
            devices=[DeviceUpdate(d, mac=mac_of(d), fw_ver="1.4.4") for d in [ONE, *fleet(devices)]]
        )
    )
    for t in slot_range(YEAR):
        batch.append(SlotEnergy(ONE, "pm1:0", t, rng.randrange(0, 500_000), 0))
        if len(batch) >= COMMIT_SLOTS:
            await flush()
    await flush()
    month = slot_range(MONTH)
    for device in fleet(devices):
        for t in month:
            batch.append(SlotEnergy(device, "switch:0", t, rng.randrange(0, 50_000), 0))
        if len(batch) >= COMMIT_SLOTS:
            await flush()
    await flush()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(
    fn: Callable[[], Awaitable[Any]], runs: int, warmup: int = 2
) -> tuple[list[float], Any]:
    result: Any = None
    for _ in range(warmup):
        result = await fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
        "runs": len(times),
    }


async def endpoint_figures(store: Store, devices: int, runs: int) -> dict[str, Any]:
    app = create_app(store, live=LiveHub(), site_tz=TZ, on_admin_created=lambda _: None)
    async with app.router.lifespan_context(app):
        user = next(iter(await users(store)))
        token = await create_token(store, user, role=Role.VIEWER, name="bench", now=time.time())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bench",
            headers={"authorization": f"Bearer {token}"},
        ) as client:
            # Timed up to the response bytes; parsing them is the client's cost, done afterwards.
            async def one_channel() -> bytes:
                r = await client.get(
                    "/api/v1/energy",
                    params={"by": "hour", "from": "2023-01-01", "to": "2024-01-01", "device": ONE},
                )
                r.raise_for_status()
                return r.content

            async def fleet_month() -> bytes:
                r = await client.get(
                    "/api/v1/energy",
                    params={
                        "by": "day",
                        "from": "2025-06-01",
                        "to": "2025-07-01",
                        "group": "device",
                    },
                )
                r.raise_for_status()
                return r.content

            a_times, a_bytes = await timed(one_channel, runs)
            b_times, b_bytes = await timed(fleet_month, max(5, runs // 2))
    a, b = json.loads(a_bytes), json.loads(b_bytes)
    # The store alone (the column-wise answer the endpoint renders; no HTTP, no JSON), to tell
    # its share from the web layer's.
    qa = EnergyQuery(by="hour", tz=TZ, start=YEAR[0], end=YEAR[1], devices=(ONE,))
    qb = EnergyQuery(by="day", tz=TZ, start=MONTH[0], end=MONTH[1], group="device")
    sa_times, _ = await timed(lambda: store.energy_table(qa), runs)
    sb_times, _ = await timed(lambda: store.energy_table(qb), max(5, runs // 2))
    assert len(a["rows"]) == 8760, len(a["rows"])
    assert len(b["rows"]) == 30 * devices, len(b["rows"])
    return {
        "one_channel_by_hour_year": summary(a_times),
        "devices_by_day_month": summary(b_times),
        "check": {
            "a_wh": round(a["totals"]["energy_wh"], 3),
            "b_wh": round(b["totals"]["energy_wh"], 3),
        },
        "store_only": {
            "one_channel_by_hour_year": summary(sa_times),
            "devices_by_day_month": summary(sb_times),
        },
    }


def calibrate() -> float:
    """Milliseconds of a fixed pure-Python workload (best of 5): how busy the machine was. On an
    idle modern core it takes about 1-2 ms; figures scale with it on a shared machine."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        d = {(str(i), "c", i): i for i in range(8760)}
        sum(v for (_, _, k), v in sorted(d.items(), key=lambda kv: kv[0][2]))
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 3)


async def naive_scan(
    url: str, macs: set[str], span: tuple[datetime, datetime], by: str
) -> dict[Any, float]:
    """The seed's way: SCAN every hourly hash, HGETALL, keep the wanted MACs and hours, bucket."""
    lo, hi = span[0].timestamp(), span[1].timestamp()
    out: dict[Any, float] = defaultdict(float)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        cursor = 0
        while True:
            cursor, keys = await client.scan(cursor, match="energy:*_*", count=1000)
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            for h in await pipe.execute():
                if not h or h.get("mac", "").upper() not in macs:
                    continue
                ts = int(h["timestamp"])
                if not lo <= ts < hi:
                    continue
                if by == "day":
                    bucket: Any = (
                        h["mac"],
                        datetime.fromtimestamp(ts, UTC).astimezone(ZONE).date(),
                    )
                else:  # Berlin's offsets are whole hours: its local hours are the UTC hours
                    bucket = ts
                out[bucket] += float(h["hourly_energy_usage"])
            if cursor == 0:
                break
    finally:
        await client.aclose()
    return out


async def naive_figures(url: str, devices: int, runs: int) -> dict[str, Any]:
    macs_b = {mac_of(d) for d in fleet(devices)}
    a_times, a = await timed(lambda: naive_scan(url, {mac_of(ONE)}, YEAR, "hour"), runs, warmup=0)
    b_times, b = await timed(lambda: naive_scan(url, macs_b, MONTH, "day"), runs, warmup=0)
    assert len(a) == 8760, len(a)
    assert len(b) == 30 * devices, len(b)
    return {
        "one_channel_by_hour_year": summary(a_times),
        "devices_by_day_month": summary(b_times),
        "check": {"a_wh": round(sum(a.values()), 3), "b_wh": round(sum(b.values()), 3)},
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description="Energy endpoint p50/p95 vs the naive Redis scan.")
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--runs", type=int, default=30, help="timed requests per figure")
    parser.add_argument("--naive-runs", type=int, default=2)
    parser.add_argument(
        "--stores", default="sqlite,redis", help="which stores (the naive scan needs redis)"
    )
    args = parser.parse_args()
    unknown = set(args.stores.split(",")) - {"sqlite", "redis"}
    if unknown:
        parser.error(f"--stores: unknown {', '.join(sorted(unknown))}; use sqlite, redis or both")
    figures: dict[str, Any] = {"devices": args.devices, "slots_one_channel": len(slot_range(YEAR)),
                               "slots_devices": args.devices * len(slot_range(MONTH))}  # fmt: skip
    figures["calibration_ms_start"] = calibrate()
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis_server:
        stores = args.stores.split(",")
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}", "redis": redis_server.url}
        for name in stores:
            url = urls[name]
            async with open_store(url) as store:
                t0 = time.perf_counter()
                await load(store, args.devices)
                figures[f"{name}_load_s"] = round(time.perf_counter() - t0, 1)
                log(f"{name}: loaded in {figures[f'{name}_load_s']} s")
                # what `kilowatch serve` does for the site's zone (here after the load, so this
                # also measures a rebuild of every channel's local days from its slots)
                t0 = time.perf_counter()
                await store.use_local_zone(TZ, wait=True)
                figures[f"{name}_local_days_rebuild_s"] = round(time.perf_counter() - t0, 1)
                await add_user(store, "bench", "bench-password", Role.ADMIN, now=time.time())
                figures[name] = await endpoint_figures(store, args.devices, args.runs)
                log(f"{name}: {figures[name]}")
        if "redis" in stores:  # the seed's keys exist only where the Redis store wrote them
            figures["naive_redis_scan"] = await naive_figures(
                redis_server.url, args.devices, args.naive_runs
            )
            log(f"naive: {figures['naive_redis_scan']}")
    for name in stores if "redis" in stores else ():
        for q in ("one_channel_by_hour_year", "devices_by_day_month"):
            naive = figures["naive_redis_scan"][q]["p50_ms"]
            figures[name][q]["speedup_vs_naive_p50"] = round(naive / figures[name][q]["p50_ms"], 1)
    figures["calibration_ms_end"] = calibrate()
    figures["targets"] = {
        "one_channel_by_hour_year_p95_ms": 20,
        "devices_by_day_month_p95_ms": 100,
        "speedup_vs_naive": 50,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
