"""``kilowatch energy``: energy per 15 minutes, hour, day or month of local time, from the store."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import orjson
import typer
from rich.console import Console
from rich.table import Table

from kilowatch.cli.stores import check_devices, open_existing
from kilowatch.errors import KilowatchError
from kilowatch.query.energy import Bucket, EnergyQuery, EnergyRow
from kilowatch.query.periods import plan, zone
from kilowatch.query.ranges import query_range
from kilowatch.query.table import EnergyTable
from kilowatch.service.config import load_settings, resolve_store_url

HELP = (
    "Energy per bucket of local time (15min, hour, day or month) in a time zone, per channel, "
    "device or in total, imported and exported. --from is inclusive, --to is EXCLUSIVE; both take "
    "a date (local midnight) or a date and time (local, or with an offset). Without --from: the "
    "current day (by 15min or hour), month (by day) or year (by month), as in the web API; "
    "without --to: one such period from --from. Buckets without data are left out. JSON rows: "
    "device, channel, start, end (ISO 8601 local time with offset), energy_wh, "
    "returned_energy_wh, estimated. The table ends with the totals, which count each meter's "
    "energy once whatever --group says (as --group total: a three-phase meter's em:0 and not its "
    "phases again, the hourly script only in hours its device's meter is silent).\n\n"
    "Examples:\n\n"
    "kilowatch energy --by day\n\n"
    "kilowatch energy --by hour --tz Europe/Sofia --from 2026-03-28 --to 2026-03-30\n\n"
    "kilowatch energy --by day --from 2026-03-01 --to 2026-04-01 --group total --format csv\n\n"
    "kilowatch energy --by month --from 2026-01-01 --to 2027-01-01 "
    "--device shellypro3em-a0b1c2d3e4f5 --channel em:0/a --channel em:0/b --format json --store redis://localhost:6379/0"
)
BUCKETS = ("15min", "hour", "day", "month")
GROUPS = ("channel", "device", "total")
FORMATS = ("table", "json", "csv")
COLUMNS = ("device", "channel", "start", "end", "energy_wh", "returned_energy_wh", "estimated")


def parse_when(text: str, flag: str, tz: ZoneInfo) -> datetime:
    """A ``--from``/``--to`` value, ``2026-03-28`` (local midnight) or
    ``2026-03-28T10:00[:00][+02:00]`` (naive: local time in ``tz``), as an aware datetime."""
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=tz)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise KilowatchError(
            f"bad {flag} {text!r}: use a date (2026-03-28) or a date and time (2026-03-28T10:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def build_query(
    *,
    by: str,
    tz: str,
    start: str | None,
    end: str | None,
    devices: list[str],
    channels: list[str],
    group: str,
    now: float,
) -> EnergyQuery:
    """The store query of the command's options; a missing ``--from``/``--to`` gets the range
    the web API gives (:func:`kilowatch.query.ranges.query_range`)."""
    bucket: Bucket = choice(by, BUCKETS, "--by")  # type: ignore[assignment]
    local = zone(tz)
    begin, finish = query_range(
        bucket,
        local,
        now=now,
        start=None if start is None else parse_when(start, "--from", local),
        end=None if end is None else parse_when(end, "--to", local),
    )
    query = EnergyQuery(
        by=bucket,
        tz=local.key,
        start=begin,
        end=finish,
        devices=tuple(devices),
        channels=tuple(channels),
        group=choice(group, GROUPS, "--group"),  # type: ignore[arg-type]
    )
    plan(query.by, query.tz, query.start, query.end)  # an empty range is told before any I/O
    return query


def choice(value: str, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise KilowatchError(f"unknown {flag} {value!r}; use one of: {', '.join(allowed)}")
    return value


async def fetch(url: str, query: EnergyQuery) -> EnergyTable:
    """The answer to ``query`` (rows and totals) from the store at ``url``, which must exist;
    unknown devices in the query are an error, not an empty answer."""
    async with open_existing(url) as store:
        if query.devices:
            check_devices(query.devices, {d.device for d in await store.devices()})
        return await store.energy_table(query)


def render_json(rows: list[EnergyRow]) -> str:
    """A JSON array, one row per line."""
    if not rows:
        return "[]"
    return "[\n" + ",\n".join(orjson.dumps(r.to_json()).decode() for r in rows) + "\n]"


def render_csv(rows: list[EnergyRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        j = r.to_json()
        writer.writerow(
            [
                "" if j[c] is None else str(j[c]).lower() if c == "estimated" else j[c]
                for c in COLUMNS
            ]
        )
    return buf.getvalue().rstrip("\n")


def render_table(answer: EnergyTable, title: str, console: Console) -> None:
    """The rows, then a line of the answer's totals (the store's: each meter counted once)."""
    rows = answer.rows()
    table = Table(title=title)
    for col in ("device", "channel", "start", "end"):
        table.add_column(col, overflow="fold")
    table.add_column("import Wh", justify="right")
    table.add_column("export Wh", justify="right")
    table.add_column("est.", justify="center")
    for r in rows:
        table.add_row(
            r.device or "(all)",
            r.channel or "(all)",
            r.start.isoformat(timespec="minutes"),
            r.end.isoformat(timespec="minutes"),
            f"{r.energy_wh:,.3f}",
            f"{r.returned_energy_wh:,.3f}",
            "*" if r.estimated else "",
        )
    if rows:
        table.add_section()
        table.add_row(
            "total",
            "",
            "",
            "",
            f"{answer.total_import_mwh / 1000:,.3f}",
            f"{answer.total_export_mwh / 1000:,.3f}",
            "*" if answer.any_estimated else "",
        )
    console.print(table)
    if any(r.estimated for r in rows):
        console.print("* part of the energy was spread across a gap in the data (estimated)")


def register(app: typer.Typer) -> None:
    """Add the ``energy`` command to ``app``."""

    @app.command("energy", help=HELP)
    def energy(
        start: str | None = typer.Option(
            None,
            "--from",
            help="Start (inclusive): date or date-time "
            "(default: the start of the current day, month or year, by --by).",
        ),
        end: str | None = typer.Option(
            None,
            "--to",
            help="End (EXCLUSIVE): date or date-time (default: one day, month or year on).",
        ),
        by: str = typer.Option("hour", "--by", help="Bucket: 15min, hour, day or month."),
        tz: str | None = typer.Option(
            None, "--tz", help="IANA time zone (default: settings, else the system's zone)."
        ),
        device: Annotated[
            list[str] | None, typer.Option("--device", help="Only this device (repeatable).")
        ] = None,
        channel: Annotated[
            list[str] | None,
            typer.Option("--channel", help="Only this channel, e.g. pm1:0 or em:0/a (repeatable)."),
        ] = None,
        group: str = typer.Option("channel", "--group", help="channel, device or total."),
        fmt: str = typer.Option("table", "--format", help="table, json or csv."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: settings)."),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        config_file = Path(config) if config else None
        query = build_query(
            by=by,
            tz=tz or load_settings(config_file=config_file).tz,
            start=start,
            end=end,
            devices=device or [],
            channels=channel or [],
            group=group,
            now=time.time(),
        )
        choice(fmt, FORMATS, "--format")
        url = resolve_store_url(store, config_file=config_file)
        answer = asyncio.run(fetch(url, query))
        if fmt == "json":
            typer.echo(render_json(answer.rows()))
        elif fmt == "csv":
            typer.echo(render_csv(answer.rows()))
        else:
            first, last = (t.isoformat(timespec="minutes") for t in (query.start, query.end))
            title = f"Energy by {query.by} ({query.tz}), {first} to {last} (exclusive)"
            render_table(answer, title, Console(width=160))
