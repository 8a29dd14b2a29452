"""Helpers that run real servers (mosquitto, redis-server) on free loopback ports, for the test
suite and the benchmarks. Not used by kilowatch at run time."""

from kilowatch.testing.servers import (
    MosquittoServer,
    RedisClusterServer,
    RedisServer,
    free_port,
    wait_for_port,
)

__all__ = ["MosquittoServer", "RedisClusterServer", "RedisServer", "free_port", "wait_for_port"]
