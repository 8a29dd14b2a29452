"""Packed hour columns (``P:kw:{D|C}:hb:<month>``): a channel-month's hours as signed 64-bit
big-endian integers, four per hour (import, export, deltas, estimated), written by ``BITFIELD`` in
the commit transaction of the hour hash, read by queries whose buckets are whole UTC hours; and the
one-off build that packs the hour hashes of a store written before they existed."""

from __future__ import annotations

import array
import asyncio
import itertools
import logging
import sys
from collections.abc import Sequence
from itertools import repeat
from operator import add as add_
from operator import mul
from typing import Any, TypeAlias

from redis import exceptions as redis_errors

from kilowatch.errors import StoreError
from kilowatch.query.periods import Plan
from kilowatch.store.redis.connection import Connection, store_error
from kilowatch.store.redis.keys import bases, glob_escape
from kilowatch.store.redis.lua import HB_BUILD_LUA

log = logging.getLogger(__name__)

FORMAT = 2
"""``P:kw:format``: 2 = every hour-month hash has its packed columns (``…:hb:<month>``)."""
HB_WIDTH = 4
"""Packed integers per hour: import, export, deltas, estimated."""
HB_BUILD_CHUNK = 200
"""Hour-month hashes packed per pipelined round trip of :meth:`HourColumns.build`."""
_LITTLE = sys.byteorder == "little"

Columns: TypeAlias = tuple[str, str, list[int], list[int], list[int], list[int]]
"""One hash's rows of one channel: ``(device, channel, starts, imports, exports, estimated)``."""


class HourColumns:
    """The packed hour columns of one store: whether they are complete, their build, their reads."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.ready = False
        """Whether every hour hash is known to have its packed columns (``P:kw:format``)."""

    async def read_format(self) -> bool:
        """Read ``P:kw:format`` and adopt it; ``True``: the store has energy written by an earlier
        kilowatch (hour hashes without packed columns), which :meth:`build` must pack before
        whole-hour queries may read them. A store without energy (no channel) is marked at once:
        every commit from now on writes both."""
        conn, keys = self._conn, self._conn.keys
        pipe = conn.client.pipeline(transaction=False)
        pipe.get(keys.kw("format"))
        pipe.scard(keys.kw("channels"))
        raw, channels = await conn.call("cannot read the store format", pipe.execute())
        if raw is not None and raw.isdigit() and int(raw) >= FORMAT:
            self.ready = True
            return False
        if not channels:
            await conn.call("cannot mark the store format", conn.client.set(
                keys.kw("format"), FORMAT
            ))  # fmt: skip
            self.ready = True
            return False
        self.ready = False
        return True

    async def build(self) -> int:
        """Pack every hour-month hash into its ``…:hb:<month>`` columns, then mark the store
        (``P:kw:format`` = :data:`FORMAT`) so whole-hour queries read the columns; until then
        they read the hashes (``HGETALL``). Returns how many hashes were packed.

        Needed once for a store written by an earlier kilowatch; runs in the background at open
        when the marker is missing. One SCAN finds the hour hashes; each is packed by
        :data:`~.lua.HB_BUILD_LUA`, atomic per hash, so commits racing the build count once: a
        hash created after the SCAN passed it was written only by commits that wrote its columns
        too. Running it twice (two processes) is harmless."""
        conn = self._conn
        pattern = glob_escape(conn.keys.kw("")) + "*:h:*"
        packed = 0
        todo: list[str] = []
        try:
            async for key in conn.scan(pattern, _type="HASH"):
                conn.stop_point()
                if key.rpartition(":h:")[2].isdigit():
                    todo.append(key)
                if len(todo) >= HB_BUILD_CHUNK:
                    packed += await self._pack(todo)
                    todo = []
            packed += await self._pack(todo)
            await conn.client.set(conn.keys.kw("format"), FORMAT)
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("cannot build the packed hour columns", err) from err
        self.ready = True
        return packed

    async def _pack(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        pipe = self._conn.client.pipeline(transaction=False)
        for key in keys:
            head, _, month = key.rpartition(":h:")
            pipe.eval(HB_BUILD_LUA, 2, key, f"{head}:hb:{month}")
        await pipe.execute()
        self._conn.stop_point()
        return len(keys)

    async def build_in_background(self) -> None:
        """:meth:`build` as a task: errors are logged (queries keep reading the hashes; the next
        open tries again), never raised into the store's task group."""
        try:
            started = asyncio.get_running_loop().time()
            n = await self.build()
            log.info(
                "packed hour columns built from %d hour hashes (%.1f s)",
                n, asyncio.get_running_loop().time() - started,
            )  # fmt: skip
        except StoreError as err:
            log.warning("%s; whole-hour queries keep reading the hour hashes", err)

    async def read(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> list[Columns]:
        """Per channel and month: its hours in range with data as columns, in time order, from
        the packed columns: one ``GET`` per channel and month (a year is ~290 KB instead of
        ~26 000 hash fields the server must send and hiredis parse), decoded by
        ``array.frombytes`` and picked by slices and ``compress`` over the deltas column (an hour
        has data when its deltas are > 0, as its ``nc`` field exists in the hash) -- all C
        loops."""
        conn = self._conn
        width, size = HB_WIDTH, 31 * 24
        pipe = conn.client.pipeline(transaction=False)
        jobs: list[tuple[str, str, int, int, int]] = []
        for device, channel in pairs:
            ch = conn.keys.chan(device, channel)
            for base in bases(p, 3600):
                lo = max(0, -(-(p.start - base) // 3600))
                hi = min(size, -(-(p.end - base) // 3600))
                pipe.get(f"{ch}:hb:{base}")
                jobs.append((device, channel, base, lo, hi))
        got = await conn.call("energy query failed", pipe.execute()) if jobs else []
        out: list[Columns] = []
        compress = itertools.compress
        for (device, channel, base, lo, hi), raw in zip(jobs, got, strict=True):
            if not raw or hi <= lo:
                continue
            values = array.array("q")
            values.frombytes(raw[: len(raw) - len(raw) % 8])
            if _LITTLE:
                values.byteswap()  # BITFIELD's integers are big-endian
            values.extend(repeat(0, -len(values) % width))
            a, b = lo * width, hi * width
            counts = values[a + 2 : b : width]
            at = list(compress(range(lo, hi), counts))
            if not at:
                continue
            out.append((
                device,
                channel,
                list(map(add_, repeat(base), map(mul, at, repeat(3600)))),
                list(compress(values[a:b:width], counts)),
                list(compress(values[a + 1 : b : width], counts)),
                list(compress(values[a + 3 : b : width], counts)),
            ))  # fmt: skip
        return out


def add_columns(args: list[Any], at: int, imp: int, exp: int, est: int, count: int) -> None:
    """``BITFIELD`` subcommands adding one hour to its packed columns (hour ``at`` of the month;
    layout in the module docstring). The deltas are always added: they mark the hour as having
    data, as ``nc`` does in the hash."""
    i = HB_WIDTH * at
    if imp:
        args += ("INCRBY", "i64", f"#{i}", imp)
    if exp:
        args += ("INCRBY", "i64", f"#{i + 1}", exp)
    args += ("INCRBY", "i64", f"#{i + 2}", count)
    if est:
        args += ("SET", "i64", f"#{i + 3}", 1)
