"""What the Energy page shows, as one table: buckets, series, totals, untracked energy, cost.

The page draws an :class:`EnergyView` (the chart and the table under it) and
``GET /api/v1/energy.csv`` writes the same view as CSV, so a download holds exactly the numbers on
the screen.

The view's ``group`` is the page's "Show" choice: ``total`` (one series), ``device`` (stacked by
device) or ``channel`` (by channel / phase). With grid meters set (Settings) and no device or
channel filter, the ``total`` and ``device`` views split the grid meters' energy into what the
sub-meters behind them measured and the **untracked** rest: per bucket,
``(grid import - grid export) - sum over sub-meters of (import - export)``. It is net energy
(consumption no sub-meter sees), shown as it is: a negative value means the sub-meters read more
than the grid meter in that bucket (metering error, or a sub-meter that is not behind it); it is
never clamped, so the CSV's columns add up. The totals (Import, Export, cost) are the grid
meters' alone.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kilowatch.query.energy import Bucket, EnergyQuery, EnergyRow
from kilowatch.query.table import EnergyTable
from kilowatch.query.tariff import Tariff
from kilowatch.store.protocol import Store
from kilowatch.web.energy import Report, parse_tz, report, shift_period
from kilowatch.web.site import SiteSettings

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
"""English names, whatever the server's locale (``strftime`` would follow it)."""
UNTRACKED = "Untracked"
SUB_METERS = "Sub-meters"
WH_DIGITS = 3
"""Wh in the CSV: the store keeps mWh, so three decimals lose nothing."""
COST_DIGITS = 4


@dataclass(slots=True)
class Series:
    """One stacked series: import and export Wh per bucket, estimated buckets."""

    name: str
    imports: list[float]
    exports: list[float]
    estimated: list[bool]
    untracked: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "import": self.imports,
            "export": self.exports,
            "estimated": self.estimated,
        }
        if self.untracked:
            out["untracked"] = True
        return out


@dataclass(slots=True)
class EnergyView:
    """The Energy page's numbers for one query (``query.group`` is the view)."""

    query: EnergyQuery
    starts: list[datetime]
    """Local start of every bucket of the period, with or without data."""
    series: list[Series]
    total_import: list[float]
    total_export: list[float]
    estimated: list[bool]
    total_wh: float
    total_returned_wh: float
    grid_meters: tuple[str, ...] = ()
    """The grid meters whose energy the totals are (the untracked split is shown), or ``()``."""
    costs: list[float] | None = None
    """Cost of each bucket's totals, when the site has a tariff."""
    total_cost: float | None = None
    currency: str | None = None
    untracked: list[float] | None = field(default=None)
    """Net Wh no sub-meter measured, per bucket (grid meters only)."""

    @property
    def ends(self) -> list[datetime]:
        return [*self.starts[1:], self.query.end.astimezone(parse_tz(self.query.tz))][
            : len(self.starts)
        ]

    @property
    def labels(self) -> list[str]:
        """Short bucket names for the chart's axis: ``13:00``, ``3``, ``Mar``."""
        return [_label(self.query.by, t) for t in self.starts]

    @property
    def titles(self) -> list[str]:
        """Bucket names that stand alone (tooltips, the table): ``Tue 3 Dec``, ``March 2026``."""
        return [_title(self.query.by, t) for t in self.starts]

    def chart_json(self) -> dict[str, Any]:
        """What ``static/app.js`` draws (embedded in the page as JSON)."""
        return {
            "by": self.query.by,
            "labels": self.labels,
            "titles": self.titles,
            "starts": [t.isoformat() for t in self.starts],
            "series": [s.to_json() for s in self.series],
            "total_import": self.total_import,
            "total_export": self.total_export,
            "estimated": self.estimated,
            "untracked": self.untracked,
            "grid_meters": list(self.grid_meters),
            "unit": "Wh",
        }

    def csv_header(self) -> list[str]:
        header = ["start", "end", "import_wh", "export_wh", "estimated"]
        if self.costs is not None:
            header.append(f"cost_{(self.currency or '').lower()}".rstrip("_"))
        if self.untracked is not None:
            header.append("untracked_wh")
        for s in self.series:
            if s.untracked:
                continue
            header.append(f"{s.name} import_wh")
            if any(s.exports):
                header.append(f"{s.name} export_wh")
        return header

    def csv_rows(self) -> list[list[str]]:
        """One row per bucket, every bucket of the period (a bucket without data has zeros)."""
        out: list[list[str]] = []
        shown = [s for s in self.series if not s.untracked]
        for i, (start, end) in enumerate(zip(self.starts, self.ends, strict=True)):
            line = [
                start.isoformat(),
                end.isoformat(),
                _wh(self.total_import[i]),
                _wh(self.total_export[i]),
                "true" if self.estimated[i] else "false",
            ]
            if self.costs is not None:
                line.append(f"{self.costs[i]:.{COST_DIGITS}f}")
            if self.untracked is not None:
                line.append(_wh(self.untracked[i]))
            for s in shown:
                line.append(_wh(s.imports[i]))
                if any(s.exports):
                    line.append(_wh(s.exports[i]))
            out.append(line)
        return out

    def to_csv(self) -> str:
        """The view as CSV: a header row, then :meth:`csv_rows` (times local, with offset)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header())
        writer.writerows(self.csv_rows())
        return buf.getvalue()

    def filename(self) -> str:
        """``kilowatch-energy-2026-03-15-hour-total.csv``: the period's first day, bucket, view."""
        first = self.query.start.astimezone(parse_tz(self.query.tz)).date().isoformat()
        return f"kilowatch-energy-{first}-{self.query.by}-{self.query.group}.csv"


def _wh(value: float) -> str:
    text = f"{value:.{WH_DIGITS}f}"
    return "0.000" if text == "-0.000" else text


def _label(by: Bucket, t: datetime) -> str:
    if by in ("15min", "hour"):
        return t.strftime("%H:%M")
    if by == "day":
        return str(t.day)
    return MONTHS[t.month - 1]


def _title(by: Bucket, t: datetime) -> str:
    day = f"{WEEKDAYS[t.weekday()]} {t.day} {MONTHS[t.month - 1]}"
    if by in ("15min", "hour"):
        return f"{day} {t.strftime('%H:%M')}"
    if by == "day":
        return day
    return f"{MONTH_NAMES[t.month - 1]} {t.year}"


def buckets(by: Bucket, start: datetime, end: datetime) -> list[datetime]:
    """Every bucket start in ``[start, end)`` (local), including buckets without data."""
    out: list[datetime] = []
    tz = start.tzinfo
    if by in ("15min", "hour"):
        step = 900 if by == "15min" else 3600
        t = start.timestamp()
        while t < end.timestamp():
            out.append(datetime.fromtimestamp(t, UTC).astimezone(tz))
            t += step
        return out
    cur = start
    while cur < end:
        out.append(cur)
        cur = shift_period("hour" if by == "day" else "day", cur, 1)
    return out


def _frame(query: EnergyQuery) -> tuple[list[datetime], dict[int, int]]:
    tz = parse_tz(query.tz)
    starts = buckets(query.by, query.start.astimezone(tz), query.end.astimezone(tz))
    return starts, {int(t.timestamp()): i for i, t in enumerate(starts)}


def _add(series: dict[str, Series], key: str, n: int, i: int, row: EnergyRow) -> None:
    s = series.get(key)
    if s is None:
        s = series[key] = Series(key, [0.0] * n, [0.0] * n, [False] * n)
    s.imports[i] += row.energy_wh
    s.exports[i] += row.returned_energy_wh
    s.estimated[i] = s.estimated[i] or row.estimated


def _totals(
    rows: list[EnergyRow], index: dict[int, int], n: int
) -> tuple[list[float], list[float], list[bool]]:
    imports, exports, estimated = [0.0] * n, [0.0] * n, [False] * n
    for row in rows:
        i = index.get(int(row.start.timestamp()))
        if i is not None:
            imports[i] += row.energy_wh
            exports[i] += row.returned_energy_wh
            estimated[i] = estimated[i] or row.estimated
    return imports, exports, estimated


def plain_view(rep: Report, names: dict[str, str]) -> EnergyView:
    """Bars per series: import above the axis, export below it, estimated buckets flagged.

    Each bucket's total (the table's Import and Export columns, the tooltip's "Total import") is
    the store's (:meth:`EnergyTable.bucket_totals`): each meter's energy counted once, as in the
    totals of the API, not the sum of the bars."""
    q = rep.query
    starts, index = _frame(q)
    n = len(starts)
    series: dict[str, Series] = {}
    # Stacking a channel with its parts (em:0 with em:0/a, b, c) counts it twice: show the parts.
    with_parts = {
        (r.device, r.channel.split("/", 1)[0]) for r in rep.rows if r.channel and "/" in r.channel
    }
    # The metering script's "hourly" channel measures the same wire as the device's meter: like
    # the store's device totals, count it only where the device has no other channel's energy.
    metered = {(r.device, int(r.start.timestamp())) for r in rep.rows if r.channel != "hourly"}
    for row in rep.rows:
        if q.group == "channel" and (row.device, row.channel) in with_parts:
            continue
        if (
            q.group == "channel"
            and row.channel == "hourly"
            and (row.device, int(row.start.timestamp())) in metered
        ):
            continue
        i = index.get(int(row.start.timestamp()))
        if i is None:
            continue
        if q.group == "total":
            key = "Total"
        elif q.group == "device":
            key = names.get(row.device or "", row.device or "?")
        else:
            key = f"{names.get(row.device or '', row.device or '?')} · {row.channel}"
        _add(series, key, n, i, row)
    imports, exports, estimated = _totals(rep.table.bucket_totals().rows(), index, n)
    return EnergyView(
        query=q,
        starts=starts,
        series=sorted(series.values(), key=lambda s: -sum(s.imports)),
        total_import=imports,
        total_export=exports,
        estimated=estimated,
        total_wh=rep.total_wh,
        total_returned_wh=rep.total_returned_wh,
    )


def grid_view(
    query: EnergyQuery,
    by_device: EnergyTable,
    grid: Report,
    grid_meters: tuple[str, ...],
    names: dict[str, str],
) -> EnergyView:
    """The ``total`` or ``device`` view of a site with grid meters: the sub-meters' series (one
    per device, or one "Sub-meters" series for ``total``) and the untracked rest; the totals are
    the grid meters' (``grid``: the ``total`` grouping of the grid meters)."""
    starts, index = _frame(query)
    n = len(starts)
    series: dict[str, Series] = {}
    sub_net = [0.0] * n
    sub_est = [False] * n
    meters = set(grid_meters)
    for row in by_device.rows():
        i = index.get(int(row.start.timestamp()))
        if i is None or row.device in meters:
            continue
        key = SUB_METERS if query.group == "total" else names.get(row.device or "", "?")
        _add(series, key, n, i, row)
        sub_net[i] += row.energy_wh - row.returned_energy_wh
        sub_est[i] = sub_est[i] or row.estimated
    imports, exports, estimated = _totals(grid.rows, index, n)
    untracked = [round(imports[i] - exports[i] - sub_net[i], 6) for i in range(n)]
    ordered = sorted(series.values(), key=lambda s: -sum(s.imports))
    ordered.append(
        Series(
            UNTRACKED,
            untracked,
            [0.0] * n,
            [a or b for a, b in zip(estimated, sub_est, strict=True)],
            untracked=True,
        )
    )
    return EnergyView(
        query=query,
        starts=starts,
        series=ordered,
        total_import=imports,
        total_export=exports,
        estimated=estimated,
        total_wh=grid.total_wh,
        total_returned_wh=grid.total_returned_wh,
        grid_meters=grid_meters,
        untracked=untracked,
    )


def uses_grid_meters(site: SiteSettings, query: EnergyQuery) -> bool:
    """Whether the view splits the grid meters' energy (see the module's docstring)."""
    return bool(
        site.grid_meters
        and not query.devices
        and not query.channels
        and query.group in ("total", "device")
    )


async def energy_view(
    store: Store, site: SiteSettings, query: EnergyQuery, names: dict[str, str]
) -> EnergyView:
    """The view of ``query`` (its ``group`` is the page's view) on ``site``: series, totals,
    untracked energy with grid meters, and the cost of each bucket when a tariff is set."""
    tariff: Tariff | None = site.tariff if site.has_tariff else None
    if uses_grid_meters(site, query):
        by_device = await store.energy_table(replace(query, group="device"))
        grid = await report(
            store, replace(query, group="total", devices=site.grid_meters), tariff=tariff
        )
        view = grid_view(query, by_device, grid, site.grid_meters, names)
        priced: Report | None = grid if tariff is not None else None
    else:
        view = plain_view(await report(store, query), names)
        priced = (
            await report(store, replace(query, group="total"), tariff=tariff)
            if tariff is not None
            else None
        )
    if priced is not None and priced.costs is not None:
        _, index = _frame(query)
        costs = [0.0] * len(view.starts)
        for row, c in zip(priced.rows, priced.costs, strict=True):
            i = index.get(int(row.start.timestamp()))
            if i is not None:
                costs[i] += c
        view.costs = costs
        view.total_cost = priced.total_cost
        view.currency = priced.currency
    return view


def chart_data(rep: Report, names: dict[str, str]) -> dict[str, Any]:
    """The chart's JSON of a report without grid meters (:func:`plain_view`)."""
    return plain_view(rep, names).chart_json()


__all__ = [
    "UNTRACKED",
    "EnergyView",
    "Series",
    "buckets",
    "chart_data",
    "energy_view",
    "grid_view",
    "plain_view",
    "uses_grid_meters",
]
