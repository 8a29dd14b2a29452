"""The seed index refresh classifies each key once and never holds up closing the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, DeviceUpdate, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.store.redis import store as redis_store

DEV = "shellypmminig3-ecda3bc4ddb0"
MAC = "ECDA3BC4DDB0"
HOUR = 1720717200  # 2024-07-11T17:00:00Z


@pytest.fixture
def plain(redis_url: str) -> Iterator[redis.Redis]:
    host, port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), decode_responses=True)
    yield client
    client.close()


def emqx_hours(client: redis.Redis, mac: str, device: str, hours: range, wh: float) -> None:
    """Hourly-script messages as the EMQX sink stores them, written in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for hour in hours:
        pipe.hset(f"energy:{mac}_{hour}", mapping={
            "hourly_energy_usage": str(wh), "hourly_ret_energy_usage": "0", "id": device,
            "mac": mac, "operational": "true", "timestamp": str(hour),
        })  # fmt: skip
    pipe.execute()


def hmget_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


async def test_our_hashes_are_never_read_to_classify_them(
    redis_url: str, plain: redis.Redis
) -> None:
    n = 300
    async with open_store(redis_url) as store:
        assert isinstance(store, RedisStore)
        await store.commit(
            Batch(
                devices=[DeviceUpdate(DEV, mac=MAC)],
                slots=[SlotEnergy(DEV, "switch:0", HOUR + i * 3600, 1000, 0) for i in range(n)],
            )
        )
        assert len(plain.keys("energy:ECDA3BC4DDB0_*")) == n
        before, reads = hmget_calls(plain), store.seed_key_reads
        assert await store.refresh_seed_index() == 0
        assert store.seed_key_reads == reads
        assert hmget_calls(plain) == before
        # external hours written later: read once, indexed, then known
        emqx_hours(
            plain, "AABBCCDDEEFF", "shellyplug-aabbccddeeff", range(HOUR, HOUR + 7200, 3600), 5
        )
        assert await store.refresh_seed_index() == 2
        assert store.seed_key_reads == reads + 2
        assert await store.refresh_seed_index() == 2
        assert store.seed_key_reads == reads + 2
        rows = await store.energy(
            EnergyQuery(
                by="day", tz="UTC", start=datetime(2024, 7, 11, tzinfo=UTC),
                end=datetime(2024, 7, 12, tzinfo=UTC), channels=("hourly",),
            )
        )  # fmt: skip
        assert [(r.device, r.energy_wh) for r in rows] == [("shellyplug-aabbccddeeff", 10.0)]
    # a new process classifies our hashes once, then knows them
    async with open_store(redis_url) as store:
        assert isinstance(store, RedisStore)
        assert store.seed_key_reads == n  # the indexed external hours came from the index
        assert await store.refresh_seed_index() == 2
        assert store.seed_key_reads == n


async def test_large_keyspace_indexes_in_the_background_and_closes_promptly(
    redis_url: str, plain: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 50_000
    emqx_hours(plain, MAC, DEV, range(HOUR, HOUR + n * 3600, 3600), 1.0)
    started = time.monotonic()
    async with open_store(redis_url) as store:
        opened = time.monotonic() - started
        assert isinstance(store, RedisStore)
        assert opened < 3.0  # not a synchronous classification of 50 000 keys
        deadline = time.monotonic() + 30
        while plain.zcard("energy:kw:seed") == 0:  # the background refresh is under way
            assert time.monotonic() < deadline, "the background refresh never indexed a chunk"
            await asyncio.sleep(0.01)
        assert store.seed_key_reads < n, "finished before the close could interrupt it"
        closing = time.monotonic()
    closed = time.monotonic() - closing
    assert closed < 3.0
    indexed = plain.zcard("energy:kw:seed")
    assert 0 < indexed < n  # interrupted, not finished
    # a small keyspace is indexed before the store is returned
    monkeypatch.setattr(redis_store, "OPEN_INDEX_MAX_KEYS", 10 * n)
    async with open_store(redis_url) as store:
        assert isinstance(store, RedisStore)
        assert plain.zcard("energy:kw:seed") == n
        # the part indexed by the interrupted run is not read again
        assert store.seed_key_reads == n - indexed
