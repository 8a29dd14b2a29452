"""SQLite backend: one file, WAL, one writer thread fed by a queue, reads on their own connections.

The event loop never blocks on SQLite: every write is a function queued to the single writer thread
(the only connection that writes, so there is never a ``database is locked`` between our own
writers);
reads run in a small thread pool, each thread with its own read connection, which in WAL mode sees
the
last committed state without waiting for the writer.

Energy is kept twice in the same transaction: per 15-minute slot (``slots``) and per UTC hour
(``hours``). Queries whose buckets are whole UTC hours (every zone with a whole-hour offset, for
hour,
day and month buckets) read the hour table: 4x fewer rows. Buckets are computed in SQL from the
query's offset segments (see :mod:`kilowatch.query.periods`), so only bucket sums leave the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from kilowatch.errors import StoreError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import ChannelKey
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.grouping import (
    HOURLY,
    Cells,
    Flat,
    Shadow,
    grouped_flat,
    needs_names_rules,
    shadow_hourly,
)
from kilowatch.query.periods import LocalDays, Plan, plan
from kilowatch.query.table import EnergyTable
from kilowatch.store import records
from kilowatch.store.protocol import Batch, DeadLetter, DeviceRecord
from kilowatch.store.sqlite import devices, journal, meta
from kilowatch.store.sqlite.commit import commit
from kilowatch.store.sqlite.connection import path_of
from kilowatch.store.sqlite.readers import Readers
from kilowatch.store.sqlite.schema import MIGRATIONS, migrate
from kilowatch.store.sqlite.writer import Writer

log = logging.getLogger(__name__)

DROP_CHANNELS_PER_JOB = 50
"""Channels whose old slots one writer job drops (commits go on between jobs)."""


class SqliteStore:
    """The SQLite :class:`~kilowatch.store.protocol.Store`; open with ``open_store("sqlite:///file.db")``."""

    def __init__(self, url: str, *, path: Path | None = None) -> None:
        self.url = url
        self.path = path if path is not None else path_of(url)
        self._writer = Writer(self.path)
        self._readers = Readers(self.path)
        self._days: LocalDays | None = None
        """The local zone commits keep days of (set and read in the writer thread)."""
        self._days_ready = False
        """Whether every channel's local days are complete (queries may read them)."""
        self._rebuild: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the directory of {self.path}: {err}") from err
        await self._writer.start(self._setup)
        self._readers.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebuild
            self._rebuild = None
        await self._writer.stop()
        self._readers.stop()

    def _setup(self, conn: sqlite3.Connection) -> None:
        """In the writer thread, before any write: the schema brought up to date, the zone read."""
        migrate(conn, self.path)
        found = conn.execute("SELECT zone, ready FROM local_zone").fetchone()
        if found is not None:
            self._days, self._days_ready = LocalDays(found[0]), bool(found[1])

    # -- writes ----------------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one SQLite transaction."""
        # the zone is read when the job runs in the writer, in order with zone changes
        await self._writer.run(lambda conn: commit(conn, batch, self._days))

    async def use_local_zone(self, tz: str, *, wait: bool = False) -> None:
        days = LocalDays(tz)  # InvalidQueryError for an unknown zone
        running = self._rebuild
        if running is not None and not running.done():
            if self._days is not None and self._days.name == tz:
                if wait:
                    await asyncio.shield(running)
                return
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

        def switch(conn: sqlite3.Connection) -> list[tuple[str, str]] | None:
            found = conn.execute("SELECT zone, ready FROM local_zone").fetchone()
            if found is not None and found[0] == tz and found[1]:
                self._days, self._days_ready = days, True
                return None
            # start over: every channel's days are rebuilt; commits keep the new zone's from now
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM local_zone")
                conn.execute("INSERT INTO local_zone VALUES (?, 0)", (tz,))
                conn.execute("DELETE FROM local_days")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._days, self._days_ready = days, False
            return conn.execute("SELECT device, channel FROM channels").fetchall()

        channels = await self._writer.run(switch)
        if channels is None:
            return
        self._rebuild = asyncio.create_task(
            self._rebuild_days(days, channels), name="kilowatch-sqlite-local-days"
        )
        if wait:
            await asyncio.shield(self._rebuild)

    async def _rebuild_days(self, days: LocalDays, channels: list[tuple[str, str]]) -> None:
        """Each channel's local days recomputed from its slots, one writer job per channel (so
        commits go on between them); then the zone is marked ready."""
        started = time.monotonic()
        for device, channel in channels:
            await self._writer.run(functools.partial(_rebuild_channel, days=days, device=device,
                                                channel=channel))  # fmt: skip

        def ready(conn: sqlite3.Connection) -> None:
            if self._days is days:
                conn.execute("UPDATE local_zone SET ready = 1 WHERE zone = ?", (days.name,))
                self._days_ready = True

        await self._writer.run(ready)
        log.info(
            "local days of %s built for %d channels in %.1f s",
            days.name, len(channels), time.monotonic() - started,
        )  # fmt: skip

    async def drop_slots_before(self, before: int) -> int:
        cut = before - before % 3600  # whole hours: no hour rollup is left half-covered
        channels = await self._readers.run(
            lambda conn: conn.execute("SELECT device, channel FROM channels").fetchall()
        )
        dropped = 0
        for i in range(0, len(channels), DROP_CHANNELS_PER_JOB):
            chunk = channels[i : i + DROP_CHANNELS_PER_JOB]
            job = functools.partial(_drop_slots, channels=chunk, cut=cut)
            dropped += await self._writer.run(job)
        return dropped

    async def local_days_zone(self) -> str | None:
        days = self._days
        return days.name if days is not None and self._days_ready else None

    def _ready_days(self, p: Plan) -> LocalDays | None:
        """The local days that can answer ``p``, if any."""
        days = self._days
        if days is None or not self._days_ready or not days.covers(p):
            return None
        return days

    async def set_device_label(
        self, device: str, *, label: str | None = None, room: str | None = None
    ) -> None:
        await self._writer.run(lambda conn: devices.set_label(conn, device, label, room))

    async def put_meta(self, key: str, value: Any) -> None:
        raw = records.dumps(value).decode()
        await self._writer.run(lambda conn: meta.put_meta(conn, key, raw))

    # -- reads -----------------------------------------------------------------------------------

    async def load_ledger_states(self) -> dict[ChannelKey, dict[str, Any]]:
        return await self._readers.run(meta.ledger_states)

    async def energy(self, query: EnergyQuery) -> list[EnergyRow]:
        return (await self.energy_table(query)).rows()

    async def energy_table(self, query: EnergyQuery) -> EnergyTable:
        p = plan(query.by, query.tz, query.start, query.end)

        days = self._ready_days(p)

        def run(conn: sqlite3.Connection) -> EnergyTable:
            if query.group == "channel" and p.keys_are_starts:
                return _starts_table(conn, p, query)
            flat = _energy_flat(conn, p, query, days)
            if flat is None:
                cells, shadow = _energy_cells(conn, p, query, days)
                flat = grouped_flat(query, cells, shadow)
            return EnergyTable.from_flat(p, flat)

        return await self._readers.run(run)

    async def devices(self) -> list[DeviceRecord]:
        return await self._readers.run(lambda conn: devices.devices(conn, None))

    async def device(self, device: str) -> DeviceRecord | None:
        found = await self._readers.run(lambda conn: devices.devices(conn, device))
        return found[0] if found else None

    async def latest(self, device: str | None = None) -> list[Reading]:
        return await self._readers.run(lambda conn: devices.latest(conn, device))

    async def events(self, device: str | None = None, limit: int = 100) -> list[Event]:
        rows_ = await self._readers.run(
            lambda conn: journal.newest(conn, "events", "event", device, limit)
        )
        return [records.event_loads(r) for r in rows_]

    async def logs(self, device: str | None = None, limit: int = 100) -> list[LogLine]:
        rows_ = await self._readers.run(
            lambda conn: journal.newest(conn, "logs", "line", device, limit)
        )
        return [records.log_loads(r) for r in rows_]

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._readers.run(lambda conn: journal.dead_letters(conn, limit))

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self._readers.run(journal.dead_letter_counts)

    async def get_meta(self, key: str) -> Any | None:
        return await self._readers.run(lambda conn: meta.get_meta(conn, key))


# -- energy queries --------------------------------------------------------------------------------


def _key_sql(p: Plan, col: str) -> str:
    """SQL for the bucket key of the slot/hour in ``col`` (same values as :meth:`Plan.key`)."""
    if p.by == "month":
        whens = " ".join(f"WHEN {col} < {b} THEN {i}" for i, b in enumerate(p.bounds[1:-1]))
        return f"CASE {whens} ELSE {len(p.bounds) - 2} END" if whens else "0"
    parts = []
    for seg in p.segments:
        if p.by == "day":
            expr = f"({col} + {seg.offset}) / 86400"
        else:
            unit = p.unit
            expr = f"max({seg.start}, ({col} + {seg.offset}) / {unit} * {unit} - {seg.offset})"
        parts.append((seg.end, expr))
    if len(parts) == 1:
        return parts[0][1]
    whens = " ".join(f"WHEN {col} < {end} THEN {expr}" for end, expr in parts[:-1])
    return f"CASE {whens} ELSE {parts[-1][1]} END"


def _channel_filter(query: EnergyQuery) -> tuple[str, list[str]]:
    sql: list[str] = []
    args: list[str] = []
    if query.devices:
        sql.append(f"device IN ({', '.join('?' * len(query.devices))})")
        args += query.devices
    if query.channels:
        sql.append(f"channel IN ({', '.join('?' * len(query.channels))})")
        args += query.channels
    return (" WHERE " + " AND ".join(sql)) if sql else "", args


def _energy_flat(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> list[Flat] | None:
    """The finished rows, grouped and ordered in SQL; ``None`` when the "Names" rules apply (a
    ``device``/``total`` grouping over a part or the ``hourly`` channel), which need
    :func:`_energy_cells` and the general grouping of :mod:`kilowatch.query.grouping`."""
    where, args = _channel_filter(query)
    if query.group != "channel":
        names = conn.execute(f"SELECT channel FROM channels{where}", args)
        if needs_names_rules(c for (c,) in names):
            return None
    if p.by in ("day", "month"):
        return _rollup_flat(conn, p, query, days)
    cells = _cells_sql(p, query)
    if query.group == "channel":
        sql = f"SELECT k, device, channel, i, e, x FROM ({cells}) ORDER BY k, device, channel"
    elif query.group == "device":
        sql = (
            f"SELECT k, device, NULL, sum(i), sum(e), max(x) FROM ({cells}) "
            "GROUP BY k, device ORDER BY k, device"
        )
    else:
        sql = f"SELECT k, NULL, NULL, sum(i), sum(e), max(x) FROM ({cells}) GROUP BY k ORDER BY k"
    return conn.execute(sql, (*args, p.start, p.end)).fetchall()


def _starts_table(conn: sqlite3.Connection, p: Plan, query: EnergyQuery) -> EnergyTable:
    """Rows by channel where every stored slot (or hour) is a bucket of its own: each channel's
    range read column by column (one primary-key range scan), merged in time order.

    Each column comes back as one JSON array built by SQLite (``json_group_array``) and parsed by
    orjson: both C, where fetching 8 760 rows as Python tuples and transposing them took twice as
    long. (The subquery's ORDER BY is the primary key's order: no sort, and the arrays are in it.)
    """
    table, col = ("hours", "hour") if p.whole_hours else ("slots", "slot")
    where, args = _channel_filter(query)
    sql = (
        f"SELECT json_group_array({col}), json_group_array(import_mwh), "
        "json_group_array(export_mwh), json_group_array(estimated) FROM ("
        f"SELECT {col}, import_mwh, export_mwh, estimated FROM {table} "
        f"WHERE device = ? AND channel = ? AND {col} >= ? AND {col} < ? ORDER BY {col})"
    )
    parts = []
    for device, channel in conn.execute(f"SELECT device, channel FROM channels{where}", args):
        columns = [orjson.loads(c) for c in conn.execute(sql, (device, channel, p.start, p.end))
                   .fetchone()]  # fmt: skip
        if columns[0]:
            parts.append((device, channel, columns))
    if not parts:
        return EnergyTable(p)
    if len(parts) == 1:
        device, channel, (keys, imports, exports, estimated) = parts[0]
        n = len(keys)
        return EnergyTable(p, keys, [device] * n, [channel] * n, imports, exports, estimated)
    flat: list[Flat] = []
    for device, channel, (keys, imports, exports, estimated) in parts:
        flat += zip(keys, repeat(device), repeat(channel), imports, exports, estimated)
    flat.sort()  # (start, device, channel) is unique: the documented order
    return EnergyTable.from_flat(p, flat)


def _rebuild_channel(conn: sqlite3.Connection, days: LocalDays, device: str, channel: str) -> None:
    """One channel's local days, recomputed in one transaction (in the writer: no commit can slip
    between the delete and the insert): from its slots, and from its hours before its first slot
    (the hours whose slots retention dropped: see :meth:`SqliteStore.drop_slots_before`)."""
    key = (device, channel)
    lo, hi = conn.execute(
        "SELECT min(slot), max(slot) FROM slots WHERE device = ? AND channel = ?", key
    ).fetchone()
    first_hour = lo // 3600 * 3600 if lo is not None else None
    h_lo, h_hi = conn.execute(
        "SELECT min(hour), max(hour) FROM hours WHERE device = ? AND channel = ? AND hour < ?",
        (*key, first_hour if first_hour is not None else 2**62),
    ).fetchone()
    parts: list[str] = []
    args: list[Any] = []
    if lo is not None or h_lo is not None:
        start = min(t for t in (lo, h_lo) if t is not None)
        end = max(t for t in (hi, h_hi) if t is not None) + 3600
        span = plan("day", days.name, datetime.fromtimestamp(start, UTC),
                    datetime.fromtimestamp(end, UTC))  # fmt: skip
        if lo is not None:
            parts.append(
                f"SELECT {_key_sql(span, 'slot')} AS d, import_mwh AS i, export_mwh AS e, n "
                "FROM slots WHERE device = ? AND channel = ?"
            )
            args += key
        if h_lo is not None:
            # an hour goes whole to the local day it starts in: exact wherever the zone's offset
            # is whole hours (a half-hour zone's dropped hours may straddle two local days)
            parts.append(
                f"SELECT {_key_sql(span, 'hour')} AS d, import_mwh AS i, export_mwh AS e, n "
                "FROM hours WHERE device = ? AND channel = ? AND hour < ?"
            )
            args += [*key, first_hour if first_hour is not None else 2**62]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM local_days WHERE device = ? AND channel = ?", key)
        if parts:
            conn.execute(
                "INSERT INTO local_days SELECT ?, ?, d, sum(i), sum(e), sum(n) FROM ("
                + " UNION ALL ".join(parts)
                + ") GROUP BY d",
                (*key, *args),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _drop_slots(conn: sqlite3.Connection, channels: Sequence[tuple[str, str]], cut: int) -> int:
    """Retention for some channels in one transaction: one primary-key range each."""
    dropped = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for device, channel in channels:
            dropped += conn.execute(
                "DELETE FROM slots WHERE device = ? AND channel = ? AND slot < ?",
                (device, channel, cut),
            ).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return dropped


def _cells_sql(p: Plan, query: EnergyQuery) -> str:
    """SQL of the 15-minute/hour cells ``(device, channel, k, i, e, x)`` (parameters: the channel
    filter's, then the range)."""
    table, col = ("hours", "hour") if p.whole_hours else ("slots", "slot")
    where, _ = _channel_filter(query)
    key = f"s.{col}" if p.keys_are_starts else _key_sql(p, "s." + col)
    agg = "" if p.keys_are_starts else "GROUP BY c.device, c.channel, k"
    cols = (
        "s.import_mwh AS i, s.export_mwh AS e, s.estimated AS x"
        if p.keys_are_starts
        else "sum(s.import_mwh) AS i, sum(s.export_mwh) AS e, max(s.estimated) AS x"
    )
    return (
        f"SELECT c.device AS device, c.channel AS channel, {key} AS k, {cols} "
        f"FROM (SELECT device, channel FROM channels{where}) c CROSS JOIN {table} s "
        f"ON s.device = c.device AND s.channel = c.channel AND s.{col} >= ? AND s.{col} < ? {agg}"
    )


def _energy_cells(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> tuple[Cells, Shadow]:
    if p.by in ("day", "month"):
        cells = _rollup_cells(conn, p, query, days)
    else:
        cells = _scan_cells(conn, p, query)
    shadow: Shadow = {}
    if query.group != "channel":
        shadow = _shadow(conn, p, cells)
    return cells, shadow


def _scan_cells(conn: sqlite3.Connection, p: Plan, query: EnergyQuery) -> Cells:
    """15-minute and hour buckets: every slot (or hour) row, bucketed in SQL
    (:func:`_cells_sql`)."""
    _, args = _channel_filter(query)
    return {
        (d, c, k): [imp, exp, est]
        for d, c, k, imp, exp, est in conn.execute(_cells_sql(p, query), (*args, p.start, p.end))
    }


_LEVELS = ((86400, "days", "day"), (3600, "hours", "hour"), (900, "slots", "slot"))


def _rollup_sql(p: Plan, query: EnergyQuery, days: LocalDays | None) -> tuple[str, list[str]]:
    """SQL of the day/month cells ``(device, channel, k, i, e)``: from the local days when
    ``days`` (ready, and covering the plan: see ``LocalDays.covers``), else from signed day, hour
    and slot rollups (see ``periods.decompose``). A bucket has data when the count of deltas that
    landed in it (``n``) is positive."""
    where, args = _channel_filter(query)
    if days is not None:
        return _local_days_sql(p, days, where), args
    terms = p.terms()
    ctes = [f"c(device, channel) AS (SELECT device, channel FROM channels{where})"]
    parts = []
    for level, table, col in _LEVELS:
        rows_ = [t for t in terms if t[1] == level]
        if not rows_:
            continue
        values = ", ".join(f"({k}, {lo}, {hi}, {sign})" for k, _, lo, hi, sign in rows_)
        ctes.append(f"t{level}(k, lo, hi, sign) AS (VALUES {values})")
        parts.append(
            f"SELECT c.device, c.channel, t.k, t.sign * s.import_mwh AS i, "
            f"t.sign * s.export_mwh AS e, t.sign * s.n AS n FROM c CROSS JOIN t{level} t "
            f"CROSS JOIN {table} s ON s.device = c.device AND s.channel = c.channel "
            f"AND s.{col} >= t.lo AND s.{col} < t.hi"
        )
    sql = (
        f"WITH {', '.join(ctes)} SELECT device, channel, k, sum(i) AS i, sum(e) AS e FROM ("
        + " UNION ALL ".join(parts)
        + ") GROUP BY device, channel, k HAVING sum(n) > 0"
    )
    return sql, args


def _local_days_sql(p: Plan, days: LocalDays, where: str) -> str:
    """Day/month cells from the local days: per channel one range of its primary key."""
    first, last = days.day(p.start), days.day(p.end)
    if p.by == "day":  # a local day number is the day bucket's key
        key, agg, cols = "s.day", "", "s.import_mwh AS i, s.export_mwh AS e"
        having = " AND s.n > 0"
    else:
        cuts = [days.day(b) for b in p.bounds[1:-1]]
        whens = " ".join(f"WHEN s.day < {d} THEN {i}" for i, d in enumerate(cuts))
        key = f"CASE {whens} ELSE {len(cuts)} END" if whens else "0"
        agg = " GROUP BY c.device, c.channel, k HAVING sum(s.n) > 0"
        cols, having = "sum(s.import_mwh) AS i, sum(s.export_mwh) AS e", ""
    return (
        f"SELECT c.device AS device, c.channel AS channel, {key} AS k, {cols} "
        f"FROM (SELECT device, channel FROM channels{where}) c CROSS JOIN local_days s "
        f"ON s.device = c.device AND s.channel = c.channel AND s.day >= {first} "
        f"AND s.day < {last}{having}{agg}"
    )


def _estimated(conn: sqlite3.Connection, p: Plan, query: EnergyQuery) -> set[tuple[str, str, int]]:
    """``(device, channel, bucket key)`` of the estimated slots in range: from the ``estimated``
    index, as rollups cannot carry the flag through a subtraction."""
    est_sql = "SELECT device, channel, slot FROM estimated WHERE slot >= ? AND slot < ?"
    est_where, est_args = _channel_filter(query)
    if est_where:
        est_sql += " AND " + est_where.removeprefix(" WHERE ")
    return {
        (d, c, p.key(slot)) for d, c, slot in conn.execute(est_sql, (p.start, p.end, *est_args))
    }


def _rollup_cells(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> Cells:
    """Day and month buckets per channel (see :func:`_rollup_sql`)."""
    sql, args = _rollup_sql(p, query, days)
    cells: Cells = {(d, c, k): [imp, exp, 0] for d, c, k, imp, exp in conn.execute(sql, args)}
    for key in _estimated(conn, p, query):
        cell = cells.get(key)
        if cell is not None:
            cell[2] = 1
    return cells


def _rollup_flat(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> list[Flat]:
    """Day and month rows grouped and ordered in SQL (no part or ``hourly`` channel involved)."""
    cells, args = _rollup_sql(p, query, days)
    if query.group == "channel":
        sql = f"SELECT k, device, channel, i, e, 0 FROM ({cells}) ORDER BY k, device, channel"
    elif query.group == "device":
        sql = (
            f"SELECT k, device, NULL, sum(i), sum(e), 0 FROM ({cells}) "
            "GROUP BY k, device ORDER BY k, device"
        )
    else:
        sql = f"SELECT k, NULL, NULL, sum(i), sum(e), 0 FROM ({cells}) GROUP BY k ORDER BY k"
    flat: list[Flat] = conn.execute(sql, args).fetchall()
    estimated = _estimated(conn, p, query)
    if not estimated:
        return flat
    # a grouped row is estimated when any of its channels' cells is
    if query.group == "channel":
        marks: set[tuple[int, str | None, str | None]] = {(k, d, c) for d, c, k in estimated}
    elif query.group == "device":
        marks = {(k, d, None) for d, _, k in estimated}
    else:
        marks = {(k, None, None) for _, _, k in estimated}
    return [(k, d, c, i, e, int((k, d, c) in marks)) for k, d, c, i, e, _ in flat]


def _shadow(conn: sqlite3.Connection, p: Plan, cells: Cells) -> Shadow:
    per_device: dict[str, set[str]] = {}
    for d, c, _ in cells:
        per_device.setdefault(d, set()).add(c)
    hourly: list[tuple[str, int, int, int]] = []
    covered: dict[str, set[int]] = {}
    for device, chans in per_device.items():
        others = sorted(chans - {HOURLY})
        if HOURLY not in chans or not others:
            continue
        marks = ", ".join("?" * len(others))
        covered[device] = {
            h
            for (h,) in conn.execute(
                f"SELECT DISTINCT hour FROM hours WHERE device = ? AND channel IN ({marks}) "
                "AND hour >= ? AND hour < ?",
                (device, *others, p.start // 3600 * 3600, p.end),
            )
        }
        hourly += [
            (device, slot, imp, exp)
            for slot, imp, exp in conn.execute(
                "SELECT slot, import_mwh, export_mwh FROM slots WHERE device = ? AND channel = ? "
                "AND slot >= ? AND slot < ?",
                (device, HOURLY, p.start, p.end),
            )
        ]
    return shadow_hourly(p, hourly, covered)


__all__ = ["MIGRATIONS", "SqliteStore", "path_of"]
