"""``kilowatch fleet audit``: who did what to which devices, and how it ended, newest first.

Reads the store's audit log (:meth:`Store.audit`): every fleet action of the CLI
(``cli:<os user>``), the dashboard (``web:<user>``), the API (``api:<token name>``) and the
service. Also :func:`cli_actor`, the actor the CLI's commands record.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import typer
from rich.console import Console
from rich.table import Table

from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError
from kilowatch.service.config import load_settings
from kilowatch.store.audit import devices_text, entry_json
from kilowatch.store.protocol import AuditEntry
from kilowatch.web.site import load_site

HELP = (
    "Show the audit log of fleet actions, newest first: when (in the site's time zone), who "
    "(cli:<os user>, web:<user>, api:<token name>, service), what (fleet.adopt, fleet.apply, "
    "firmware.update, credentials.add...), which devices, the result (started, ok, partial, "
    "failed, halted, refused) and a short detail. An action shows twice: when it started and "
    "how it ended.\n\n"
    "Examples:\n\n"
    "kilowatch fleet audit\n\n"
    "kilowatch fleet audit --device shellypmminig3-ecda3bc4ddb0 --limit 20\n\n"
    "kilowatch fleet audit --action fleet --json"
)
MAX_LIMIT = 10_000
DETAIL_CHARS = 80


def cli_actor() -> str:
    """``cli:<os user>``: who the CLI's audit entries name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no password entry (some containers)
        user = "unknown"
    return f"cli:{user}"


def detail_text(detail: Any, limit: int = DETAIL_CHARS) -> str:
    """``key=value`` pairs of an entry's detail, the link to its start left out, shortened."""
    if not isinstance(detail, dict):
        return ""
    parts = []
    for key, value in detail.items():
        if key == "started":
            continue
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def fetch(
    url: str, default_tz: str, *, limit: int, device: str | None, action: str | None
) -> tuple[list[AuditEntry], str]:
    async with open_existing(url) as store:
        site = await load_site(store, default_tz=default_tz)
        entries = await store.audit(limit=limit, device=device, action=action)
        return entries, site.tz


def render_table(entries: Sequence[AuditEntry], tz: str, console: Console) -> None:
    zone = ZoneInfo(tz)
    table = Table(title=f"Audit ({len(entries)}, newest first, times in {tz})")
    for column in ("time", "actor", "action", "devices", "result", "detail"):
        table.add_column(column, overflow="fold")
    styles = {"ok": "green", "failed": "red", "partial": "yellow", "halted": "red"}
    for e in entries:
        when = datetime.fromtimestamp(e.ts, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        style = styles.get(e.result)
        result = f"[{style}]{e.result}[/{style}]" if style else e.result
        table.add_row(
            when, e.actor, e.action, devices_text(e.devices), result, detail_text(e.detail)
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the ``fleet`` group."""

    @app.command("audit", help=HELP)
    def audit(
        device: str | None = typer.Option(None, "--device", help="Only entries naming DEVICE."),
        action: str | None = typer.Option(
            None, "--action", help="Only this action or its sub-actions (fleet → fleet.apply)."
        ),
        limit: int = typer.Option(50, "--limit", help=f"At most N entries (1-{MAX_LIMIT})."),
        as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        if not 1 <= limit <= MAX_LIMIT:
            raise ConfigError(f"--limit must be 1-{MAX_LIMIT}, got {limit}")
        settings = load_settings({"store": store}, config_file=Path(config) if config else None)
        entries, tz = asyncio.run(
            fetch(settings.store_url, settings.tz, limit=limit, device=device, action=action)
        )
        if as_json:
            for e in entries:
                sys.stdout.write(orjson.dumps(entry_json(e)).decode() + "\n")
            return
        if not entries:
            typer.echo("no audit entries" + (" match" if device or action else " yet"))
            return
        render_table(entries, tz, Console(width=160))


__all__ = ["cli_actor", "detail_text", "devices_text", "entry_json", "register"]
