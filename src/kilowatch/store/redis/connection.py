"""The Redis store's connection: one redis-py asyncio client (one server or a cluster), the bounds
on waiting for it, and the translation of redis-py's errors into :class:`StoreError`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from kilowatch.errors import StoreError
from kilowatch.store.redis.keys import SEP, Keys, key_text
from kilowatch.store.url import RedisTarget

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""Socket connect timeout to a Redis node."""
SOCKET_TIMEOUT_S = 30.0
"""Longest a single Redis command (or pipeline) may take before the call fails."""
CLOSE_TIMEOUT_S = 5.0
"""Longest closing waits for a cancelled background task (seed refresh, rebuild) to finish."""
SCAN_COUNT = 1000
"""``COUNT`` of every SCAN, ZSCAN: keys the server looks at per page."""
TRANSACTIONS_IN_FLIGHT = 32
"""Per-slot commit scripts one store runs at once on a cluster (see :mod:`.transaction`). Each
holds a connection of its node's pool until the script answers; redis-py 8 caps that pool at 100
connections per node (``RedisCluster(max_connections=100)``, its default) and raises
``MaxConnectionsError`` instead of waiting for a free one (redis-py 7 allowed 2**31), while one
commit touches a slot per channel (hundreds). A third of the cap leaves room for the queries and
background refresh that run beside commits; more in flight gains little once the nodes' round
trips overlap."""

Command = tuple[str, str, tuple[Any, ...]]
"""``(redis-py method, key, arguments)``."""


class Connection:
    """The client of an open store, and the state every part of the store shares with it."""

    def __init__(
        self, url: str, target: RedisTarget, *, client_options: Mapping[str, Any] | None = None
    ) -> None:
        self.url = url
        self.target = target
        self.client_options = dict(client_options or {})
        """Extra keyword arguments for redis-py's client, over ours (see
        :class:`~.store.RedisStore`)."""
        self.keys = Keys(target.prefix)
        # Any: redis-py's annotations give RedisCluster none of the command methods it has
        self._client: Any = None
        self.closing = False
        """Set when the store starts closing: background work stops at its next stop point."""
        self.transactions = asyncio.Semaphore(TRANSACTIONS_IN_FLIGHT)
        """Bounds the per-slot transactions in flight (:data:`TRANSACTIONS_IN_FLIGHT`)."""
        self.commits = asyncio.Lock()
        """Held by a commit: a writer's commits reach the server one at a time, in order."""

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError("the Redis store is not open; use `async with open_store(url)`")
        return self._client

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    async def open(self) -> None:
        """Connect and check the server answers (bounded by the caller's timeout)."""
        t = self.target
        self.closing = False
        self.transactions = asyncio.Semaphore(TRANSACTIONS_IN_FLIGHT)  # of this event loop
        self.commits = asyncio.Lock()
        common: dict[str, Any] = {
            "username": t.username,
            "password": t.password,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
        }
        if t.tls:
            common["ssl"] = True
            common.update(t.tls_options)
        common.update(self.client_options)
        if t.cluster:
            nodes = [ClusterNode(h, p) for h, p in t.hosts]
            self._client = RedisCluster(startup_nodes=nodes, **common)
            await self._client.initialize()
        else:
            host, port = t.hosts[0]
            self._client = Redis(host=host, port=port, db=t.db, **common)
            await self._client.ping()

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await self._client.aclose()
            self._client = None

    def stop_point(self) -> None:
        """Raise CancelledError when the store is closing or the task was cancelled.

        Python 3.11's ``asyncio.wait_for`` (which redis-py wraps around every socket write) drops a
        cancellation that arrives as the write completes, so background work checks between
        chunks too.
        """
        task = asyncio.current_task()
        if self.closing or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    async def call(self, what: str, coro: Awaitable[Any]) -> Any:
        """Await ``coro``; a redis-py or socket error becomes a :class:`StoreError` about
        ``what``."""
        try:
            return await coro
        except (redis_errors.RedisError, OSError) as err:
            raise store_error(what, err) from err

    async def pipeline_read(self, cmds: Sequence[Command]) -> list[Any]:
        """The answers to ``cmds``, sent in one pipeline (no transaction)."""
        if not cmds:
            return []
        pipe = self.client.pipeline(transaction=False)
        for method, key, args in cmds:
            getattr(pipe, method)(key, *args)
        return list(await pipe.execute())

    async def scan(self, match: str, **kwargs: Any) -> AsyncIterator[str]:
        """The keys matching ``match`` (SCAN, :data:`SCAN_COUNT` per page), as text."""
        async for raw in self.client.scan_iter(match=match, count=SCAN_COUNT, **kwargs):
            yield key_text(raw)

    async def pairs(self, name: str) -> list[tuple[str, str]]:
        """The ``(device, channel)`` members of the set ``P:kw:<name>``, sorted."""
        raw = await self.call("cannot list channels", self.client.smembers(self.keys.kw(name)))
        out = []
        for member in raw:
            device, _, channel = member.decode().partition(SEP)
            out.append((device, channel))
        return sorted(out)

    async def keyspace_size(self) -> int:
        got = await self.client.dbsize()
        # RedisCluster answers with the sum over primaries, or a per-node mapping
        return sum(int(v) for v in got.values()) if isinstance(got, dict) else int(got)


async def stop_task(task: asyncio.Task[None] | None, what: str) -> None:
    """Cancel a background task and wait for it, at most :data:`CLOSE_TIMEOUT_S`."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await asyncio.wait([task])
    except TimeoutError:
        log.warning("%s did not stop within %g s", what, CLOSE_TIMEOUT_S)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def evidence(err: BaseException) -> str:
    """What ``err`` says, or its class name where it says nothing (redis-py's
    ``MaxConnectionsError()``, a bare ``TimeoutError``): a message never ends in an empty
    ``failed: ``."""
    return str(err).strip() or type(err).__name__


def store_error(what: str, err: BaseException) -> StoreError:
    """``err`` (redis-py's, or a socket's) as a :class:`StoreError` saying ``what`` failed, with
    the error's evidence and what to check."""
    hint = ""
    if isinstance(
        err, redis_errors.AuthenticationError | redis_errors.AuthenticationWrongNumberOfArgsError
    ):
        hint = "; check the password in the store URL (redis://:password@host:port/0)"
    elif isinstance(err, redis_errors.MaxConnectionsError):
        hint = (
            "; more commands at once than the client's connection pool to one Redis node holds "
            "(redis-py's max_connections); retry when the load is lower"
        )
    elif isinstance(err, redis_errors.TimeoutError | TimeoutError):
        hint = (
            f"; no answer within {SOCKET_TIMEOUT_S:g} s: is redis-server overloaded, or the "
            "network slow? check host and port of the store URL"
        )
    elif isinstance(err, redis_errors.ConnectionError | OSError):
        hint = "; is redis-server running there? check host and port of the store URL"
    elif isinstance(err, redis_errors.ResponseError) and "MOVED" in str(err):
        hint = "; this server is part of a cluster: list several nodes in the URL"
    out = StoreError(f"{what}: {evidence(err)}{hint}")
    out.__cause__ = err
    return out
