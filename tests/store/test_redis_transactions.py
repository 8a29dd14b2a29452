"""A commit on Redis is one fenced script call (the whole batch on a server, one per hash slot on
a cluster, a bounded number at a time): a batch touching far more slots than redis-py's
connection pool holds per node (100 in redis-py 8, which raises instead of waiting) is stored
whole, to the milliwatt-hour; a command that fails inside the script does not stop the others
and the retry is a no-op; a server that lost its scripts gets the script again; fences live in
the slot of the keys they guard."""

from __future__ import annotations

from datetime import date

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

from kilowatch.errors import StoreError
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.store.redis.connection import TRANSACTIONS_IN_FLIGHT
from kilowatch.store.redis.transaction import FENCE_TTL_S
from kilowatch.testing import RedisClusterServer
from kilowatch.testing.energy import T0, reference

POOL_CAP = 100
"""redis-py 8's default ``max_connections`` per cluster node."""
DEVICES = 600


def slots_per_node(cluster: RedisClusterServer) -> list[int]:
    """How many hash slots hold keys, on each node (each one a MULTI/EXEC of the commit)."""
    out = []
    for node in cluster.nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port)
        out.append(len({key_slot(k) for k in client.scan_iter(count=1000)}))
        client.close()
    return out


async def test_a_commit_over_many_more_slots_than_the_pool_holds(
    cluster_url: str, redis_cluster: RedisClusterServer
) -> None:
    assert TRANSACTIONS_IN_FLIGHT < POOL_CAP
    # Shelly ids (a MAC each: seed hashes too), a channel each, two slots in one hour, some export
    slots = [
        SlotEnergy(f"shellyplugsg3-{i:012X}", "switch:0", T0 + 900 * k, 1_000 + 7 * i + k, i % 3)
        for i in range(DEVICES)
        for k in range(2)
    ]
    async with open_store(cluster_url) as store:
        assert isinstance(store, RedisStore)
        await store.commit(Batch(slots=slots))
        assert min(slots_per_node(redis_cluster)) > 2 * POOL_CAP
        for group in ("channel", "total"):
            query = EnergyQuery(
                by="day", tz="UTC", start=date(2026, 10, 23), end=date(2026, 10, 24), group=group
            )
            assert await store.energy(query) == reference(query, slots)
        hour = EnergyQuery(by="hour", tz="UTC", start=date(2026, 10, 23), end=date(2026, 10, 24))
        assert await store.energy(hour) == reference(hour, slots)


def day_energy(slots: list[SlotEnergy]) -> tuple[EnergyQuery, list[object]]:
    query = EnergyQuery(by="day", tz="UTC", start=date(2026, 10, 23), end=date(2026, 10, 24))
    return query, list(reference(query, slots))


async def test_a_failing_command_does_not_stop_the_others_and_the_retry_is_a_no_op(
    redis_store: RedisStore,
) -> None:
    """A key of the wrong type (written by someone else) fails its command; the script cannot
    be rolled back, so it applies every other op, sets the fence and says which failed. The
    pipeline's retry of the same batch then changes nothing: the energy is there once."""
    client = redis_store.client
    await client.set(redis_store.seed_key("B0B0B0000001", T0), "not a hash")
    slots = [
        SlotEnergy(f"shellyplugsg3-b0b0b000000{i}", "switch:0", T0, 1_000 * i, 0) for i in (1, 2)
    ]
    b = Batch(slots=slots)
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await redis_store.commit(b)
    await redis_store.commit(b)
    query, expected = day_energy(slots)
    assert await redis_store.energy(query) == expected
    assert await client.hget(redis_store.seed_key("B0B0B0000002", T0), "kwi") == b"2000"


async def test_a_server_that_lost_the_script_gets_it_again(redis_store: RedisStore) -> None:
    slots = [SlotEnergy("shellyplugsg3-b0b0b0000001", "switch:0", T0, 1_000, 0)]
    await redis_store.commit(Batch(slots=slots))
    await redis_store.client.script_flush()
    more = [SlotEnergy("shellyplugsg3-b0b0b0000001", "switch:0", T0 + 900, 500, 0)]
    await redis_store.commit(Batch(slots=more))
    query, expected = day_energy(slots + more)
    assert await redis_store.energy(query) == expected


async def test_fences_sit_in_the_slot_they_guard_and_expire(
    redis_store_url: str,
) -> None:
    async with open_store(redis_store_url) as store:
        assert isinstance(store, RedisStore)
        b = Batch(
            slots=[SlotEnergy(f"shellyplugsg3-{i:012X}", "switch:0", T0, 1, 0) for i in range(30)]
        )
        await store.commit(b)
        await store.commit(b)  # again: no new fence, no new number
        fences = [k async for k in store.client.scan_iter(match="energy:kw:fence:*", count=1000)]
        written = [k async for k in store.client.scan_iter(match="energy:*", count=1000)]
        written.remove(b"energy:kw:format")  # set at open, not by a commit
        if isinstance(store.client, redis.asyncio.RedisCluster):
            assert {key_slot(f) for f in fences} == {key_slot(k) for k in written}
        else:
            assert len(fences) == 1
        for fence in fences:
            assert await store.client.get(fence) == b"1"
            assert 0 < await store.client.ttl(fence) <= FENCE_TTL_S
