"""Energy queries on a read connection: a :class:`~kilowatch.query.periods.Plan` and an
:class:`~kilowatch.query.energy.EnergyQuery` in, an :class:`~kilowatch.query.table.EnergyTable` out.

Three paths, fastest first: a channel's stored rows that are buckets already (read column by
column); rows grouped and ordered in SQL; per-channel cells grouped in Python by the "Names" rules
of :mod:`kilowatch.query.grouping` (a meter's parts, the ``hourly`` channel). Rows by channel to
which those rules apply get the query's totals by the same rules.
"""

from __future__ import annotations

import sqlite3
from itertools import repeat

import orjson

from kilowatch.query.energy import EnergyQuery
from kilowatch.query.grouping import (
    HOURLY,
    Cells,
    Flat,
    Shadow,
    channel_totals,
    grouped_flat,
    hourly_beside_others,
    names_rules_apply,
)
from kilowatch.query.periods import LocalDays, Plan
from kilowatch.query.table import EnergyTable
from kilowatch.store.sqlite.buckets import cells_sql, channel_filter, key_sql, rollup_sql


def energy_table(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> EnergyTable:
    """The answer to ``query`` planned as ``p``; ``days``: local days that cover ``p``, if any."""
    where, args = channel_filter(query)
    pairs: list[tuple[str, str]] = conn.execute(
        f"SELECT device, channel FROM channels{where}", args
    ).fetchall()
    rules = names_rules_apply(pairs)
    table = _rows_table(conn, p, query, days, pairs, rules=rules)
    if query.group == "channel" and rules and len(table):
        table = _with_totals(conn, p, table)
    return table


def _rows_table(
    conn: sqlite3.Connection,
    p: Plan,
    query: EnergyQuery,
    days: LocalDays | None,
    pairs: list[tuple[str, str]],
    *,
    rules: bool,
) -> EnergyTable:
    """The rows; ``pairs``: the selected channels; ``rules``: whether the "Names" rules apply to
    them."""
    if query.group == "channel" and p.keys_are_starts:
        return _starts_table(conn, p, pairs)
    if query.group == "channel" or not rules:
        return EnergyTable.from_flat(p, _energy_flat(conn, p, query, days))
    cells, shadow = _energy_cells(conn, p, query, days)
    return EnergyTable.from_flat(p, grouped_flat(query, cells, shadow))


def _with_totals(conn: sqlite3.Connection, p: Plan, table: EnergyTable) -> EnergyTable:
    """``table`` (rows by channel) with the query's totals by the "Names" rules."""
    present = {(d, c) for d, c in set(zip(table.devices, table.channels, strict=True)) if d and c}
    shadow = _shadow(conn, p, present) if hourly_beside_others(present) else {}
    return table.with_totals(channel_totals(table.columns(), shadow))


def _energy_flat(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> list[Flat]:
    """The finished rows, grouped and ordered in SQL: only where the "Names" rules cannot change
    a sum (grouping by channel, or no part beside its whole and no ``hourly`` channel beside
    another); else :func:`_energy_cells` and the general grouping of
    :mod:`kilowatch.query.grouping` answer."""
    _, args = channel_filter(query)
    if p.by in ("day", "month"):
        return _rollup_flat(conn, p, query, days)
    cells = cells_sql(p, query)
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


def _starts_table(conn: sqlite3.Connection, p: Plan, pairs: list[tuple[str, str]]) -> EnergyTable:
    """Rows by channel where every stored slot (or hour) is a bucket of its own: each channel's
    range read column by column (one primary-key range scan), merged in time order.

    Each column comes back as one JSON array built by SQLite (``json_group_array``) and parsed by
    orjson: both C, where fetching 8 760 rows as Python tuples and transposing them took twice as
    long. (The subquery's ORDER BY is the primary key's order: no sort, and the arrays are in it.)
    """
    table, col = ("hours", "hour") if p.whole_hours else ("slots", "slot")
    sql = (
        f"SELECT json_group_array({col}), json_group_array(import_mwh), "
        "json_group_array(export_mwh), json_group_array(estimated) FROM ("
        f"SELECT {col}, import_mwh, export_mwh, estimated FROM {table} "
        f"WHERE device = ? AND channel = ? AND {col} >= ? AND {col} < ? ORDER BY {col})"
    )
    parts = []
    for device, channel in pairs:
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


def _energy_cells(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> tuple[Cells, Shadow]:
    if p.by in ("day", "month"):
        cells = _rollup_cells(conn, p, query, days)
    else:
        cells = _scan_cells(conn, p, query)
    shadow: Shadow = {}
    if query.group != "channel":
        shadow = _shadow(conn, p, {(d, c) for d, c, _ in cells})
    return cells, shadow


def _scan_cells(conn: sqlite3.Connection, p: Plan, query: EnergyQuery) -> Cells:
    """15-minute and hour buckets: every slot (or hour) row, bucketed in SQL
    (:func:`cells_sql`)."""
    _, args = channel_filter(query)
    return {
        (d, c, k): [imp, exp, est]
        for d, c, k, imp, exp, est in conn.execute(cells_sql(p, query), (*args, p.start, p.end))
    }


def _estimated(conn: sqlite3.Connection, p: Plan, query: EnergyQuery) -> set[tuple[str, str, int]]:
    """``(device, channel, bucket key)`` of the estimated slots in range: from the ``estimated``
    index, as rollups cannot carry the flag through a subtraction."""
    est_sql = "SELECT device, channel, slot FROM estimated WHERE slot >= ? AND slot < ?"
    est_where, est_args = channel_filter(query)
    if est_where:
        est_sql += " AND " + est_where.removeprefix(" WHERE ")
    return {
        (d, c, p.key(slot)) for d, c, slot in conn.execute(est_sql, (p.start, p.end, *est_args))
    }


def _rollup_cells(
    conn: sqlite3.Connection, p: Plan, query: EnergyQuery, days: LocalDays | None
) -> Cells:
    """Day and month buckets per channel (see :func:`rollup_sql`)."""
    sql, args = rollup_sql(p, query, days)
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
    cells, args = rollup_sql(p, query, days)
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


def _shadow(conn: sqlite3.Connection, p: Plan, present: set[tuple[str, str]]) -> Shadow:
    """The ``hourly`` energy not to count, per device and bucket: what falls in the UTC hours in
    which the device has another channel's data; ``present``: the channels with data in range.

    Summed in SQL per bucket, from the hours when every bucket is made of whole hours (as the
    cells are: right after retention dropped the slots too), else from the slots."""
    per_device: dict[str, set[str]] = {}
    for d, c in present:
        per_device.setdefault(d, set()).add(c)
    table, col = ("hours", "hour") if p.whole_hours else ("slots", "slot")
    out: Shadow = {}
    for device, chans in per_device.items():
        others = sorted(chans - {HOURLY})
        if HOURLY not in chans or not others:
            continue
        marks = ", ".join("?" * len(others))
        sql = (
            f"SELECT {key_sql(p, 's.' + col)} AS k, sum(s.import_mwh), sum(s.export_mwh) "
            f"FROM {table} s WHERE s.device = ? AND s.channel = ? AND s.{col} >= ? "
            f"AND s.{col} < ? AND EXISTS (SELECT 1 FROM hours h WHERE h.device = s.device "
            f"AND h.channel IN ({marks}) AND h.hour = s.{col} / 3600 * 3600) GROUP BY k"
        )
        for k, imp, exp in conn.execute(sql, (device, HOURLY, p.start, p.end, *others)):
            out[(device, k)] = [imp, exp]
    return out


__all__ = ["energy_table"]
