"""What the commands that work on registered devices (``fleet plan``/``apply``, ``fleet firmware
check``/``update``) share: their options, the settings they load, the empty-selection error,
the progress bar they draw on stderr and the report file they write."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kilowatch.errors import ConfigError, FleetError
from kilowatch.fleet.apply import CONCURRENCY
from kilowatch.service.config import Settings, load_settings

STORE = typer.Option(None, "--store", help="Store URL (default: as serve).")
DATA_DIR = typer.Option(None, "--data-dir", help="kilowatch's data dir (default: as serve).")
CONFIG = typer.Option(None, "--config", help="TOML settings file.")
BROKER = typer.Option(
    None,
    "--broker",
    help="mqtt[s]://user:pass@host:port to reach devices registered with transport mqtt.",
)
SELECT = typer.Option(
    "--select", help="KEY=GLOB (id, model, app, name, room, fw, gen, ...); repeatable."
)
CONCURRENCY_OPTION = typer.Option(CONCURRENCY, "--concurrency", help="Devices worked on at once.")
REPORT = typer.Option(None, "--report", help="Write the per-device report to this JSON file.")


def load(store: str | None, data_dir: str | None, config: str | None) -> Settings:
    """The settings as ``serve`` reads them, with ``--store``/``--data-dir``/``--config``."""
    return load_settings(
        {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
    )


def no_match(where: str, expressions: Sequence[str]) -> FleetError:
    """The error for a selection that matches no registered device (``where``: what selected)."""
    shown = " ".join(expressions) or "(everything)"
    return FleetError(
        where,
        f"no registered device matches {shown}; kilowatch fleet list shows the registry, "
        "kilowatch fleet discover fills it",
    )


def device_bar(console: Console) -> Progress:
    """A transient Rich bar over devices: description, bar, done/total, time, a ``status`` field
    (each task must be added with ``status=``)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


def write_report(path: Path | None, body: bytes) -> None:
    """Write the JSON report ``body`` to ``path`` (``--report``), when one was given."""
    if path is None:
        return
    try:
        path.write_bytes(body + b"\n")
    except OSError as err:
        raise ConfigError(f"cannot write the report to {path}: {err}") from err


__all__ = [
    "BROKER",
    "CONCURRENCY_OPTION",
    "CONFIG",
    "DATA_DIR",
    "REPORT",
    "SELECT",
    "STORE",
    "device_bar",
    "load",
    "no_match",
    "write_report",
]
