"""Local days on Redis: each channel's energy per local day of the site's zone (``P:kw:{D|C}:ld``),
kept by every commit and rebuilt from the slots when the zone is chosen.

``P:kw:localdays`` (``zone``, ``ready``) names the zone for every process. A commit adds its
share with :data:`~.lua.LD_ADD_LUA` in the channel's transaction; a rebuild replaces a channel's
hash with :data:`~.lua.LD_WRITE_LUA` only if no commit changed it meanwhile. Reading them for
day and month queries is :mod:`.daytable`.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from redis import exceptions as redis_errors

from kilowatch.errors import StoreError
from kilowatch.model.slots import SLOT_SECONDS
from kilowatch.query.grouping import Rollup, regroup
from kilowatch.query.periods import segments, zone
from kilowatch.store.redis.connection import Connection, stop_task, store_error
from kilowatch.store.redis.keys import DAY, glob_escape, month_start
from kilowatch.store.redis.lua import LD_ADD_LUA, LD_READY_LUA, LD_WRITE_LUA
from kilowatch.store.redis.transaction import Ops

log = logging.getLogger(__name__)

LD_REBUILD_ATTEMPTS = 20
"""Re-reads of one channel whose local days commits keep changing under the rebuild."""


class LocalDays:
    """The zone whose local days this process maintains, and their rebuilds (background tasks of
    the store's task group, :attr:`tasks`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.tasks: asyncio.TaskGroup | None = None
        """The open store's task group (``None``: closed)."""
        self.zone: str | None = None
        """The zone whose local days this process's commits maintain (ready or being rebuilt)."""
        self.ready = False
        """Whether the last look at ``P:kw:localdays`` found :attr:`zone` complete."""
        self._task: asyncio.Task[None] | None = None
        self._task_zone: str | None = None
        self._task_full = False
        """Whether :attr:`_task` rebuilds every channel (else it repairs a few)."""
        self._error: StoreError | None = None

    async def use(self, tz: str, *, wait: bool = False) -> None:
        """Keep energy per local day of ``tz`` (see :meth:`Store.use_local_zone`).

        The choice lives in ``P:kw:localdays`` (``zone``, ``ready``) so every process opening the
        store maintains the same zone. A new zone is stored not ready; commits maintain its days
        at once, and a background task rebuilds each channel's days from its slots, then marks
        the zone ready. ``wait``: return when the rebuild is done (:class:`StoreError` if it
        failed)."""
        zone(tz)  # InvalidQueryError for an unknown zone, before anything is stored
        if self.tasks is None:
            raise StoreError("the Redis store is not open; use `async with open_store(url)`")
        current, ready = await self.read_state()
        running = self._task is not None and not self._task.done()
        if current == tz and ready:
            if running and self._task_zone != tz:
                await self.stop()
            return
        if not (running and self._task_zone == tz and self._task_full):
            await self.stop()
            conn = self._conn
            await conn.call(
                "cannot save the local zone",
                conn.client.hset(conn.keys.kw("localdays"), mapping={"zone": tz, "ready": "0"}),
            )
            self.zone, self.ready, self._error = tz, False, None
            self._task_zone, self._task_full = tz, True
            self._task = self.tasks.create_task(self._rebuild_all(tz))
        task = self._task
        if wait and task is not None:
            await asyncio.wait([task])
            if self._error is not None and self._task is task:
                raise self._error
            if task.cancelled() or not (self.ready and self.zone == tz):
                raise StoreError(f"the rebuild of local days in {tz} was stopped before it ended")

    async def complete_zone(self) -> str | None:
        """The zone whose local days are complete, as stored in Redis now (another process may
        have chosen it)."""
        current, ready = await self.read_state()
        return current if ready else None

    async def read_state(self) -> tuple[str | None, bool]:
        """Read ``P:kw:localdays`` and adopt it: commits maintain the stored zone."""
        conn = self._conn
        raw_zone, raw_ready = await conn.call(
            "cannot read the local zone",
            conn.client.hmget(conn.keys.kw("localdays"), ["zone", "ready"]),
        )
        current = raw_zone.decode() if raw_zone else None
        self.zone, self.ready = current, current is not None and raw_ready == b"1"
        return current, self.ready

    async def stop(self) -> None:
        """Stop a running rebuild; bounded like the seed refresh: every await of a rebuild is one
        short round trip."""
        task, self._task = self._task, None
        await stop_task(task, "the local-day rebuild")

    def commit_ops(self, op: Ops, slots: Rollup) -> None:
        """The batch's energy per channel and local day of the maintained zone, added by
        :data:`~.lua.LD_ADD_LUA` in the channel's transaction (so the local days never disagree
        with the slots after a crash). Without a zone the script only marks existing days
        untrusted."""
        zone_name = self.zone
        per_channel: dict[tuple[str, str], list[str]] = {}
        if zone_name is None:
            for device, channel, _ in slots:
                per_channel.setdefault((device, channel), [])
        else:
            for (device, channel, day), (imp, exp, _, n) in by_local_day(
                zone(zone_name), slots
            ).items():
                per_channel.setdefault((device, channel), []).append(ld_pairs(day, imp, exp, n))
        keys = self._conn.keys
        for (device, channel), pairs in sorted(per_channel.items()):
            op("eval", keys.ld(device, channel), LD_ADD_LUA, zone_name or "", " ".join(pairs))

    def repair(self, tz: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Rebuild, in the background, channels whose local days a query found untrusted (a
        process that did not know the zone committed to them): without this nothing would, as
        choosing the ready zone again does nothing. Not while another rebuild runs."""
        if self.tasks is None or (self._task is not None and not self._task.done()):
            return
        log.info("rebuilding the local days of %d channels in %s", len(pairs), tz)
        self._task_zone, self._task_full = tz, False
        self._task = self.tasks.create_task(self._rebuild_some(tz, list(pairs)))

    async def _rebuild_all(self, tz: str) -> None:
        """The rebuild task: every channel's local days from its slots, then ``ready``. Errors
        are kept for a waiting caller and logged, never raised into the store's task group."""
        conn = self._conn
        try:
            started = asyncio.get_running_loop().time()
            pairs = await conn.pairs("channels")
            years = await self._day_hash_years(None)
            for device, channel in pairs:
                conn.stop_point()
                await self._rebuild_channel(zone(tz), device, channel, years)
            marked = await conn.call(
                "cannot mark the local days ready",
                conn.client.eval(LD_READY_LUA, 1, conn.keys.kw("localdays"), tz),
            )
            self.ready = bool(marked) and self.zone == tz
            log.info(
                "local days of %s built for %d channels (%.1f s)",
                tz, len(pairs), asyncio.get_running_loop().time() - started,
            )  # fmt: skip
        except StoreError as err:
            self._error = err
            log.warning("rebuilding the local days of %s failed: %s", tz, err)
        except (redis_errors.RedisError, OSError) as err:
            self._error = store_error(f"rebuilding the local days of {tz} failed", err)
            log.warning("%s", self._error)

    async def _rebuild_some(self, tz: str, pairs: list[tuple[str, str]]) -> None:
        try:
            years = await self._day_hash_years(None)
            for device, channel in pairs:
                self._conn.stop_point()
                await self._rebuild_channel(zone(tz), device, channel, years)
        except (StoreError, redis_errors.RedisError, OSError) as err:
            log.warning("rebuilding the local days of %d channels failed: %s", len(pairs), err)

    async def _day_hash_years(self, chan: str | None) -> dict[str, set[int]]:
        """UTC years of each channel's day hashes (``<channel key>:d:<year start>``), found by one
        SCAN of the keyspace (``chan``: of that channel's keys only, for a re-read). A rebuild
        cannot know otherwise which days a channel has data on."""
        conn = self._conn
        glob = glob_escape(chan) if chan else glob_escape(conn.keys.kw("")) + "*"
        out: dict[str, set[int]] = {}
        async for key in conn.scan(glob + ":d:*"):
            conn.stop_point()
            head, _, year = key.rpartition(":d:")
            if year.isdigit():
                out.setdefault(head, set()).add(int(year))
        return out

    async def _rebuild_channel(
        self, tz: ZoneInfo, device: str, channel: str, years: dict[str, set[int]]
    ) -> None:
        """Replace one channel's local days with sums of its slots, exactly once.

        Read the hash's version, the channel's slots, then write with :data:`~.lua.LD_WRITE_LUA`,
        which refuses if a commit bumped the version meanwhile (a commit's energy would be
        counted twice, or lost): then read again, SCANning for this channel's day hashes in
        case the commit started a new year."""
        conn = self._conn
        ch, ld = conn.keys.chan(device, channel), conn.keys.ld(device, channel)
        known = years.get(ch, set())
        for attempt in range(LD_REBUILD_ATTEMPTS):
            if attempt:
                known = (await self._day_hash_years(ch)).get(ch, set())
            version = await conn.call("cannot read local days", conn.client.hget(ld, "v"))
            slots = await self._channel_slots(device, channel, sorted(known))
            days = by_local_day(tz, slots)
            packed = " ".join(ld_pairs(d, imp, exp, n) for (_, _, d), (imp, exp, _, n) in sorted(
                days.items()
            ))  # fmt: skip
            expect = version.decode() if version is not None else ""
            done = await conn.call(
                "cannot write local days",
                conn.client.eval(LD_WRITE_LUA, 1, ld, expect, tz.key, packed),
            )
            if done:
                return
        raise StoreError(
            f"local days of {device} {channel} kept changing during {LD_REBUILD_ATTEMPTS} "
            "rebuild attempts; run use_local_zone again when ingest is quieter"
        )

    async def _channel_slots(self, device: str, channel: str, years: Sequence[int]) -> Rollup:
        """Every stored slot of the channel in ``years`` (UTC year starts), as a rollup; before
        its first slot, its hours (whose slots retention dropped, see
        :meth:`~.writes.Writer.drop_slots_before`) keyed by the hour's start, so each goes whole
        to the local day it starts in (exact where the zone's offsets are whole hours, as on
        SQLite)."""
        conn = self._conn
        ch = conn.keys.chan(device, channel)
        got = await conn.call(
            "cannot read day rollups",
            conn.pipeline_read([("hgetall", f"{ch}:d:{y}", ()) for y in years]),
        )
        days = sorted(
            y + int(name[:-1]) * DAY
            for y, fields in zip(years, got, strict=True)
            for name, value in fields.items()
            if name.endswith(b"c") and int(value) > 0
        )
        got = await conn.call(
            "cannot read slots", conn.pipeline_read([("hgetall", f"{ch}:s:{d}", ()) for d in days])
        )
        out: Rollup = {}
        for day, fields in zip(days, got, strict=True):
            for n, cell in _parse_counted(fields).items():
                out[(device, channel, day + n * SLOT_SECONDS)] = cell
        first_hour = min((k[2] for k in out), default=2**62) // 3600 * 3600
        months = sorted({month_start(d) for d in days if d < first_hour})
        got = await conn.call(
            "cannot read hour rollups",
            conn.pipeline_read([("hgetall", f"{ch}:h:{m}", ()) for m in months]),
        )
        for month, fields in zip(months, got, strict=True):
            for n, cell in _parse_counted(fields).items():
                if month + n * 3600 < first_hour:
                    out[(device, channel, month + n * 3600)] = cell
        return out


def by_local_day(tz: ZoneInfo, slots: Rollup) -> Rollup:
    """``slots`` (keyed by slot start) summed per local day number of ``tz``: ``(slot +
    offset) // 86400``, exactly :meth:`Plan.key` for ``by="day"``. Offsets come from the zone's
    segments over the slots' span (a handful of look-ups), not one look-up per slot."""
    if not slots:
        return {}
    starts = [k[2] for k in slots]
    segs = segments(tz, min(starts), max(starts) + SLOT_SECONDS)
    seg_starts = [seg.start for seg in segs]

    def local_day(slot: int) -> int:
        return (slot + segs[bisect_right(seg_starts, slot) - 1].offset) // DAY

    return regroup(slots, local_day)


def ld_pairs(day: int, imp: int, exp: int, n: int) -> str:
    """``field value`` pairs of one local day (import always: a zero day still has data)."""
    return f"{day} {imp} {day}e {exp} {day}c {n}" if exp else f"{day} {imp} {day}c {n}"


def _parse_counted(fields: dict[bytes, bytes]) -> dict[int, list[int]]:
    """A slot or hour hash as ``n -> [import, export, 0, deltas]`` of the entries with data."""
    per: dict[int, list[int]] = {}
    for name, value in fields.items():
        tail = name[-1:]
        if tail == b"x":
            continue
        if tail in (b"e", b"c"):
            per.setdefault(int(name[:-1]), [0, 0, 0, 0])[1 if tail == b"e" else 3] = int(value)
        else:
            per.setdefault(int(name), [0, 0, 0, 0])[0] = int(value)
    return {n: cell for n, cell in per.items() if cell[3] > 0}
