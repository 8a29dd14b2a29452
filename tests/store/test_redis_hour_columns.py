"""Redis packed hour columns (``P:kw:{D|C}:hb:<month>``): they hold exactly what the hour hashes
hold, live in the channel's cluster slot, whole-hour queries really read them, and a store written
before they existed is answered right before, during and after the build that packs it."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from redis.crc import key_slot

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.store.redis import columns as redis_columns
from kilowatch.testing.energy import DEVICES, T0, data, reference

WHOLE = (date(2026, 10, 23), date(2026, 11, 2))


@pytest.fixture
def url(redis_store_url: str) -> str:
    return redis_store_url


@pytest.fixture
def store(redis_store: RedisStore) -> RedisStore:
    return redis_store


def queries() -> list[EnergyQuery]:
    """Whole-hour queries (the packed path), by channel: all channels, one, two zones, a part."""
    return [
        EnergyQuery(by="hour", tz="UTC", start=WHOLE[0], end=WHOLE[1]),
        EnergyQuery(by="hour", tz="Europe/Berlin", start=WHOLE[0], end=WHOLE[1]),
        EnergyQuery(
            by="hour",
            tz="UTC",
            start=date(2026, 10, 25),
            end=date(2026, 11, 1),
            channels=("em:1",),
        ),
        EnergyQuery(by="hour", tz="UTC", start=WHOLE[0], end=WHOLE[1], devices=(DEVICES[0],)),
    ]


def split(slots: list[SlotEnergy]) -> list[list[SlotEnergy]]:
    """Several commits, some adding to hours an earlier one already holds."""
    return [slots[0::3], slots[1::3], slots[2::3]]


async def keys(store: RedisStore, kind: str) -> list[str]:
    pattern = f"{store.prefix}:kw:*:{kind}:*"
    return sorted([k.decode() async for k in store.client.scan_iter(match=pattern)])


async def make_old(store: RedisStore) -> None:
    """What an earlier kilowatch left: hour hashes, no packed columns, no format marker."""
    for key in await keys(store, "hb"):
        await store.client.delete(key)
    await store.client.delete(f"{store.prefix}:kw:format")


def decode(raw: bytes | None) -> dict[int, tuple[int, int, int, int]]:
    """Hours with data of a packed string, decoded independently of the store (big-endian i64)."""
    raw = (raw or b"") + bytes(-len(raw or b"") % 32)
    out = {}
    for n in range(len(raw) // 32):
        values = tuple(
            int.from_bytes(raw[32 * n + 8 * i : 32 * n + 8 * i + 8], "big", signed=True)
            for i in range(4)
        )
        if values[2]:
            out[n] = (values[0], values[1], values[2], values[3])
    return out


def from_hash(fields: dict[bytes, bytes]) -> dict[int, tuple[int, int, int, int]]:
    out = {}
    names = {k.decode(): int(v) for k, v in fields.items()}
    for name, count in names.items():
        if name.endswith("c"):
            n = name[:-1]
            out[int(n)] = (names.get(n, 0), names.get(n + "e", 0), count, names.get(n + "x", 0))
    return out


async def assert_columns_match(store: RedisStore) -> int:
    hours = await keys(store, "h")
    assert hours
    for key in hours:
        head, _, month = key.rpartition(":h:")
        packed = f"{head}:hb:{month}"
        assert key_slot(packed.encode()) == key_slot(key.encode())
        got = decode(await store.client.get(packed))
        assert got == from_hash(await store.client.hgetall(key)), key
    return len(hours)


async def test_columns_equal_the_hour_hashes(store: RedisStore) -> None:
    slots = data(41)
    assert any(s.export_mwh for s in slots) and any(s.estimated for s in slots)
    for part in split(slots):
        await store.commit(Batch(slots=part))
    # more than a month of hours per channel: 3 devices, 4 channels, two months each
    assert await assert_columns_match(store) == 8
    assert await store.client.get(f"{store.prefix}:kw:format") == b"2"  # a new store is marked
    for query in queries():
        assert await store.energy(query) == reference(query, slots)


async def test_whole_hour_queries_read_the_columns(store: RedisStore) -> None:
    slots = data(42)
    await store.commit(Batch(slots=slots))
    query = queries()[0]
    expected = reference(query, slots)
    for key in await keys(store, "h"):
        await store.client.delete(key)  # the hashes gone: only the columns can answer
    assert await store.energy(query) == expected


async def test_an_old_store_is_answered_before_and_after_the_build(url: str) -> None:
    slots = data(43)
    async with open_store(url) as first:
        assert isinstance(first, RedisStore)
        for part in split(slots):
            await first.commit(Batch(slots=part))
        await make_old(first)
    store = RedisStore(url)
    store.build_hour_columns_at_open = False
    async with store:
        assert await store.client.get(f"{store.prefix}:kw:format") is None
        for query in queries():  # no columns yet: the hashes answer
            assert await store.energy(query) == reference(query, slots)
        late = [
            SlotEnergy(DEVICES[1], "switch:0", T0 + 900 * i, 5_000, 300, i == 3) for i in range(9)
        ]
        await store.commit(Batch(slots=late))  # partial columns of a month until the build
        assert await store.build_hour_columns() == 8
        assert await store.client.get(f"{store.prefix}:kw:format") == b"2"
        await assert_columns_match(store)
        for key in await keys(store, "h"):
            await store.client.delete(key)  # answered from the columns alone now
        for query in queries():
            assert await store.energy(query) == reference(query, slots + late)


async def test_opening_an_old_store_builds_in_the_background(url: str) -> None:
    slots = data(44)
    async with open_store(url) as first:
        assert isinstance(first, RedisStore)
        await first.commit(Batch(slots=slots))
        await make_old(first)
    async with open_store(url) as store:
        assert isinstance(store, RedisStore)
        async with asyncio.timeout(20):
            while await store.client.get(f"{store.prefix}:kw:format") != b"2":
                await asyncio.sleep(0.02)
        await assert_columns_match(store)
        for query in queries():
            assert await store.energy(query) == reference(query, slots)


async def test_a_commit_racing_the_build_counts_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_columns, "HB_BUILD_CHUNK", 1)  # one hash per round trip: interleave
    slots = data(45)
    async with open_store(url) as first:
        assert isinstance(first, RedisStore)
        await first.commit(Batch(slots=slots))
        await make_old(first)
    store = RedisStore(url)
    store.build_hour_columns_at_open = False
    extra: list[SlotEnergy] = []

    async def ingest() -> None:
        for i in range(40):  # into both months, every channel, yielding to the build each time
            batch = [
                SlotEnergy(device, channel, T0 + 900 * (23 * i + j) + 86400 * 9 * (i % 2),
                           1_000 + i, 7 * i, i % 5 == 0)
                for j, (device, channel) in enumerate(
                    [(DEVICES[0], "switch:0"), (DEVICES[1], "switch:0"), (DEVICES[2], "em:0")]
                )
            ]  # fmt: skip
            extra.extend(batch)
            await store.commit(Batch(slots=batch))
            await asyncio.sleep(0)

    async with store:
        built, _ = await asyncio.gather(store.build_hour_columns(), ingest())
        assert built == 8
        await assert_columns_match(store)
        for query in queries():
            assert await store.energy(query) == reference(query, slots + extra)
