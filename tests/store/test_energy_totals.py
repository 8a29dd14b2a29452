"""The totals of an energy answer count each meter's energy once, whatever its grouping: the
totals of rows by channel or by device follow the rules of the ``total`` grouping
(docs/architecture.md, "Names"), on every backend and every path (fast, general, local days)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import redis

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.table import EnergyTable
from kilowatch.store import Batch, Store, open_store
from kilowatch.store.redis import RedisStore

PRO3EM = "shellypro3em-a0b1c2d3e4f5"
"""A three-phase meter: ``em:0`` holds the sum of its phases ``em:0/a``, ``/b``, ``/c``."""
PROEM = "shellyproem50-a0b1c2d3e4f6"
"""Two independent channels, ``em1:0`` and ``em1:1``: both count."""
PLUG = "shellypmminig3-ecda3bc4ddb0"
"""The hourly metering script (``hourly``) beside the meter channel ``pm1:0`` in one hour."""
GROUPS = ("channel", "device", "total")
BUCKETS = ("15min", "hour", "day", "month")


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def run(device: str, channel: str, start: str, count: int, mwh: int, **kw: Any) -> list[SlotEnergy]:
    """``count`` slots of ``mwh`` from ``start`` (UTC); ``export``, ``estimated_at`` (an index)."""
    t0, export, est = at(start), kw.get("export", 0), kw.get("estimated_at")
    return [SlotEnergy(device, channel, t0 + 900 * i, mwh, export, i == est) for i in range(count)]


HOME = [
    # 2026-06-01 00:00-02:00 UTC: em:0 = a + b + c = 3 Wh a slot (24 Wh), 0.1 Wh out a slot
    *run(PRO3EM, "em:0", "2026-06-01T00:00", 8, 3000, export=100),
    *run(PRO3EM, "em:0/a", "2026-06-01T00:00", 8, 1000, export=100),
    *run(PRO3EM, "em:0/b", "2026-06-01T00:00", 8, 1200, estimated_at=2),  # counted in em:0
    *run(PRO3EM, "em:0/c", "2026-06-01T00:00", 8, 800),
    # 05:00-07:00: 4 Wh + 2 Wh
    *run(PROEM, "em1:0", "2026-06-01T05:00", 8, 500),
    *run(PROEM, "em1:1", "2026-06-01T05:00", 8, 250),
    # the script reported 10:00-13:00 (1 Wh an hour), the meter only 11:00-12:00 (1.2 Wh)
    *run(PLUG, "hourly", "2026-06-01T10:00", 12, 250),
    *run(PLUG, "pm1:0", "2026-06-01T11:00", 4, 300),
]
DAY_WH = {PRO3EM: 24.0, PROEM: 6.0, PLUG: 1.0 + 1.2 + 1.0}
"""Each device's energy in the day, counted once."""


async def answers(store: Store, **kw: Any) -> dict[str, EnergyTable]:
    """The tables of one question in every grouping; checks that all of them have the totals
    of the ``total`` grouping, bucket by bucket and in all."""
    tables = {g: await store.energy_table(EnergyQuery(group=g, **kw)) for g in GROUPS}
    total = tables["total"]
    for group, table in tables.items():
        where = (group, kw)
        assert table.bucket_totals().flat() == total.flat(), where
        assert table.bucket_totals().rows() == total.rows(), where
        assert table.total_import_mwh == sum(total.imports), where
        assert table.total_export_mwh == sum(total.exports), where
        assert table.any_estimated == any(total.estimated), where
    return tables


@pytest.mark.parametrize("by", BUCKETS)
@pytest.mark.parametrize("tz", ["UTC", "Europe/Sofia", "Asia/Kolkata"])
async def test_totals_by_channel_equal_the_total(store: Store, by: str, tz: str) -> None:
    await store.commit(Batch(slots=HOME))
    span = (date(2026, 6, 1), date(2026, 6, 2)) if by != "month" else (
        date(2026, 1, 1), date(2027, 1, 1)
    )  # fmt: skip
    tables = await answers(store, by=by, tz=tz, start=span[0], end=span[1])
    by_channel = tables["channel"]
    assert by_channel.total_import_mwh == 1000 * sum(DAY_WH.values())
    assert by_channel.total_export_mwh == 800  # em:0's, not em:0/a's again
    assert not by_channel.any_estimated  # only a phase was: em:0 counts instead
    # the rows themselves are untouched: every channel, a meter and its phases
    assert sum(by_channel.imports) == 1000 * (2 * 24.0 + 6.0 + 3.0 + 1.2)
    by_device = tables["device"]
    per_device: dict[str | None, int] = {}
    for row in by_device.flat():
        per_device[row[1]] = per_device.get(row[1], 0) + row[3]
    assert per_device == {d: int(wh * 1000) for d, wh in DAY_WH.items()}


@pytest.mark.parametrize("by", ["15min", "hour", "day"])
async def test_each_meter_on_its_own(store: Store, by: str) -> None:
    await store.commit(Batch(slots=HOME))
    day = {"by": by, "tz": "Europe/Sofia", "start": date(2026, 6, 1), "end": date(2026, 6, 2)}
    for device, wh in DAY_WH.items():
        tables = await answers(store, devices=(device,), **day)
        assert tables["channel"].total_import_mwh == wh * 1000, device
    # phases without their whole are the meter's energy: they count
    phases = await answers(store, devices=(PRO3EM,), channels=("em:0/a", "em:0/b"), **day)
    assert phases["channel"].total_import_mwh == 8 * 2200
    assert phases["channel"].any_estimated
    # the script alone counts whole; beside the meter channel only where the meter is silent
    script = await answers(store, channels=("hourly",), **day)
    assert script["channel"].total_import_mwh == 3000


async def test_hourly_per_bucket(store: Store) -> None:
    await store.commit(Batch(slots=HOME))
    hours = await answers(
        store, by="hour", tz="UTC", start=date(2026, 6, 1), end=date(2026, 6, 2), devices=(PLUG,)
    )
    totals = hours["channel"].bucket_totals().rows()
    assert [(r.start.hour, r.energy_wh) for r in totals] == [(10, 1.0), (11, 1.2), (12, 1.0)]
    # rows by channel keep both channels in the hour they share
    shared = [r for r in hours["channel"].rows() if r.start.hour == 11]
    assert [(r.channel, r.energy_wh) for r in shared] == [("hourly", 1.0), ("pm1:0", 1.2)]
    quarters = await answers(
        store,
        by="15min",
        tz="UTC",
        start=datetime(2026, 6, 1, 10, 30, tzinfo=UTC),
        end=datetime(2026, 6, 1, 12, 30, tzinfo=UTC),
        devices=(PLUG,),
    )
    assert [r.energy_wh for r in quarters["channel"].bucket_totals().rows()] == (
        [0.25] * 2 + [0.3] * 4 + [0.25] * 2
    )


async def test_totals_from_local_days_and_cut_ranges(store: Store) -> None:
    await store.commit(Batch(slots=HOME))
    await store.use_local_zone("Europe/Sofia", wait=True)
    assert await store.local_days_zone() == "Europe/Sofia"
    for start, end in [
        (date(2026, 5, 1), date(2026, 7, 1)),  # whole local days: read from the local days
        (datetime(2026, 6, 1, 2, 30), datetime(2026, 6, 1, 16, 15)),  # cut mid-day (local)
    ]:
        for by in ("day", "month"):
            tables = await answers(store, by=by, tz="Europe/Sofia", start=start, end=end)
            assert tables["channel"].total_import_mwh == 1000 * sum(DAY_WH.values()), (by, start)


async def test_no_energy_no_totals(store: Store) -> None:
    tables = await answers(store, by="day", tz="UTC", start=date(2026, 6, 1), end=date(2026, 6, 2))
    assert tables["channel"].total_import_mwh == 0
    assert not tables["channel"].bucket_totals().flat()


async def test_hours_an_emqx_sink_wrote_count_like_the_script(redis_store_url: str) -> None:
    """Redis: the seed-layout hours an EMQX sink wrote are the device's ``hourly`` channel."""
    garage, hour = (
        "plug-garage",
        at("2026-06-01T11:00"),
    )  # an id without a MAC: no seed hash of ours
    hosts = redis_store_url.split("://", 1)[1].split("/", 1)[0].split(",")
    host, port = hosts[0].rsplit(":", 1)
    plain: redis.Redis | redis.RedisCluster = (
        redis.RedisCluster(host=host, port=int(port))
        if len(hosts) > 1
        else redis.Redis(host=host, port=int(port))
    )
    for start in (hour - 3600, hour):  # 1 Wh in each hour, as the sink writes a script message
        plain.hset(f"energy:0000AAAA0000_{start}", mapping={
            "hourly_energy_usage": "1.0", "hourly_ret_energy_usage": "0", "id": garage,
            "mac": "0000AAAA0000", "timestamp": str(start),
        })  # fmt: skip
    plain.close()
    async with open_store(redis_store_url) as store:
        assert isinstance(store, RedisStore)
        await store.commit(Batch(slots=run(garage, "pm1:0", "2026-06-01T11:00", 4, 300)))
        await store.refresh_seed_index()
        day = {"start": date(2026, 6, 1), "end": date(2026, 6, 2)}
        hours = await answers(store, by="hour", tz="UTC", **day)
        assert [(r.start.hour, r.energy_wh) for r in hours["channel"].bucket_totals().rows()] == [
            (10, 1.0),
            (11, 1.2),
        ]
        assert len(hours["channel"]) == 3
        for by, tz in [("day", "UTC"), ("day", "Asia/Kolkata"), ("15min", "UTC")]:
            tables = await answers(store, by=by, tz=tz, **day)
            assert tables["channel"].total_import_mwh == 2200, (by, tz)


async def test_totals_after_retention_dropped_the_slots(store: Store) -> None:
    """Hours and days outlive the slots: the hourly rule reads the hours, so the totals hold."""
    await store.commit(Batch(slots=HOME))
    await store.drop_slots_before(at("2026-06-02T00:00"))
    for by in ("hour", "day"):
        tables = await answers(store, by=by, tz="UTC", start=date(2026, 6, 1), end=date(2026, 6, 2))
        assert tables["channel"].total_import_mwh == 1000 * sum(DAY_WH.values()), by
