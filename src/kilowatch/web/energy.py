"""The energy question as the API and pages ask it: check parameters, query, add cost, render.

Parameters are the CLI's: ``by`` (15min, hour, day, month), ``tz``, ``from`` (inclusive), ``to``
(exclusive), ``device``, ``channel``, ``group``. ``from``/``to`` are dates (local midnight in
``tz``) or ISO datetimes (naive ones are local time in ``tz``). Missing ones get the range
:func:`kilowatch.query.ranges.query_range` gives the CLI too: the current day (by 15min/hour),
month (by day) or year (by month), or one such period from ``from``.
"""

from __future__ import annotations

import csv
import io
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, cast, get_args
from zoneinfo import ZoneInfo

import orjson

from kilowatch.errors import ConfigError
from kilowatch.query.energy import Bucket, EnergyQuery, EnergyRow, Grouping
from kilowatch.query.ranges import period_start, query_range, shift_period
from kilowatch.query.table import EnergyTable
from kilowatch.query.tariff import SlotAmount, Tariff, cost
from kilowatch.store.protocol import Store
from kilowatch.web.problems import bad_param
from kilowatch.web.site import zone

MAX_SPAN = {
    "15min": timedelta(days=62),
    "hour": timedelta(days=367),
    "day": timedelta(days=3700),
    "month": timedelta(days=36600),
}
"""Largest ``to - from`` per bucket size: bounds the rows of one request (~6 000 to 9 000)."""
MAX_FILTER_ITEMS = 1000


def parse_by(value: str) -> Bucket:
    if value not in get_args(Bucket):
        raise bad_param("by", f"{value!r} is not one of: 15min, hour, day, month")
    return cast("Bucket", value)


def parse_group(value: str) -> Grouping:
    if value not in get_args(Grouping):
        raise bad_param("group", f"{value!r} is not one of: channel, device, total")
    return cast("Grouping", value)


def parse_tz(value: str) -> ZoneInfo:
    try:
        return zone(value)
    except ConfigError as err:
        raise bad_param("tz", str(err)) from None


def parse_instant(name: str, value: str, tz: ZoneInfo) -> datetime:
    """A date (local midnight) or ISO datetime (naive = local time) as an aware datetime."""
    value = value.strip()
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            dt = datetime(d.year, d.month, d.day, tzinfo=tz)
        elif len(value) == 7:  # YYYY-MM
            d = date.fromisoformat(value + "-01")
            dt = datetime(d.year, d.month, 1, tzinfo=tz)
        else:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_param(name, f"{value!r} is not a date (2026-03-29) or ISO datetime") from None
    if not 1970 <= dt.year <= 9000:
        raise bad_param(name, f"{value!r} is outside the years 1970–9000")
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=tz)


def _split(values: Sequence[str], name: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    if len(out) > MAX_FILTER_ITEMS:
        raise bad_param(name, f"at most {MAX_FILTER_ITEMS} values")
    return tuple(dict.fromkeys(out))


def build_query(
    *,
    by: str,
    tz: str,
    start: str | None,
    end: str | None,
    devices: Sequence[str] = (),
    channels: Sequence[str] = (),
    group: str = "channel",
    now: float,
) -> EnergyQuery:
    """Check every parameter (a 400 problem naming the bad one) and build the store query."""
    bucket = parse_by(by)
    grouping = parse_group(group)
    zone_ = parse_tz(tz)
    begin, finish = query_range(
        bucket,
        zone_,
        now=now,
        start=None if start is None else parse_instant("from", start, zone_),
        end=None if end is None else parse_instant("to", end, zone_),
    )
    if finish <= begin:
        raise bad_param("to", f"{finish.isoformat()} is not after from ({begin.isoformat()})")
    if finish - begin > MAX_SPAN[bucket]:
        raise bad_param(
            "to",
            f"the range is longer than {MAX_SPAN[bucket].days} days for by={bucket}; "
            "use larger buckets",
        )
    return EnergyQuery(
        by=bucket,
        tz=tz.strip(),
        start=begin,
        end=finish,
        devices=_split(devices, "device"),
        channels=_split(channels, "channel"),
        group=grouping,
    )


@dataclass(frozen=True, slots=True)
class Report:
    """An energy answer with its totals and, when asked for, its cost.

    The totals are the store's (:class:`EnergyTable`): each meter's energy counted once, by the
    rules of the ``total`` grouping, not the sums of the rows (rows by channel may hold a meter
    and its phases)."""

    query: EnergyQuery
    table: EnergyTable
    costs: list[float] | None
    """Cost of each row (same order), when asked for."""
    currency: str | None
    total_cost: float | None = None
    """Cost of the totals, when asked for."""

    @property
    def rows(self) -> list[EnergyRow]:
        return self.table.rows()

    @property
    def total_wh(self) -> float:
        return self.table.total_import_mwh / 1000

    @property
    def total_returned_wh(self) -> float:
        return self.table.total_export_mwh / 1000

    def to_json(self) -> dict[str, Any]:
        q = self.query
        rows: Any
        if self.costs is None:
            # rendered from the table's columns, without a row object per bucket (see
            # kilowatch.query.table): for a year of hours several times faster
            rows = orjson.Fragment(self.table.json_rows())
        else:
            rows = [r.to_json() for r in self.rows]
            for row, c in zip(rows, self.costs, strict=True):
                row["cost"] = round(c, 6)
        out: dict[str, Any] = {
            "by": q.by,
            "tz": q.tz,
            "from": q.start.isoformat(),
            "to": q.end.isoformat(),
            "group": q.group,
            "devices": list(q.devices),
            "channels": list(q.channels),
            "unit": "Wh",
            "rows": rows,
            "totals": {
                "energy_wh": self.total_wh,
                "returned_energy_wh": self.total_returned_wh,
                "estimated": self.table.any_estimated,
            },
        }
        if self.total_cost is not None:
            out["totals"]["cost"] = round(self.total_cost, 6)
            out["currency"] = self.currency
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = [
            "device",
            "channel",
            "start",
            "end",
            "energy_wh",
            "returned_energy_wh",
            "estimated",
        ]
        if self.costs is not None:
            header.append("cost")
        writer.writerow(header)
        for i, r in enumerate(self.rows):
            line = [
                r.device or "",
                r.channel or "",
                r.start.isoformat(),
                r.end.isoformat(),
                f"{r.energy_wh:.3f}",
                f"{r.returned_energy_wh:.3f}",
                "true" if r.estimated else "false",
            ]
            if self.costs is not None:
                line.append(f"{self.costs[i]:.4f}")
            writer.writerow(line)
        return buf.getvalue()


async def row_costs(
    store: Store, query: EnergyQuery, rows: Sequence[EnergyRow], tariff: Tariff
) -> list[float]:
    """Cost of each row. Time-of-use prices need energy per 15-minute slot: more queries fetch the
    slots and, for ranges whose slots retention dropped, the hours (priced at their start)."""
    tz = zone(query.tz)
    if not tariff.periods or query.by == "15min":
        return [
            cost(
                [SlotAmount(int(r.start.timestamp()), r.energy_wh, r.returned_energy_wh)],
                tariff,
                tz,
            )
            for r in rows
        ]
    pieces = await _priced_pieces(store, query)
    totals = [0.0] * len(rows)
    for i, piece in _assign(rows, pieces):
        totals[i] += cost(
            [SlotAmount(int(piece.start.timestamp()), piece.energy_wh, piece.returned_energy_wh)],
            tariff,
            tz,
        )
    return totals


async def _priced_pieces(store: Store, query: EnergyQuery) -> list[EnergyRow]:
    """The 15-minute rows of the query's energy; an hour whose slots do not add up to it (they
    were dropped by retention) is one piece of its own."""

    def at(by: Bucket) -> EnergyQuery:
        return EnergyQuery(
            by=by, tz=query.tz, start=query.start, end=query.end,
            devices=query.devices, channels=query.channels, group=query.group,
        )  # fmt: skip

    fine = await store.energy(at("15min"))
    hours = await store.energy(at("hour"))
    inside: dict[int, list[EnergyRow]] = defaultdict(list)
    for i, slot in _assign(hours, fine):
        inside[i].append(slot)
    pieces: list[EnergyRow] = []
    for i, hour in enumerate(hours):
        slots = inside.get(i, [])
        whole = (
            abs(sum(s.energy_wh for s in slots) - hour.energy_wh) < 1e-6
            and abs(sum(s.returned_energy_wh for s in slots) - hour.returned_energy_wh) < 1e-6
        )
        pieces += slots if whole else [hour]
    return pieces


def _assign(rows: Sequence[EnergyRow], parts: Sequence[EnergyRow]) -> list[tuple[int, EnergyRow]]:
    """Each of ``parts`` with the index of the row of the same device and channel whose period
    holds its start (rows sorted by start; parts outside every row are left out)."""
    starts: dict[tuple[str | None, str | None], list[float]] = defaultdict(list)
    indices: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        starts[(r.device, r.channel)].append(r.start.timestamp())
        indices[(r.device, r.channel)].append(i)
    out: list[tuple[int, EnergyRow]] = []
    for part in parts:
        key = (part.device, part.channel)
        ts = part.start.timestamp()
        pos = bisect_right(starts.get(key, []), ts) - 1
        if pos >= 0:
            i = indices[key][pos]
            if ts < rows[i].end.timestamp():
                out.append((i, part))
    return out


async def report(store: Store, query: EnergyQuery, *, tariff: Tariff | None = None) -> Report:
    table = await store.energy_table(query)
    if tariff is None:
        return Report(query=query, table=table, costs=None, currency=None)
    costs = await row_costs(store, query, table.rows(), tariff)
    total_cost = sum(costs)
    if table.totals is not None:
        # the rows count some energy twice (a meter and its phases): price the totals, which
        # count it once, as the total grouping would
        totals = table.bucket_totals().rows()
        total_cost = sum(await row_costs(store, replace(query, group="total"), totals, tariff))
    return Report(
        query=query, table=table, costs=costs, currency=tariff.currency, total_cost=total_cost
    )


__all__ = [
    "Report",
    "build_query",
    "parse_instant",
    "period_start",
    "report",
    "row_costs",
    "shift_period",
]
