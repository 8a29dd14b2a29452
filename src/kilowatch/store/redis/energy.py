"""Energy queries on Redis: the keys a query needs are computed (one per channel and UTC day or
month) and read in one pipelined round trip; buckets are computed in Python with
:mod:`kilowatch.query.periods`, or summed on the server by a script per channel.

Which path answers (see docs/storage.md, "Energy and queries"): day and month buckets from the
local days (:mod:`.daytable`) or the signed rollups; whole-hour buckets by channel from the packed
columns (:mod:`.columns`); 15-minute buckets by channel from the slot hashes, column by column;
everything else (external seed hours, "Names" rules) from the raw slots or hours. Rows by channel
to which the "Names" rules apply get the query's totals by the same rules.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import add as add_
from operator import mod, mul, sub
from typing import Any

from kilowatch.model.slots import SLOT_SECONDS
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.grouping import (
    HOURLY,
    Cells,
    Flat,
    Grouped,
    Shadow,
    add,
    channel_totals,
    grouped_flat,
    hourly_beside_others,
    in_order,
    names_rules_apply,
    selected,
    shadow_hourly,
)
from kilowatch.query.periods import Plan, plan
from kilowatch.query.table import EnergyTable
from kilowatch.store.redis.columns import Columns, HourColumns
from kilowatch.store.redis.connection import Command, Connection
from kilowatch.store.redis.daytable import local_days_table
from kilowatch.store.redis.keys import bases, rollup_field
from kilowatch.store.redis.localdays import LocalDays
from kilowatch.store.redis.lua import HMGET_LUA, ROLLUP_LUA
from kilowatch.store.redis.seed import RawRow, SeedIndex, SeedRead, seed_rows


class EnergyReader:
    """Answers :class:`EnergyQuery` from the store's energy keys."""

    def __init__(
        self, conn: Connection, seed: SeedIndex, columns: HourColumns, local: LocalDays
    ) -> None:
        self._conn = conn
        self._seed = seed
        self._columns = columns
        self._local = local

    async def table(self, query: EnergyQuery) -> EnergyTable:
        p = plan(query.by, query.tz, query.start, query.end)
        pairs = [pc for pc in await self._conn.pairs("channels") if selected(query, *pc)]
        seed_cmds = await self._seed.reads(query, p)
        seed_devices = {device for _, (device, _) in seed_cmds}
        # an external hour is the hourly channel of its device
        rules = names_rules_apply([*pairs, *((d, HOURLY) for d in seed_devices)])
        table, raw = await self._rows_table(p, query, pairs, seed_cmds, rules=rules)
        if query.group != "channel" or not rules or not len(table):
            return table
        # rows by channel: the totals by the "Names" rules
        present = {
            (d, c) for d, c in set(zip(table.devices, table.channels, strict=True)) if d and c
        }
        shadow: Shadow = {}
        hourly = hourly_beside_others(present)
        if hourly and raw is not None:
            shadow = _shadow(p, raw)
        elif hourly:  # a fast path answered: read those devices' slots (or hours) too
            got = await self._scan_columns(p, [pc for pc in pairs if pc[0] in hourly])
            shadow = _shadow_columns(p, got)
        return table.with_totals(channel_totals(table.columns(), shadow))

    async def _rows_table(
        self,
        p: Plan,
        query: EnergyQuery,
        pairs: list[tuple[str, str]],
        seed_cmds: Sequence[SeedRead],
        *,
        rules: bool,
    ) -> tuple[EnergyTable, list[RawRow] | None]:
        """The rows, and the raw slots (or hours) read for them when the general path answered
        (``None`` on a fast path). ``rules``: whether the "Names" rules apply to the channels."""
        if not seed_cmds and (query.group == "channel" or not rules):
            # no externally written hours and no "Names" rule to apply: sums on the server
            if p.by in ("day", "month"):
                table = await local_days_table(self._conn, self._local, p, query, pairs)
                if table is not None:
                    return table, None
                return EnergyTable.from_flat(p, await self._rollup_flat(p, query, pairs)), None
            if p.keys_are_starts and query.group == "channel":
                return await self._scan_table(p, pairs), None
        seed_devices = {device for _, (device, _) in seed_cmds}
        if p.by in ("day", "month"):
            cells = await self._rollup_cells(p, pairs)
            # raw data only where the hourly rules need hours: devices with an hourly channel
            # (beside another one, for rows by channel: their totals), and the seed's devices
            per_device: dict[str, set[str]] = {}
            for device, channel in pairs:
                per_device.setdefault(device, set()).add(channel)
            needy = {
                d
                for d, chans in per_device.items()
                if d in seed_devices
                or (HOURLY in chans and (query.group != "channel" or len(chans) > 1))
            }
            scan_pairs = [pc for pc in pairs if pc[0] in needy]
        else:
            cells, scan_pairs = {}, pairs
        raw, seed_got = await self._scan_raw(p, scan_pairs, [c for c, _ in seed_cmds])
        step = 3600 if p.whole_hours else SLOT_SECONDS
        seed_raw = seed_rows(raw, seed_cmds, seed_got, step, p)
        if p.keys_are_starts:
            for device, channel, ts, imp, exp, est in raw:
                cells[(device, channel, ts)] = [imp, exp, int(est)]  # one row per bucket
        elif p.by not in ("day", "month"):
            for device, channel, ts, imp, exp, est in raw:
                add(cells, device, channel, p.key(ts), imp, exp, est)
        for device, channel, ts, imp, exp, est in seed_raw:
            add(cells, device, channel, p.key(ts), imp, exp, est)
        shadow = _shadow(p, raw + seed_raw) if query.group != "channel" else {}
        return EnergyTable.from_flat(p, grouped_flat(query, cells, shadow)), raw + seed_raw

    async def _scan_table(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> EnergyTable:
        """15-minute (or whole-hour) rows by channel, column by column when one channel has data
        (a year by hour is 8 760 rows: no tuple per row), else merged and sorted."""
        got = await self._scan_columns(p, pairs)
        with_data = {(device, channel) for device, channel, *_ in got}
        if len(with_data) > 1:
            return EnergyTable.from_flat(p, _scan_rows(got))
        if not with_data:
            return EnergyTable(p)
        keys: list[int] = []
        imports: list[int] = []
        exports: list[int] = []
        estimated: list[int] = []
        for _, _, starts, imps, exps, ests in got:  # hashes in time order: the keys ascend
            keys += starts
            imports += imps
            exports += exps
            estimated += ests
        device, channel = next(iter(with_data))
        n = len(keys)
        return EnergyTable(p, keys, [device] * n, [channel] * n, imports, exports, estimated)

    async def _scan_columns(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> list[Columns]:
        """Per channel and slot-day/hour-month hash: its slots (hours) in range as columns
        (starts, imports, exports, estimated), in time order.

        Whole hours come from the packed columns once the store has them
        (:meth:`HourColumns.read`). Otherwise each hash is read whole (``HGETALL``: hiredis
        parses it and redis-py pairs it into a dict in C) and picked apart by
        ``map``/``compress`` over remembered field names. A Lua script parsing the names on the
        server cost more: a year of hours is ~26 000 fields, and the server's string work per
        field was most of the query."""
        step = 3600 if p.whole_hours else SLOT_SECONDS
        kind = "h" if step == 3600 else "s"
        if kind == "h" and self._columns.ready:
            return await self._columns.read(p, pairs)
        names = _field_names(kind)
        conn = self._conn
        pipe = conn.client.pipeline(transaction=False)
        jobs: list[tuple[str, str, int, int, int]] = []
        for device, channel in pairs:
            ch = conn.keys.chan(device, channel)
            for base in bases(p, step):
                lo = max(0, -(-(p.start - base) // step))
                hi = min(len(names[0]), -(-(p.end - base) // step))
                pipe.hgetall(f"{ch}:{kind}:{base}")
                jobs.append((device, channel, base, lo, hi))
        got = await conn.call("energy query failed", pipe.execute()) if jobs else []
        out: list[Columns] = []
        imp_names, exp_names, count_names, est_names = names
        compress = itertools.compress
        for (device, channel, base, lo, hi), fields in zip(jobs, got, strict=True):
            if not fields:
                continue
            get = fields.get
            present = list(map(get, count_names[lo:hi]))  # None where the slot has no data
            at = list(compress(range(lo, hi), present))
            if not at:
                continue
            zero = repeat(b"0")
            out.append((
                device,
                channel,
                list(map(add_, repeat(base), map(mul, at, repeat(step)))),
                list(map(int, map(get, compress(imp_names[lo:hi], present), zero))),
                list(map(int, map(get, compress(exp_names[lo:hi], present), zero))),
                list(map(int, map(fields.__contains__, compress(est_names[lo:hi], present)))),
            ))  # fmt: skip
        return out

    async def _rollup_flat(
        self, p: Plan, query: EnergyQuery, pairs: Sequence[tuple[str, str]]
    ) -> list[Flat]:
        """Day and month rows, each channel's buckets summed on the server
        (:data:`~.lua.ROLLUP_LUA`) from the same signed rollup fields as :meth:`_rollup_cells`;
        grouped here."""
        keys = p.keys()
        index = {k: i for i, k in enumerate(keys)}
        wanted: dict[str, dict[str, list[str]]] = {}
        for key, level, lo, hi, sign in p.terms():
            for t in range(lo, hi, level):
                suffix, field = rollup_field(t, level)
                fields = wanted.setdefault(suffix, {})
                fields.setdefault(field, []).append(f"{index[key]}{'+' if sign > 0 else '-'}")
        suffixes = list(wanted)
        names = [
            " ".join(f"{name} {name}e {name}c" for name in fields) for fields in wanted.values()
        ]
        targets = [
            " ".join("".join(uses) for uses in fields.values()) for fields in wanted.values()
        ]
        packed = [*names, *targets]
        conn = self._conn
        pipe = conn.client.pipeline(transaction=False)
        for device, channel in pairs:
            ch = conn.keys.chan(device, channel)
            pipe.eval(
                ROLLUP_LUA, len(suffixes), *[f"{ch}:{x}" for x in suffixes], len(keys), *packed
            )
            pipe.zrangebyscore(f"{ch}:est", p.start, p.end - 1)
        got = await conn.call("energy query failed", pipe.execute()) if pairs else []
        grouped: Grouped = {}
        for i, (device, channel) in enumerate(pairs):
            sums, est = got[2 * i], got[2 * i + 1]
            marked = {p.key(int(raw)) for raw in est}
            d = device if query.group != "total" else None
            c = channel if query.group == "channel" else None
            for b in range(len(keys)):
                if sums[3 * b + 2] <= 0:
                    continue
                key = keys[b]
                x = int(key in marked)
                acc = grouped.get((key, d, c))
                if acc is None:
                    grouped[(key, d, c)] = [sums[3 * b], sums[3 * b + 1], x]
                else:
                    acc[0] += sums[3 * b]
                    acc[1] += sums[3 * b + 1]
                    acc[2] |= x
        return in_order(grouped)

    async def _scan_raw(
        self, p: Plan, pairs: Sequence[tuple[str, str]], extra: Sequence[Command]
    ) -> tuple[list[RawRow], list[Any]]:
        """Every slot (or hour) of ``pairs`` in the range, plus the results of ``extra`` reads."""
        conn = self._conn
        step = 3600 if p.whole_hours else SLOT_SECONDS
        cmds: list[Command] = []
        heads: list[tuple[str, str, int]] = []
        for device, channel in pairs:
            ch = conn.keys.chan(device, channel)
            for base in bases(p, step):
                cmds.append(("hgetall", f"{ch}:{'h' if step == 3600 else 's'}:{base}", ()))
                heads.append((device, channel, base))
        got = await conn.call("energy query failed", conn.pipeline_read([*cmds, *extra]))
        raw: list[RawRow] = []
        for (device, channel, base), fields in zip(heads, got, strict=False):
            if fields:
                raw += _parse(device, channel, base, step, fields, p)
        return raw, got[len(cmds) :]

    async def _rollup_cells(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> Cells:
        """Day and month buckets from signed day, hour and slot rollups (``periods.decompose``):
        one HMGET per channel and rollup hash, of exactly the fields needed."""
        # which fields of which hash each bucket needs, with its sign: the same for every channel.
        # Neighbouring buckets share fields (one adds the hours the other takes away): read once.
        wanted: dict[str, dict[str, list[tuple[int, int]]]] = {}
        for key, level, lo, hi, sign in p.terms():
            for t in range(lo, hi, level):
                suffix, field = rollup_field(t, level)
                fields = wanted.setdefault(suffix, {})
                fields.setdefault(field, []).append((key, sign))
        # one argument per HMGET (a field list that HMGET_LUA splits): redis-py packs every
        # argument in Python, and these lists are the same hundreds of fields for every channel
        plans = [
            (suffix, list(fields.values()), " ".join(
                f for name in fields for f in (name, name + "e", name + "c")
            ).encode())
            for suffix, fields in wanted.items()
        ]  # fmt: skip
        conn = self._conn
        pipe = conn.client.pipeline(transaction=False)
        for device, channel in pairs:
            ch = conn.keys.chan(device, channel)
            for suffix, _, packed in plans:
                pipe.eval(HMGET_LUA, 1, f"{ch}:{suffix}", packed)
            pipe.zrangebyscore(f"{ch}:est", p.start, p.end - 1)
        got = await conn.call("energy query failed", pipe.execute()) if pairs else []
        sums: dict[tuple[str, str, int], list[int]] = {}
        estimated: list[tuple[str, str, list[bytes]]] = []
        i = 0
        for device, channel in pairs:
            for _, uses, _ in plans:
                values = got[i]
                i += 1
                for j, targets in enumerate(uses):
                    count = values[3 * j + 2]
                    if count is None:
                        continue
                    imp, exp, n = int(values[3 * j] or 0), int(values[3 * j + 1] or 0), int(count)
                    for key, sign in targets:
                        acc = sums.get((device, channel, key))
                        if acc is None:
                            acc = sums[(device, channel, key)] = [0, 0, 0]
                        acc[0] += sign * imp
                        acc[1] += sign * exp
                        acc[2] += sign * n
            estimated.append((device, channel, got[i]))
            i += 1
        cells: Cells = {k: [v[0], v[1], 0] for k, v in sums.items() if v[2] > 0}
        for device, channel, slots in estimated:
            for raw in slots:
                cell = cells.get((device, channel, p.key(int(raw))))
                if cell is not None:
                    cell[2] = 1
        return cells


@functools.cache
def _field_names(kind: str) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    """Field names ``n``, ``ne``, ``nc``, ``nx`` of every slot of a day (``s``) or hour of a
    month (``h``) hash, as bytes (the keys of a hash as redis-py returns it)."""
    size = 96 if kind == "s" else 31 * 24
    return (
        [b"%d" % n for n in range(size)],
        [b"%de" % n for n in range(size)],
        [b"%dc" % n for n in range(size)],
        [b"%dx" % n for n in range(size)],
    )


def _scan_rows(got: Sequence[Columns]) -> list[Flat]:
    flat: list[Flat] = []
    for device, channel, starts, imps, exps, ests in got:
        flat += zip(starts, repeat(device), repeat(channel), imps, exps, ests)
    flat.sort()  # (start, device, channel) are unique: the documented row order
    return flat


def _parse(
    device: str, channel: str, base: int, step: int, fields: dict[bytes, bytes], p: Plan
) -> list[RawRow]:
    values: dict[int, list[int]] = {}
    for name, value in fields.items():
        tail = name[-1:]
        if tail == b"c":
            continue
        if tail in (b"e", b"x"):
            n = int(name[:-1])
            cell = values.setdefault(n, [0, 0, 0])
            if tail == b"e":
                cell[1] = int(value)
            else:
                cell[2] = 1
        else:
            values.setdefault(int(name), [0, 0, 0])[0] = int(value)
    out = []
    for n, (imp, exp, est) in values.items():
        ts = base + n * step
        if p.start <= ts < p.end:
            out.append((device, channel, ts, imp, exp, bool(est)))
    return out


def _shadow_columns(p: Plan, got: Sequence[Columns]) -> Shadow:
    """:func:`_shadow` of slots (or hours) read column by column (:meth:`EnergyReader.
    _scan_columns`): only the ``hourly`` rows in covered hours reach Python."""
    covered: dict[str, set[int]] = {}
    for device, channel, starts, *_ in got:
        if channel != HOURLY:
            covered.setdefault(device, set()).update(_hours(starts))
    hourly: list[tuple[str, int, int, int]] = []
    for device, channel, starts, imps, exps, _ in got:
        hours = covered.get(device)
        if channel == HOURLY and hours:
            inside = list(map(hours.__contains__, _hours(starts)))
            hourly += zip(
                repeat(device), *(itertools.compress(c, inside) for c in (starts, imps, exps))
            )
    return shadow_hourly(p, hourly, covered)


def _hours(starts: Sequence[int]) -> Iterable[int]:
    """The UTC hour of each slot (or hour) start."""
    return map(sub, starts, map(mod, starts, repeat(3600)))


def _shadow(p: Plan, raw: list[RawRow]) -> Shadow:
    """The ``hourly`` energy not to count, from every slot (or hour) of the devices concerned."""
    covered: dict[str, set[int]] = {}
    for device, channel, ts, *_ in raw:
        if channel != HOURLY:
            covered.setdefault(device, set()).add(ts // 3600 * 3600)
    hourly = [(d, ts, imp, exp) for d, c, ts, imp, exp, _ in raw if c == HOURLY and d in covered]
    return shadow_hourly(p, hourly, covered)
