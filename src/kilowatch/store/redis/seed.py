"""The seed index: hourly hashes someone else (an EMQX sink) wrote in the seed's layout
(``P:<MAC>_<hour start>``), indexed in ``P:kw:seed`` (member ``<device id>\\t<key>``, score = hour
start) and read by queries as channel ``hourly``.

The index is refreshed by SCAN at open (in the background when the keyspace is large) and every
:data:`SEED_REFRESH_S`, never on the query path; each key is classified once per process (see
:meth:`SeedIndex.refresh`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from redis import exceptions as redis_errors

from kilowatch.model.slots import SLOT_SECONDS
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.grouping import HOURLY
from kilowatch.query.periods import Plan
from kilowatch.store.redis.connection import SCAN_COUNT, Command, Connection, store_error
from kilowatch.store.redis.keys import MARKER, SEP

SEED_REFRESH_S = 60.0
"""How often externally written seed hashes are re-indexed (SCAN, off the query path)."""
SEED_REFRESH_SPACING = 20.0
"""The pause after a seed refresh is at least this many times as long as the refresh took."""
SEED_CHUNK = 1000
"""Keys classified (HMGET ``id``, marker) per pipelined round trip: each await stays short, so
closing the store cancels a refresh promptly (redis-py does not shield a pipeline's execution)."""

SeedRead = tuple[Command, tuple[str, int]]
"""The read of one indexed hour (HMGET of its energy and marker), with its device and hour."""
RawRow = tuple[str, str, int, int, int, bool]
"""``(device, channel, start, import mWh, export mWh, estimated)`` of one slot or hour."""


class SeedIndex:
    """The index of externally written seed hours, and what this process knows of the keys."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._known: set[str] = set()
        """Seed-layout keys already classified (ours, indexed external, or not a seed hash)."""
        self._next_known: set[str] | None = None
        """The next generation of ``_known`` while a refresh's SCAN runs (keys it saw)."""
        self._ids_known: set[str] = set()
        self._lock = asyncio.Lock()
        self.key_reads = 0
        """How many keys refreshes have HMGET to classify them (for tests and benchmarks)."""

    async def refresh(self) -> int:
        """Index hourly hashes an external sink wrote in the seed layout (``P:<MAC>_<hour>``).

        SCANs the keyspace; runs at open and every :data:`SEED_REFRESH_S`, never on the query
        path. Each key is classified once per process: keys kilowatch commits are known at commit
        time, keys already in the index are loaded from it, and only keys never seen before are
        read (HMGET ``id`` and the marker, :data:`SEED_CHUNK` per pipelined round trip); only new
        members are added. Returns how many external hourly hashes are indexed after the refresh.
        """
        async with self._lock:
            try:
                return await self._refresh()
            except (redis_errors.RedisError, OSError) as err:
                raise store_error("cannot index the seed's hourly hashes", err) from err
            finally:
                self._next_known = None

    async def _refresh(self) -> int:
        conn = self._conn
        if not self._known:
            await self._load_indexed()
        # a new generation: keys that no longer exist are forgotten when the SCAN completes
        seen: set[str] = set()
        self._next_known = seen
        todo: list[str] = []
        async for key in conn.scan(f"{conn.keys.prefix}:*_*", _type="HASH"):
            conn.stop_point()
            if key in self._known:
                seen.add(key)
            elif conn.keys.seed_re.match(key):
                todo.append(key)
                if len(todo) >= SEED_CHUNK:
                    await self._classify(todo)
                    todo = []
        await self._classify(todo)
        self._known = seen
        return int(await conn.client.zcard(conn.keys.kw("seed")))

    async def _load_indexed(self) -> None:
        """Remember the keys a previous run already indexed (ZSCAN: short awaits)."""
        conn = self._conn
        async for member, _ in conn.client.zscan_iter(conn.keys.kw("seed"), count=SCAN_COUNT):
            conn.stop_point()
            device, _, key = member.decode().partition(SEP)
            self._known.add(key)
            self._ids_known.add(device)

    async def _classify(self, keys: list[str]) -> None:
        if not keys:
            return
        conn = self._conn
        self.key_reads += len(keys)
        found = await conn.pipeline_read([("hmget", k, ("id", MARKER)) for k in keys])
        members: dict[str, float] = {}
        for key, (dev, marker) in zip(keys, found, strict=True):
            if marker is None and dev is not None:
                m = conn.keys.seed_re.match(key)
                assert m is not None
                members[dev.decode() + SEP + key] = int(m.group(2))
            # else ours (its energy is in the channel keys) or not a seed hash: known either way
        if members:
            await conn.client.zadd(conn.keys.kw("seed"), members)
            ids = {m.split(SEP, 1)[0] for m in members} - self._ids_known
            if ids:
                await conn.client.sadd(conn.keys.kw("seed-ids"), *sorted(ids))
                self._ids_known |= ids
        self._known.update(keys)
        if self._next_known is not None:
            self._next_known.update(keys)
        conn.stop_point()

    def mark_known(self, keys: Iterable[str]) -> None:
        """Seed hashes kilowatch just committed (with its marker): never read to classify."""
        self._known.update(keys)
        if self._next_known is not None:
            self._next_known.update(keys)

    async def reads(self, query: EnergyQuery, p: Plan) -> list[SeedRead]:
        """The reads of the indexed hours ``query`` may need (none when it excludes ``hourly``)."""
        if query.channels and HOURLY not in query.channels:
            return []
        conn = self._conn
        members = await conn.call(
            "cannot read the seed index",
            conn.client.zrangebyscore(
                conn.keys.kw("seed"), p.start - 3599, p.end - 1, withscores=True
            ),
        )
        out = []
        for member, score in members:
            device, _, key = member.decode().partition(SEP)
            if query.devices and device not in query.devices:
                continue
            cmd = ("hmget", key, ("hourly_energy_usage", "hourly_ret_energy_usage", MARKER))
            out.append((cmd, (device, int(score))))
        return out

    async def ids(self) -> set[str]:
        """Device ids seen in externally written hours (``P:kw:seed-ids``)."""
        conn = self._conn
        got = await conn.call(
            "cannot read the seed index", conn.client.smembers(conn.keys.kw("seed-ids"))
        )
        return {i.decode() for i in got}


def seed_rows(
    raw: list[RawRow], seed_cmds: Sequence[SeedRead], got: Sequence[Any], step: int, p: Plan
) -> list[RawRow]:
    """Externally written hours as channel ``hourly``; hours kilowatch itself holds for that
    device's ``hourly`` channel win (the same script message, seen by both kilowatch and an EMQX
    sink)."""
    ours = {(d, ts // 3600 * 3600) for d, c, ts, *_ in raw if c == HOURLY}
    out: list[RawRow] = []
    for (_, (device, hour)), (imp, exp, marker) in zip(seed_cmds, got, strict=True):
        if marker is not None or imp is None or (device, hour) in ours:
            continue
        imp_mwh, exp_mwh = _mwh(imp), _mwh(exp)
        parts = 1 if step == 3600 else 3600 // SLOT_SECONDS
        # an hour read at slot resolution is spread evenly (remainder on the first slot)
        for i in range(parts):
            ts = hour + i * (3600 // parts)
            if p.start <= ts < p.end:
                a = imp_mwh // parts + (imp_mwh % parts if i == 0 else 0)
                b = exp_mwh // parts + (exp_mwh % parts if i == 0 else 0)
                out.append((device, HOURLY, ts, a, b, parts > 1 and not _whole(p, hour)))
    return out


def _whole(p: Plan, hour: int) -> bool:
    """Whether one bucket holds the whole UTC hour (so spreading it over slots changes nothing)."""
    return p.start <= hour and hour + 3600 <= p.end and p.key(hour) == p.key(hour + 3600 - 900)


def _mwh(value: bytes | None) -> int:
    if value is None:
        return 0
    try:
        return round(float(value) * 1000)
    except ValueError:
        return 0
