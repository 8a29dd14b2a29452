"""``kilowatch deadletters``: the messages kilowatch could not decode, and how many per reason."""

from __future__ import annotations

import asyncio
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
from kilowatch.store import DeadLetter

HELP = (
    "List the dead letters kilowatch kept (messages it could not decode: time, topic, reason, "
    "payload excerpt), newest first, and how many were seen per reason.\n\n"
    "Examples:\n\n"
    "kilowatch deadletters\n\n"
    "kilowatch deadletters --limit 5 --format json --store sqlite:///kilowatch.db"
)
EXCERPT_CHARS = 60


def payload_text(payload: bytes) -> str:
    """The payload as text; bytes that are not UTF-8 are shown as ``\\xNN``."""
    return payload.decode("utf-8", errors="backslashreplace")


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "ts": letter.ts,
        "time": datetime.fromtimestamp(letter.ts, UTC).isoformat(),
        "topic": letter.topic,
        "reason": letter.reason,
        "detail": letter.detail,
        "payload": payload_text(letter.payload),
    }


async def fetch(url: str, limit: int) -> tuple[list[DeadLetter], dict[str, int]]:
    """The newest ``limit`` dead letters and the counts by reason."""
    async with open_existing(url) as store:
        return await store.dead_letters(limit), await store.dead_letter_counts()


def render_table(letters: list[DeadLetter], counts: dict[str, int], console: Console) -> None:
    table = Table(title="Dead letters (newest first)")
    for col in ("time (UTC)", "topic", "reason", "payload"):
        table.add_column(col, overflow="fold")
    for d in letters:
        text = payload_text(d.payload).replace("\n", " ")
        if len(text) > EXCERPT_CHARS:
            text = text[: EXCERPT_CHARS - 1] + "…"
        when = datetime.fromtimestamp(d.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(when, d.topic, d.reason, text)
    console.print(table)
    by_reason = Table(title="Count by reason (all time)")
    by_reason.add_column("reason")
    by_reason.add_column("count", justify="right")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        by_reason.add_row(reason, str(n))
    console.print(by_reason)


def register(app: typer.Typer) -> None:
    """Add the ``deadletters`` command to ``app``."""

    @app.command("deadletters", help=HELP)
    def deadletters(
        limit: int = typer.Option(20, "--limit", min=1, help="How many dead letters to list."),
        fmt: str = typer.Option("table", "--format", help="table or json."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: settings)."),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        if fmt not in {"table", "json"}:
            raise KilowatchError(f"unknown --format {fmt!r}; use table or json")
        url = resolve_store_url(store, config_file=Path(config) if config else None)
        letters, counts = asyncio.run(fetch(url, limit))
        if fmt == "json":
            out = {"dead_letters": [letter_json(d) for d in letters], "counts": counts}
            typer.echo(orjson.dumps(out).decode())
        else:
            render_table(letters, counts, Console(width=160))
