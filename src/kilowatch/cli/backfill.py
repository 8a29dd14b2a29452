"""``kilowatch backfill``: measured energy from meters' own history for the slots gaps left
estimated (docs/backfill.md).

A thin shell over :func:`kilowatch.fleet.history.backfill_fleet`: pick registered devices, reach
each through the registry's ``open_rpc`` (LAN, or MQTT with ``--broker``) only when it has
estimated slots in the range, print one row per device, exit 1 when any device failed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import aiohttp
import orjson
import typer
from rich.console import Console
from rich.table import Table

from kilowatch.cli.energy import parse_when
from kilowatch.cli.fleet_profiles import broker_client
from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError, FleetError
from kilowatch.fleet.history import CONCURRENCY, BackfillReport, backfill_fleet
from kilowatch.fleet.registry import open_rpc
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.query.periods import zone
from kilowatch.service.config import Settings, load_settings
from kilowatch.store.protocol import Registration

HELP = (
    "Replace the estimated energy a gap left (MQTT or kilowatch down: the gap's energy spread "
    "evenly) with what the meters measured, from their own one-minute history (EMData on a Pro "
    "3EM / 3EM-63, EM1Data on a Pro EM / EM Gen3), per phase and in total. Only slots whose 15 "
    "minutes the device still holds are replaced; the rest stay estimated. A second run changes "
    "nothing. Devices are the registry's (kilowatch fleet discover), by id (globs allowed) or "
    "--all; a device is contacted only when it has estimated slots in the range. --from is "
    "inclusive, --to exclusive (a date or a date and time, in the configured zone); default: "
    "the last 7 days, up to 2 minutes ago. Exit 1 when any device failed.\n\n"
    "Examples:\n\n"
    "kilowatch backfill shellypro3em-a0b1c2d3e4f5\n\n"
    "kilowatch backfill --all --from 2026-03-01 --to 2026-03-08 --format json\n\n"
    "kilowatch backfill 'shellypro*' --broker mqtt://kilowatch:secret@127.0.0.1:1883"
)
FORMATS = ("table", "json")
DEFAULT_DAYS = 7
SETTLE_S = 120
"""Slots ending less than this long ago are left for a later run: the device's last readings of
them may still be on their way to the store (docs/backfill.md)."""


def time_range(
    start: str | None, end: str | None, settings: Settings, *, now: float
) -> tuple[int, int]:
    """``[start, end)`` in unix seconds from ``--from``/``--to`` (default: the last 7 days), never
    later than ``now`` minus :data:`SETTLE_S`."""
    tz = zone(settings.tz)
    last = int(now) - SETTLE_S
    if end is not None:
        last = min(last, int(parse_when(end, "--to", tz).timestamp()))
    first = (
        int(parse_when(start, "--from", tz).timestamp())
        if start is not None
        else last - DEFAULT_DAYS * 86400
    )
    if first >= last:
        shown = datetime.fromtimestamp(last, tz).isoformat(timespec="minutes")
        raise ConfigError(f"empty range: --from must come before --to (and before {shown})")
    return first, last


def pick(registrations: Sequence[Registration], patterns: Sequence[str]) -> list[Registration]:
    """The registrations whose id matches any of ``patterns`` (globs, case-insensitive), in the
    registry's order; :class:`FleetError` for a pattern that matches none."""
    picked: dict[str, Registration] = {}
    for pattern in patterns:
        found = [r for r in registrations if fnmatch.fnmatchcase(r.device.lower(), pattern.lower())]
        if not found:
            raise FleetError(
                pattern,
                "no registered device has this id; kilowatch fleet list shows the registry, "
                "kilowatch fleet discover fills it",
            )
        picked |= {r.device: r for r in found}
    return [r for r in registrations if r.device in picked]


async def run(
    settings: Settings,
    patterns: Sequence[str],
    *,
    everything: bool,
    start: int,
    end: int,
    broker: str | None,
    concurrency: int,
) -> list[BackfillReport]:
    """Backfill the chosen registered devices over ``[start, end)``."""
    box = SecretBox.in_data_dir(settings.data_dir)
    async with open_existing(settings.store_url) as store:
        registry = await store.registry()
        targets = list(registry) if everything else pick(registry, patterns)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            broker_client(broker, settings) as mqtt,
        ):

            def opener(reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
                return open_rpc(reg, secrets=box, session=session, mqtt=mqtt)

            return await backfill_fleet(
                store, targets, opener, start=start, end=end, concurrency=concurrency
            )


def render(
    reports: Sequence[BackfillReport], start: int, end: int, tz: str, console: Console
) -> None:
    """One row per device, then the totals."""
    local = zone(tz)
    first, last = (
        datetime.fromtimestamp(t, local).isoformat(timespec="minutes") for t in (start, end)
    )
    span = f"{first} to {last}"
    table = Table(title=f"Backfill {span}")
    for column in ("device", "estimated", "replaced", "left", "calls", "history", "note / error"):
        table.add_column(column, overflow="fold")
    for r in reports:
        table.add_row(
            r.device,
            str(r.estimated),
            str(r.replaced),
            str(r.left),
            str(r.calls),
            ", ".join(r.components),
            f"[red]{r.error}[/red]" if r.error is not None else (r.note or ""),
        )
    console.print(table)
    failed = sum(1 for r in reports if r.failed)
    console.print(
        f"{len(reports)} devices: {sum(r.replaced for r in reports)} slots replaced, "
        f"{sum(r.left for r in reports)} left estimated, {failed} failed"
    )


def register(app: typer.Typer) -> None:
    """Add ``backfill`` to ``app``."""

    @app.command("backfill", help=HELP)
    def backfill_(
        devices: Annotated[
            list[str] | None, typer.Argument(help="Registered device ids (globs allowed).")
        ] = None,
        start: str | None = typer.Option(None, "--from", help="Start (inclusive)."),
        end: str | None = typer.Option(None, "--to", help="End (exclusive)."),
        everything: bool = typer.Option(False, "--all", help="Every registered device."),
        concurrency: int = typer.Option(
            CONCURRENCY, "--concurrency", help="Devices worked on at once."
        ),
        fmt: str = typer.Option("table", "--format", help="table or json."),
        broker: str | None = typer.Option(
            None,
            "--broker",
            help="mqtt[s]://user:pass@host:port to reach devices registered with transport mqtt.",
        ),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
        data_dir: str | None = typer.Option(
            None, "--data-dir", help="kilowatch's data dir (default: as serve)."
        ),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
        if not devices and not everything:
            raise ConfigError("name the devices to backfill (ids, globs allowed) or pass --all")
        settings = load_settings(
            {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
        )
        first, last = time_range(start, end, settings, now=time.time())
        reports = asyncio.run(
            run(
                settings,
                devices or [],
                everything=everything,
                start=first,
                end=last,
                broker=broker,
                concurrency=concurrency,
            )
        )
        if fmt == "json":
            body = {"from": first, "to": last, "devices": [r.to_json() for r in reports]}
            typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        else:
            render(reports, first, last, settings.tz, Console(width=160))
        if any(r.failed for r in reports):
            raise typer.Exit(1)


__all__ = ["FORMATS", "HELP", "SETTLE_S", "pick", "register", "render", "run", "time_range"]
