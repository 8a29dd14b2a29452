"""``kilowatch devices``: every device the store knows, with firmware, state and channels."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from kilowatch.cli.stores import open_existing
from kilowatch.errors import KilowatchError
from kilowatch.service.config import resolve_store_url
from kilowatch.store import DeviceRecord

HELP = (
    "List the devices kilowatch has seen: id, label or name, room, model, firmware, online state, "
    "last seen and channels.\n\n"
    "Examples:\n\n"
    "kilowatch devices\n\n"
    "kilowatch devices --format json --store redis://localhost:6379/0"
)
FORMATS = ("table", "json", "csv")


def device_json(d: DeviceRecord) -> dict[str, Any]:
    out = asdict(d)
    out["channels"] = list(d.channels)
    return out


async def fetch(url: str) -> list[DeviceRecord]:
    async with open_existing(url) as store:
        return await store.devices()


def render_csv(devices: list[DeviceRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = [device_json(d) for d in devices]
    columns = list(device_json(DeviceRecord(device="")).keys())
    writer.writerow(columns)
    for row in rows:
        row["channels"] = " ".join(row["channels"])
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return buf.getvalue().rstrip("\n")


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def render_table(devices: list[DeviceRecord], console: Console) -> None:
    table = Table(title=f"Devices ({len(devices)})")
    for col in (
        "device",
        "name",
        "room",
        "model",
        "firmware",
        "online",
        "last seen (UTC)",
        "channels",
    ):
        table.add_column(col, overflow="fold")
    for d in devices:
        online = "" if d.online is None else ("yes" if d.online else "no")
        table.add_row(
            d.device,
            d.label or d.name or "",
            d.room or "",
            d.model or "",
            d.fw_ver or "",
            online,
            _when(d.last_seen),
            " ".join(d.channels),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``devices`` command to ``app``."""

    @app.command("devices", help=HELP)
    def devices(
        fmt: str = typer.Option("table", "--format", help="table, json or csv."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: settings)."),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        if fmt not in FORMATS:
            raise KilowatchError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
        url = resolve_store_url(store, config_file=Path(config) if config else None)
        found = asyncio.run(fetch(url))
        if fmt == "json":
            typer.echo(orjson.dumps([device_json(d) for d in found]).decode())
        elif fmt == "csv":
            typer.echo(render_csv(found))
        else:
            render_table(found, Console(width=160))
