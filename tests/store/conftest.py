"""Store fixtures: every conformance test runs against SQLite, Redis and a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from kilowatch.store import Store, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.testing import RedisClusterServer

BACKENDS = ("sqlite", "redis", "cluster")


def flush_cluster(cluster: RedisClusterServer) -> None:
    for node in cluster.nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port)
        client.flushall()
        client.close()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'kilowatch.db'}"
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    url = request.getfixturevalue("cluster_url")
    return str(url)


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServer) -> str:
    """URL of the shared Redis Cluster, every node flushed."""
    flush_cluster(redis_cluster)
    return redis_cluster.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


@pytest.fixture(params=["redis", "cluster"])
def redis_store_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty Redis server, then of an empty Redis Cluster (Redis-only tests)."""
    name = "redis_url" if request.param == "redis" else "cluster_url"
    value: str = request.getfixturevalue(name)
    return value


@pytest.fixture
async def redis_store(redis_store_url: str) -> AsyncIterator[RedisStore]:
    async with open_store(redis_store_url) as s:
        assert isinstance(s, RedisStore)
        yield s
