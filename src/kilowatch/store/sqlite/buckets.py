"""The SQL that buckets energy rows: pure text from a :class:`~kilowatch.query.periods.Plan` and
an :class:`~kilowatch.query.energy.EnergyQuery`, run by :mod:`.energy` and :mod:`.local_days`.

Buckets are computed in SQL from the plan's offset segments (see :mod:`kilowatch.query.periods`),
so only bucket sums leave the database. Queries whose buckets are whole UTC hours (every zone with
a whole-hour offset, for hour, day and month buckets) read the ``hours`` table: 4x fewer rows than
``slots``.
"""

from __future__ import annotations

from kilowatch.query.energy import EnergyQuery
from kilowatch.query.periods import LocalDays, Plan


def key_sql(p: Plan, col: str) -> str:
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


def channel_filter(query: EnergyQuery) -> tuple[str, list[str]]:
    """The query's device and channel filter: a `` WHERE …`` clause (or ``""``) and its
    parameters."""
    sql: list[str] = []
    args: list[str] = []
    if query.devices:
        sql.append(f"device IN ({', '.join('?' * len(query.devices))})")
        args += query.devices
    if query.channels:
        sql.append(f"channel IN ({', '.join('?' * len(query.channels))})")
        args += query.channels
    return (" WHERE " + " AND ".join(sql)) if sql else "", args


def cells_sql(p: Plan, query: EnergyQuery) -> str:
    """SQL of the 15-minute/hour cells ``(device, channel, k, i, e, x)`` (parameters: the channel
    filter's, then the range)."""
    table, col = ("hours", "hour") if p.whole_hours else ("slots", "slot")
    where, _ = channel_filter(query)
    key = f"s.{col}" if p.keys_are_starts else key_sql(p, "s." + col)
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


_LEVELS = ((86400, "days", "day"), (3600, "hours", "hour"), (900, "slots", "slot"))


def rollup_sql(p: Plan, query: EnergyQuery, days: LocalDays | None) -> tuple[str, list[str]]:
    """SQL of the day/month cells ``(device, channel, k, i, e)``: from the local days when
    ``days`` (ready, and covering the plan: see ``LocalDays.covers``), else from signed day, hour
    and slot rollups (see ``periods.decompose``). A bucket has data when the count of deltas that
    landed in it (``n``) is positive."""
    where, args = channel_filter(query)
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


__all__ = ["cells_sql", "channel_filter", "key_sql", "rollup_sql"]
