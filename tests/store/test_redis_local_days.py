"""Redis specifics of the local-day rollups: where they live (one hash per channel, in the
channel's cluster slot), that day queries in the zone really read them, that a commit racing the
rebuild is counted once, and that a process which has not heard of the zone cannot make them
lie."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from redis.crc import key_slot

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.testing.energy import DEVICES, T0, data, reference

WHOLE = (date(2026, 10, 23), date(2026, 11, 2))
BERLIN = "Europe/Berlin"


@pytest.fixture
def url(redis_store_url: str) -> str:
    return redis_store_url


@pytest.fixture
def store(redis_store: RedisStore) -> RedisStore:
    return redis_store


def local_day(slot: int, tz: str) -> int:
    """Local day number from the local date (independent of the store's offset arithmetic)."""
    return (datetime.fromtimestamp(slot, ZoneInfo(tz)).date() - date(1970, 1, 1)).days


def days_query(tz: str = BERLIN, group: str = "channel") -> EnergyQuery:
    return EnergyQuery(by="day", tz=tz, start=WHOLE[0], end=WHOLE[1], group=group)  # type: ignore[arg-type]


async def test_one_hash_per_channel_in_the_channels_slot(store: RedisStore) -> None:
    slots = data(21)
    await store.commit(Batch(slots=slots))
    await store.use_local_zone("Asia/Kathmandu", wait=True)
    client = store.client
    device, channel = DEVICES[2], "em:1"
    key = f"{store.prefix}:kw:{{{device}|{channel}}}:ld"
    assert key_slot(key.encode()) == key_slot(
        f"{store.prefix}:kw:{{{device}|{channel}}}:s:{T0}".encode()
    )
    stored = {k.decode(): v.decode() for k, v in (await client.hgetall(key)).items()}
    assert stored.pop("z") == "Asia/Kathmandu"
    assert int(stored.pop("v")) > 0
    expected: dict[str, int] = {}
    for s in slots:
        if (s.device, s.channel) == (device, channel):
            day = local_day(s.slot, "Asia/Kathmandu")
            for field, value in (
                (f"{day}", s.import_mwh),
                (f"{day}e", s.export_mwh),
                (f"{day}c", 1),
            ):
                expected[field] = expected.get(field, 0) + value
    assert {k: int(v) for k, v in stored.items() if int(v) or not k.endswith("e")} == {
        k: v for k, v in expected.items() if v or not k.endswith("e")
    }
    state = await client.hgetall(f"{store.prefix}:kw:localdays")
    assert state == {b"zone": b"Asia/Kathmandu", b"ready": b"1"}


async def test_day_queries_in_the_zone_read_the_local_days(store: RedisStore) -> None:
    slots = data(22)
    await store.commit(Batch(slots=slots))
    await store.use_local_zone(BERLIN, wait=True)
    query = days_query()
    assert await store.energy(query) == reference(query, slots)
    # change one stored local day behind the store's back: the answer shows it was read
    device, channel = DEVICES[0], "switch:0"
    key = f"{store.prefix}:kw:{{{device}|{channel}}}:ld"
    day = local_day(int(datetime(2026, 10, 25, 12, tzinfo=ZoneInfo(BERLIN)).timestamp()), BERLIN)
    await store.client.hincrby(key, str(day), 1_000_000)
    got = {(r.device, r.start.date()): r.energy_wh for r in await store.energy(query)}
    want = {(r.device, r.start.date()): r.energy_wh for r in reference(query, slots)}
    assert got[(device, date(2026, 10, 25))] == want[(device, date(2026, 10, 25))] + 1000
    # a hash whose zone mark is wrong is not trusted: the general path answers
    await store.client.hset(key, "z", "!")
    assert await store.energy(query) == reference(query, slots)


async def test_a_commit_racing_the_rebuild_counts_once(store: RedisStore) -> None:
    slots = data(23)
    await store.commit(Batch(slots=slots))
    extra: list[SlotEnergy] = []

    async def ingest() -> None:
        # small batches on every channel while the rebuild runs, each yielding to it
        for i in range(40):
            batch = [
                SlotEnergy(device, channel, T0 + 900 * (7 * i + j), 1_000 + i, 0)
                for j, (device, channel) in enumerate(
                    [(DEVICES[0], "switch:0"), (DEVICES[1], "switch:0"), (DEVICES[2], "em:0")]
                )
            ]
            extra.extend(batch)
            await store.commit(Batch(slots=batch))
            await asyncio.sleep(0)

    await asyncio.gather(store.use_local_zone(BERLIN, wait=True), ingest())
    assert await store.local_days_zone() == BERLIN
    for group in ("channel", "device", "total"):
        query = days_query(group=group)
        assert await store.energy(query) == reference(query, slots + extra)


async def test_a_process_that_missed_the_zone_cannot_make_days_lie(url: str) -> None:
    slots = data(24)
    # "other" is opened before any zone is chosen: it never hears of one
    async with open_store(url) as other, open_store(url) as opened:
        store = opened
        assert isinstance(store, RedisStore)
        await store.commit(Batch(slots=slots))
        await store.use_local_zone(BERLIN, wait=True)
        late = [
            SlotEnergy(DEVICES[1], "switch:0", T0 + 86400 + 900 * i, 7_000, 0) for i in range(8)
        ]
        await other.commit(Batch(slots=late))  # writes no local days: marks them untrusted
        for group in ("channel", "total"):
            query = days_query(group=group)
            assert await store.energy(query) == reference(query, slots + late)
        # the query that found them untrusted had them rebuilt in the background
        key = f"{store.prefix}:kw:{{{DEVICES[1]}|switch:0}}:ld"
        async with asyncio.timeout(10):
            while await store.client.hget(key, "z") != BERLIN.encode():
                await asyncio.sleep(0.02)
        assert await store.energy(days_query()) == reference(days_query(), slots + late)
        # another zone: rebuilt from the slots, the other process's energy included
        await store.use_local_zone("Asia/Kathmandu", wait=True)
        stale = [SlotEnergy(DEVICES[0], "switch:0", T0 + 2 * 86400, 3_000, 0)]
        await other.commit(Batch(slots=stale))
        query = days_query("Asia/Kathmandu", "device")
        assert await store.energy(query) == reference(query, slots + late + stale)


async def test_short_and_long_ranges_read_the_same_days(store: RedisStore) -> None:
    """A one-day query reads a channel's hash by name (HMGET: the hash is long for the range),
    a ten-day one walks it whole (HGETALL): both give the reference rows."""
    slots = data(25)
    await store.commit(Batch(slots=slots))
    await store.use_local_zone(BERLIN, wait=True)
    for day in range(10):
        for group in ("channel", "device"):
            query = EnergyQuery(
                by="day",
                tz=BERLIN,
                start=WHOLE[0] + timedelta(days=day),
                end=WHOLE[0] + timedelta(days=day + 1),
                group=group,  # type: ignore[arg-type]
            )
            got = await store.energy(query)
            assert got and got == reference(query, slots), query
    assert await store.energy(days_query()) == reference(days_query(), slots)
