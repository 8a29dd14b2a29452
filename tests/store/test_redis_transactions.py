"""A commit on a Redis Cluster is one MULTI/EXEC per hash slot, run a bounded number at a time:
a batch touching far more slots than redis-py's connection pool holds per node (100 in redis-py 8,
which raises instead of waiting) is stored whole, to the milliwatt-hour."""

from __future__ import annotations

from datetime import date

import redis
from redis.crc import key_slot

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.store.redis.connection import TRANSACTIONS_IN_FLIGHT
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
