"""Shared fixtures: real servers on free ports (session-scoped per xdist worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kilowatch.testing import MosquittoServer, RedisClusterServer, RedisServer


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """A real mosquitto broker, shared by the tests of one worker; use unique topics/client ids."""
    with MosquittoServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server, shared by the tests of one worker; use ``redis_url`` for a clean db."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of a freshly flushed database on the shared redis-server."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer() as cluster:
        yield cluster
