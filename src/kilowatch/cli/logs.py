"""``kilowatch logs DEVICE``: a device's debug-log lines (or its events), like ``tail``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
import typer

from kilowatch.cli.stores import MAX_LISTED_DEVICES, open_existing
from kilowatch.errors import ConfigError
from kilowatch.fleet.logs import (
    FOLLOW_INTERVAL_S,
    LOG_LEVELS,
    POLL_LIMIT_MAX,
    Tail,
    event_tail,
    log_tail,
)
from kilowatch.model.messages import Event, LogLine
from kilowatch.service.config import resolve_store_url
from kilowatch.store import Store

HELP = (
    "Print a device's debug-log lines, oldest first like tail: the newest --limit of them, and "
    "with --follow every line stored after them until Ctrl-C. --events prints the device's "
    "events (online/offline, reboots, OTA progress, config changes) instead. Log lines arrive "
    "once the device sends its debug log over MQTT: [system] debug_mqtt = true in a profile "
    "(docs/logs.md).\n\n"
    "Examples:\n\n"
    "kilowatch logs shellypmminig3-ecda3bc4ddb0\n\n"
    "kilowatch logs shellypmminig3-ecda3bc4ddb0 --follow\n\n"
    "kilowatch logs shellypro3em-aabbccddeeff --events --limit 50 --json"
)


def _when(ts: float) -> str:
    try:
        at = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ts!r:>23}"  # a device's clock may say anything: show it as it came
    return at.isoformat(" ", "milliseconds")[:23]


def log_text(line: LogLine) -> str:
    """``2026-03-15 11:29:01.250 info  shelly_notification.c:164  Status change of pm1:0``."""
    level = LOG_LEVELS.get(line.level, str(line.level)) if line.level is not None else "-"
    where = f"{line.source}  " if line.source else ""
    return f"{_when(line.ts)} {level:<5} {where}{line.message}"


def event_text(event: Event) -> str:
    """``2026-03-15 11:29:00.000 sys  ota_progress  {"progress_percent":40}``."""
    data = f"  {orjson.dumps(event.data).decode()}" if event.data else ""
    return f"{_when(event.ts)} {event.component}  {event.event}{data}"


def item_json(item: LogLine | Event) -> str:
    """One JSON object per line: the stored item's JSON and its ``time`` (UTC, ISO 8601)."""
    out: dict[str, Any] = item.to_json()
    with contextlib.suppress(OverflowError, OSError, ValueError):  # a clock gone astray
        out["time"] = datetime.fromtimestamp(item.ts, UTC).isoformat()
    return orjson.dumps(out).decode()


async def check_device(store: Store, device: str) -> None:
    """:class:`ConfigError` naming how to find device ids when ``device`` is not in the store."""
    if await store.device(device) is not None:
        return
    known = sorted(d.device for d in await store.devices())
    if not known:
        raise ConfigError(
            f"no device {device!r}: the store has no devices yet; kilowatch serve records them "
            "as they report"
        )
    if len(known) <= MAX_LISTED_DEVICES:
        raise ConfigError(
            f"no device {device!r}; the store knows: {', '.join(known)} (kilowatch devices "
            "shows their names and models)"
        )
    raise ConfigError(
        f"no device {device!r} among the store's {len(known)} devices; kilowatch devices lists "
        "them with their names and models"
    )


class Printer:
    """Writes items oldest first to ``out``, as text or JSON lines, flushing each batch (a pipe
    into ``grep`` sees a followed line at once)."""

    def __init__(self, out: TextIO, *, as_json: bool, events: bool) -> None:
        self._out = out
        self._render: Callable[[Any], str]
        if as_json:
            self._render = item_json
        else:
            self._render = event_text if events else log_text

    def newest_first(self, items: Sequence[LogLine | Event]) -> None:
        for item in reversed(items):
            self._out.write(self._render(item) + "\n")
        self._out.flush()


async def show(
    url: str,
    device: str,
    *,
    limit: int,
    events: bool,
    follow: bool,
    printer: Printer,
    interval: float = FOLLOW_INTERVAL_S,
    stop: asyncio.Event | None = None,
) -> None:
    """Print the newest ``limit`` items; with ``follow``, then every item stored after them,
    reading the store every ``interval`` seconds until cancelled (or ``stop`` is set)."""
    async with open_existing(url) as store:
        await check_device(store, device)
        tail: Tail[Any] = event_tail(store, device) if events else log_tail(store, device)
        printer.newest_first(await tail.start(limit))
        stop = stop or asyncio.Event()
        while follow and not stop.is_set():
            try:
                async with asyncio.timeout(interval):
                    await stop.wait()
            except TimeoutError:
                pass
            fresh = await tail.poll()
            if fresh.gap:
                what = "events" if events else "lines"
                print(
                    f"kilowatch logs: more {what} arrived than one read holds "
                    f"({POLL_LIMIT_MAX}); some before these were skipped",
                    file=sys.stderr,
                    flush=True,
                )
            printer.newest_first(fresh.items)


def register(app: typer.Typer) -> None:
    """Add the ``logs`` command to ``app``."""

    @app.command("logs", help=HELP)
    def logs(
        device: str = typer.Argument(..., help="The device id (kilowatch devices lists them)."),
        follow: bool = typer.Option(
            False, "--follow", "-f", help="Keep printing lines as they are stored, until Ctrl-C."
        ),
        events: bool = typer.Option(
            False, "--events", help="The device's events instead of its log lines."
        ),
        limit: int = typer.Option(
            20, "--limit", "-n", min=0, max=POLL_LIMIT_MAX, help="How many of the newest to print."
        ),
        as_json: bool = typer.Option(
            False, "--json", help="One JSON object per line (the API's shape, plus 'time')."
        ),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: settings)."),
        config: str | None = typer.Option(None, "--config", help="TOML settings file."),
    ) -> None:
        url = resolve_store_url(store, config_file=Path(config) if config else None)
        printer = Printer(sys.stdout, as_json=as_json, events=events)
        try:
            asyncio.run(
                show(url, device, limit=limit, events=events, follow=follow, printer=printer)
            )
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
