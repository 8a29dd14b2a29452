"""Turning per-channel bucket sums into :class:`EnergyRow` s: the grouping rules both backends
share.

A backend computes *cells*: ``(device, channel, bucket key) -> [import mWh, export mWh, estimated]``
(SQLite in SQL, Redis in Python via :func:`add`), plus the *shadowed* ``hourly`` energy: the part
of a device's ``hourly`` channel that falls in UTC hours in which the device has data on another
selected channel. :func:`rows` then applies the "Names" rules of docs/architecture.md for
``device`` and ``total`` groupings:

- a part ``p/q`` counts only when the device has no selected channel ``p``;
- ``hourly`` counts only for the hours without other channels' data (the shadowed energy is taken
  out).

The totals of an answer follow the same rules whatever its grouping: :func:`channel_totals` gives
the per-bucket totals of rows grouped by channel (what the ``total`` grouping answers), and
:func:`bucket_sums` those of rows no rule touches.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from itertools import repeat
from operator import truediv
from typing import Any, TypeAlias

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.periods import Plan

HOURLY = "hourly"
"""The channel of the hourly metering script (and of the hours an EMQX sink wrote)."""

Cell: TypeAlias = list[int]
"""``[import mWh, export mWh, estimated (0/1)]``."""
Cells: TypeAlias = dict[tuple[str, str, int], Cell]
Grouped: TypeAlias = dict[tuple[int, str | None, str | None], Cell]
"""``(bucket key, device, channel) -> [import mWh, export mWh, estimated]`` of finished rows."""
Shadow: TypeAlias = dict[tuple[str, int], list[int]]
"""``(device, bucket key) -> [import mWh, export mWh]`` of ``hourly`` energy not to count."""


Flat: TypeAlias = tuple[int, str | None, str | None, int, int, int]
"""One finished row before labelling: ``(bucket key, device, channel, import mWh, export mWh,
estimated)``, ``device``/``channel`` ``None`` where the grouping merged them."""

Rollup: TypeAlias = dict[tuple[str, str, int], list[int]]
"""``(device, channel, period start) -> [import mWh, export mWh, estimated (0/1), deltas]``."""


def sum_deltas(deltas: Iterable[SlotEnergy]) -> Rollup:
    """A batch's slot deltas summed per channel and slot (a batch often holds several per slot)."""
    out: Rollup = {}
    for s in deltas:
        acc = out.get((s.device, s.channel, s.slot))
        if acc is None:
            out[(s.device, s.channel, s.slot)] = [s.import_mwh, s.export_mwh, int(s.estimated), 1]
        else:
            acc[0] += s.import_mwh
            acc[1] += s.export_mwh
            acc[2] |= int(s.estimated)
            acc[3] += 1
    return out


def coarser(rollup: Rollup, width: int) -> Rollup:
    """``rollup`` summed into periods of ``width`` seconds (UTC-aligned: hours, days)."""
    return regroup(rollup, lambda start: start - start % width)


def regroup(rollup: Rollup, period: Callable[[int], int]) -> Rollup:
    """``rollup`` summed per ``period(start)`` (e.g. ``LocalDays.day``: local day numbers)."""
    out: Rollup = {}
    for (device, channel, start), (imp, exp, est, n) in rollup.items():
        key = (device, channel, period(start))
        acc = out.get(key)
        if acc is None:
            out[key] = [imp, exp, est, n]
        else:
            acc[0] += imp
            acc[1] += exp
            acc[2] |= est
            acc[3] += n
    return out


def parent(channel: str) -> str | None:
    """``em:0`` for the part ``em:0/a``; ``None`` for a top-level channel."""
    head, sep, _ = channel.partition("/")
    return head if sep else None


def selected(query: EnergyQuery, device: str, channel: str) -> bool:
    """Whether the query's device and channel filters let ``(device, channel)`` through."""
    return (not query.devices or device in query.devices) and (
        not query.channels or channel in query.channels
    )


def add(cells: Cells, device: str, channel: str, key: int, imp: int, exp: int, est: bool) -> None:
    """Add one slot's (or hour's) energy to its cell."""
    cell = cells.get((device, channel, key))
    if cell is None:
        cells[(device, channel, key)] = [imp, exp, int(est)]
    else:
        cell[0] += imp
        cell[1] += exp
        cell[2] |= int(est)


def shadow_hourly(
    plan: Plan,
    hourly: Iterable[tuple[str, int, int, int]],
    covered: Mapping[str, set[int]],
) -> Shadow:
    """Shadowed hourly energy from ``(device, ts, import, export)`` of the ``hourly`` channel.

    ``covered[device]`` holds the UTC hour starts in which the device has other channels' data.
    """
    out: Shadow = {}
    for device, ts, imp, exp in hourly:
        hours = covered.get(device)
        if hours and ts // 3600 * 3600 in hours:
            acc = out.setdefault((device, plan.key(ts)), [0, 0])
            acc[0] += imp
            acc[1] += exp
    return out


def rows(
    plan: Plan,
    query: EnergyQuery,
    cells: Cells,
    shadow: Shadow | None = None,
) -> list[EnergyRow]:
    """Group ``cells`` as the query asks and label the buckets in local time."""
    return build_rows(plan, grouped_flat(query, cells, shadow))


def grouped_flat(query: EnergyQuery, cells: Cells, shadow: Shadow | None = None) -> list[Flat]:
    """Group ``cells`` as the query asks: the finished rows, in the documented order."""
    if query.group == "channel":
        grouped: Grouped = {(k, d, c): v for (d, c, k), v in cells.items()}
    else:
        grouped = _grouped(cells, shadow or {}, by_device=query.group == "device")
    return in_order(grouped)


def in_order(grouped: Grouped) -> list[Flat]:
    """Finished rows in the documented order: keys grow with time, so (key, device, channel)."""
    order = sorted(grouped, key=lambda g: (g[0], g[1] or "", g[2] or ""))
    flat: list[Flat] = []
    for k, d, c in order:
        imp, exp, est = grouped[(k, d, c)]
        flat.append((k, d, c, imp, exp, est))
    return flat


def names_rules_apply(pairs: Iterable[tuple[str, str]]) -> bool:
    """Whether the "Names" rules can change a sum over these ``(device, channel)`` pairs: a device
    has a part ``p/q`` beside its whole ``p``, or the ``hourly`` channel beside another channel.
    Otherwise a ``device``/``total`` sum (and a total over channels) is the plain sum of the
    channels' cells, which a backend may compute in the database."""
    per_device = _per_device(pairs)
    return any(
        (HOURLY in chans and len(chans) > 1) or any(parent(c) in chans for c in chans)
        for chans in per_device.values()
    )


def hourly_beside_others(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """The devices among ``pairs`` whose ``hourly`` channel is beside another channel: those whose
    sums need the shadowed ``hourly`` energy (:func:`shadow_hourly`)."""
    return {d for d, chans in _per_device(pairs).items() if HOURLY in chans and len(chans) > 1}


def _per_device(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for device, channel in pairs:
        out.setdefault(device, set()).add(channel)
    return out


Columns: TypeAlias = tuple[
    Sequence[int], Sequence[str | None], Sequence[str | None], Sequence[int], Sequence[int],
    Sequence[int],
]  # fmt: skip
"""Finished rows column by column, in the documented order: ``(keys, devices, channels, imports,
exports, estimated)`` (an :class:`~kilowatch.query.table.EnergyTable`'s)."""


def channel_totals(columns: Columns, shadow: Shadow | None = None) -> list[Flat]:
    """The per-bucket totals of rows grouped by channel, by the "Names" rules: the rows the same
    query grouped by ``total`` answers (a meter's parts beside their whole count once, the
    ``hourly`` channel only in hours without other channels' data).

    ``shadow``: the ``hourly`` energy not to count (:func:`shadow_hourly`), which only the store
    can compute (it needs hours); needed for the devices of :func:`hourly_beside_others`.
    Column by column: the per-row work is C (``map``, ``compress``, ``sum``); a month of 20
    three-phase meters by hour is 57 600 rows.
    """
    keys, devices, channels = columns[:3]
    pairs = set(zip(devices, channels, strict=True))
    per_device = _per_device((d, c) for d, c in pairs if d is not None and c is not None)
    parts = {(d, c) for d, c in pairs if c is not None and parent(c) in per_device.get(d or "", ())}
    drop = list(map(parts.__contains__, zip(devices, channels, strict=True)))
    cuts: dict[int, list[int]] = {}
    if shadow:
        imports, exports = columns[3], columns[4]
        for i in itertools.compress(range(len(keys)), map(HOURLY.__eq__, channels)):
            cut = shadow.get((devices[i] or "", keys[i]))
            if cut is None:
                continue
            if cut[0] == imports[i] and cut[1] == exports[i]:
                drop[i] = True  # entirely measured by the device's other channels
                continue
            acc = cuts.setdefault(keys[i], [0, 0])
            acc[0] += cut[0]
            acc[1] += cut[1]
    return _sums(columns, list(map(operator.not_, drop)) if any(drop) else None, cuts)


def bucket_sums(columns: Columns) -> list[Flat]:
    """Per bucket, the plain sums of the rows (``estimated`` when any row is): the totals of
    rows whose sums no "Names" rule changes (rows by device or total, or by channel when
    :func:`names_rules_apply` is false for their channels)."""
    return _sums(columns, None, {})


def _sums(columns: Columns, keep: list[bool] | None, cuts: Mapping[int, list[int]]) -> list[Flat]:
    """Per bucket (a run of equal keys), the sums of the rows ``keep`` selects (all: ``None``),
    less ``cuts[key]``; buckets without a selected row are left out.

    Prefix sums (``accumulate``) differenced at the runs' bounds: C loops over the rows and over
    the buckets alike (a year by hour is 8 760 buckets of one or two rows each)."""
    keys, _, _, imports, exports, estimated = columns
    if not keys:
        return []
    if keep is not None:
        imports, exports, estimated = (
            list(map(operator.mul, column, keep)) for column in (imports, exports, estimated)
        )
    distinct = sorted(set(keys))
    los = list(map(bisect.bisect_left, itertools.repeat(keys), distinct))
    his = [*los[1:], len(keys)]

    def per_bucket(column: Sequence[int]) -> list[int]:
        prefix = [0, *itertools.accumulate(column)]
        return list(map(operator.sub, map(prefix.__getitem__, his), map(prefix.__getitem__, los)))

    flags = map(int, map(bool, per_bucket(estimated)))
    n = len(distinct)
    nones = (itertools.repeat(None, n), itertools.repeat(None, n))
    out: list[Flat] = list(
        zip(distinct, *nones, per_bucket(imports), per_bucket(exports), flags, strict=True)
    )
    if cuts:
        at = dict(zip(distinct, range(len(distinct)), strict=True))
        for k, (cut_imp, cut_exp) in cuts.items():  # a cut's bucket holds its hourly row
            _, d, c, imp, exp, est = out[at[k]]
            out[at[k]] = (k, d, c, imp - cut_imp, exp - cut_exp, est)
    if keep is not None:
        out = list(itertools.compress(out, per_bucket(keep)))
    return out


def build_rows(plan: Plan, flat: Sequence[Flat]) -> list[EnergyRow]:
    """:class:`EnergyRow` s of ``flat`` rows already in the documented order (start, device,
    channel).

    The per-row work is done by C loops (``map``), not Python bytecode: every bucket's local start
    and end are converted once (an end is the next bucket's start), and the rows are filled column
    by column. A year of hours is 8 760 rows; building them one ``EnergyRow(...)`` at a time cost
    more than the database query.
    """
    if not flat:
        return []
    keys, devices, channels, imps, exps, ests = zip(*flat, strict=True)
    distinct = sorted(set(keys))
    los, his = zip(*plan.periods(distinct), strict=True)
    instants = set(los).union(his)
    local = dict(zip(instants, map(datetime.fromtimestamp, instants, repeat(plan.tz)), strict=True))
    starts = dict(zip(distinct, map(local.__getitem__, los), strict=True))
    ends = dict(zip(distinct, map(local.__getitem__, his), strict=True))
    columns = (
        devices,
        channels,
        map(starts.__getitem__, keys),
        map(ends.__getitem__, keys),
        map(truediv, imps, repeat(1000)),
        map(truediv, exps, repeat(1000)),
        map(bool, ests),
    )
    return _fill(len(keys), columns)


_FIELDS = tuple(f.name for f in fields(EnergyRow))
_SETTERS: tuple[Callable[[Any, Any], None], ...] = tuple(
    getattr(EnergyRow.__dict__.get(name), "__set__", None)  # type: ignore[misc]
    for name in _FIELDS
)
_FAST_FILL = getattr(EnergyRow, "__slots__", ()) == _FIELDS and all(_SETTERS)
"""Rows can be filled through their slot descriptors (what the frozen ``__init__`` does through
``object.__setattr__``, field by field, for each row): true while EnergyRow is a slots dataclass."""


def _fill(n: int, columns: Sequence[Iterable[Any]]) -> list[EnergyRow]:
    if not _FAST_FILL:  # EnergyRow changed shape: the plain constructor is always right
        return [EnergyRow(*values) for values in zip(*columns, strict=True)]
    out: list[EnergyRow] = list(map(object.__new__, repeat(EnergyRow, n)))
    drain = deque[None](maxlen=0).extend
    for set_, column in zip(_SETTERS, columns, strict=True):
        drain(map(set_, out, column))
    return out


def _grouped(cells: Cells, shadow: Shadow, *, by_device: bool) -> Grouped:
    per_device = _per_device((device, channel) for device, channel, _ in cells)
    out: Grouped = {}
    for (device, channel, key), (imp, exp, est) in cells.items():
        p = parent(channel)
        if p is not None and p in per_device[device]:
            continue
        if channel == HOURLY:
            cut = shadow.get((device, key))
            if cut is not None:
                if cut[0] == imp and cut[1] == exp:
                    continue  # entirely measured by the device's other channels
                imp, exp = imp - cut[0], exp - cut[1]
        gkey = (key, device if by_device else None, None)
        acc = out.get(gkey)
        if acc is None:
            out[gkey] = [imp, exp, est]
        else:
            acc[0] += imp
            acc[1] += exp
            acc[2] |= est
    return out


__all__ = [
    "HOURLY",
    "Cell",
    "Cells",
    "Columns",
    "Flat",
    "Grouped",
    "Rollup",
    "Shadow",
    "add",
    "bucket_sums",
    "build_rows",
    "channel_totals",
    "coarser",
    "grouped_flat",
    "hourly_beside_others",
    "in_order",
    "names_rules_apply",
    "parent",
    "regroup",
    "rows",
    "selected",
    "shadow_hourly",
    "sum_deltas",
]
