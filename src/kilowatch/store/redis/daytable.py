"""Day and month rows read from the channels' local-day hashes (``P:kw:{D|C}:ld``, kept by
:mod:`.localdays`), when they can answer: the fast path of day and month queries in the site's
zone."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from itertools import repeat
from operator import add as add_
from zoneinfo import ZoneInfo

from kilowatch.model.slots import SLOT_SECONDS
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.periods import Plan, offset_at
from kilowatch.query.table import EnergyTable
from kilowatch.store.redis.connection import Connection
from kilowatch.store.redis.keys import DAY
from kilowatch.store.redis.localdays import LocalDays
from kilowatch.store.redis.lua import LD_READ_LUA

LD_READ_CHUNK = 250
"""Channels per read script on one server (a cluster needs one per channel: one slot each).
redis-py packs every command in Python, so 500 channels in one script cost far less than 500
commands; the chunk bounds how long one script holds the server."""

Groups = dict[tuple[str | None, str | None], list[list[int]]]
"""Per output group ``(device, channel)``: ``[imports, exports, counts, estimated]``, one entry per
local day (or bucket)."""


async def local_days_table(
    conn: Connection,
    local: LocalDays,
    p: Plan,
    query: EnergyQuery,
    pairs: Sequence[tuple[str, str]],
) -> EnergyTable | None:
    """Day and month rows from the channels' local-day hashes: one script per channel (per
    :data:`LD_READ_CHUNK` channels on one server) reading the range's days (``None``: they cannot
    answer, take another path).

    They answer when the query's zone is the maintained one and complete (checked in the same
    round trip, so a zone another process changed is noticed), each bucket is made of whole
    local days, and every channel's hash holds that zone's days (``z``; see
    :data:`~.lua.LD_ADD_LUA`)."""
    tz = query.tz
    if tz != local.zone:
        return None
    cuts = [p.start, *p.bounds[1:-1], p.end] if p.by == "month" else [p.start, p.end]
    bounds = _local_day_bounds(p, cuts)
    if bounds is None:
        return None
    first, width = bounds[0], bounds[-1] - bounds[0]
    keys = conn.keys
    pipe = conn.client.pipeline(transaction=False)
    pipe.hmget(keys.kw("localdays"), ["zone", "ready"])
    chunk = 1 if conn.is_cluster else LD_READ_CHUNK
    for at in range(0, len(pairs), chunk):
        names = [
            f"{keys.chan(d, c)}:{kind}" for d, c in pairs[at : at + chunk] for kind in ("ld", "est")
        ]
        pipe.eval(LD_READ_LUA, len(names), *names, tz, first, width, p.start, p.end - 1)
    got = await conn.call("energy query failed", pipe.execute())
    raw_zone, raw_ready = got[0]
    if raw_zone is None or raw_zone.decode() != tz or raw_ready != b"1":
        local.zone = raw_zone.decode() if raw_zone else None
        local.ready = False
        return None
    groups: Groups = {}
    values = list(itertools.chain.from_iterable(got[1:]))
    i = 0
    stale: list[tuple[str, str]] = []
    for device, channel in pairs:
        status = values[i]
        if status != 1:
            i += 1
            if status == 0:  # untrusted or another zone's days
                stale.append((device, channel))
            continue  # (-1: no local-day hash: the channel never had energy)
        e = values[i + 1]
        estimated = values[i + 2 : i + 2 + e]
        i += 2 + e + 3 * width
        body = values[i - 3 * width : i]
        g = (
            device if query.group != "total" else None,
            channel if query.group == "channel" else None,
        )
        acc = groups.get(g)
        if acc is None:
            acc = groups[g] = [body[0::3], body[1::3], body[2::3], [0] * width]
        else:
            for k in range(3):
                acc[k] = list(map(add_, acc[k], body[k::3]))
        for slot in estimated:  # few: one offset look-up each
            acc[3][_local_day(p.tz, slot) - first] = 1
    if stale:
        local.repair(tz, stale)
        return None  # the general path answers meanwhile
    if p.by == "day":
        return _bucket_table(p, groups, range(first, first + width))
    # months: sum each group's days between the month bounds
    spans = [(a - first, b - first) for a, b in itertools.pairwise(bounds)]
    for acc in groups.values():
        acc[:3] = [[sum(col[a:b]) for a, b in spans] for col in acc[:3]]
        acc[3] = [int(any(acc[3][a:b])) for a, b in spans]
    return _bucket_table(p, groups, range(len(spans)))


def _local_day(tz: ZoneInfo, ts: int) -> int:
    return (ts + offset_at(tz, ts)) // DAY


def _local_midnight(tz: ZoneInfo, day: int) -> int:
    d = date(1970, 1, 1) + timedelta(days=day)
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())


def _local_day_bounds(p: Plan, instants: Sequence[int]) -> list[int] | None:
    """The local day number starting at each of ``instants`` (the range's ends, month bounds),
    or ``None`` when one is not where a local day starts, or the range holds a backward
    change across midnight (local days not in time order): then local-day sums are not the
    plan's buckets."""
    tz = p.tz
    out = []
    for t in instants:
        day = _local_day(tz, t)
        if _local_midnight(tz, day) != t or _local_day(tz, t - SLOT_SECONDS) >= day:
            return None
        out.append(day)
    for seg in p.segments[1:]:
        if _local_day(tz, seg.start - SLOT_SECONDS) > _local_day(tz, seg.start):
            return None
    return out


def _bucket_table(p: Plan, groups: Groups, keys: Sequence[int]) -> EnergyTable:
    """Rows of per-group bucket sums (``[imports, exports, counts, estimated]``, one entry per
    bucket of ``keys``), in the documented order: by bucket, then device, then channel; buckets
    without deltas left out. Transposed by ``zip`` and filtered by ``compress`` (C loops): the
    500-device month is 15 000 rows."""
    order = sorted(groups, key=lambda g: (g[0] or "", g[1] or ""))
    if not order:
        return EnergyTable(p)
    columns = [groups[g] for g in order]

    def bucket_major(k: int) -> list[int]:
        return list(itertools.chain.from_iterable(zip(*(c[k] for c in columns), strict=True)))

    imports, exports, counts, estimated = (bucket_major(k) for k in range(4))
    keep = list(map(bool, counts))
    n = len(order)
    pick = itertools.compress
    return EnergyTable(
        p,
        list(pick(itertools.chain.from_iterable(map(repeat, keys, repeat(n))), keep)),
        list(pick(itertools.chain.from_iterable(repeat([g[0] for g in order], len(keys))), keep)),
        list(pick(itertools.chain.from_iterable(repeat([g[1] for g in order], len(keys))), keep)),
        list(pick(imports, keep)),
        list(pick(exports, keep)),
        list(pick(estimated, keep)),
    )
