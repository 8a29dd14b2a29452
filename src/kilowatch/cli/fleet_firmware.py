"""``kilowatch fleet firmware check`` and ``kilowatch fleet firmware update``: what the devices
run and are offered, and staged rollouts.

A thin shell over :mod:`kilowatch.fleet.firmware`: pick the registered devices (``--select``),
reach them as ``fleet plan``/``apply`` do (:mod:`kilowatch.service.fleetctx`: the secrets file,
``--broker`` for devices reached over MQTT), draw Rich progress on stderr, print a table (or
JSON) on stdout. A rollout (not a dry run) is audited as ``firmware.update`` by
``cli:<os user>``; it exits 1 when it halted or any device failed or was offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kilowatch.cli import fleetopts
from kilowatch.cli.fleet_audit import cli_actor
from kilowatch.errors import ConfigError
from kilowatch.fleet.firmware import (
    CHECK_TIMEOUT_S,
    OTA_TIMEOUT_S,
    STAGES,
    FirmwareStatus,
    Outcome,
    RolloutOptions,
    RolloutProgress,
    RolloutReport,
    check_firmware,
    rollout,
)
from kilowatch.fleet.registry import parse_selection, select
from kilowatch.service import fleetctx
from kilowatch.service.config import Settings
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration

CHECK_HELP = (
    "Read every selected device's firmware: its version and the stable and beta versions it is "
    "offered (Shelly.CheckForUpdate; GET /status on Gen1), or why it could not be read "
    "(offline, a password kilowatch lacks). The registry and the device records keep what was "
    "read. Exit 1 when a device could not be read.\n\n"
    "Examples:\n\n"
    "kilowatch fleet firmware check\n\n"
    "kilowatch fleet firmware check --select model=S3PM* --json"
)
UPDATE_HELP = (
    "Update the selected devices to the firmware --stage offers, in waves: --canary devices "
    "first, then waves that double (or of --wave-size), each device watched until it reports "
    "the new version (its OTA events, then its version read again after the reboot), within "
    "--timeout seconds. When more than --max-failures devices failed, no further device is "
    "started: those are reported skipped and left untouched; the ones updated stay updated. "
    "Devices already on the offered version are up-to-date and get nothing, so running it again "
    "finishes what a halted rollout left. --dry-run reads the devices and prints the waves. "
    "--report FILE.json writes the per-device report. Exit 1 when it halted or any device failed "
    "or was offline.\n\n"
    "Examples:\n\n"
    "kilowatch fleet firmware update --stage stable --canary 2 --max-failures 1\n\n"
    "kilowatch fleet firmware update --stage beta --select room=lab --dry-run"
)
_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
_STYLE = {
    Outcome.UPDATED: "green",
    Outcome.UP_TO_DATE: "dim",
    Outcome.FAILED: "red",
    Outcome.OFFLINE: "red",
    Outcome.SKIPPED: "yellow",
    Outcome.PLANNED: "cyan",
}


async def _targets(settings: Settings, expressions: Sequence[str]) -> list[Registration]:
    async with open_store(settings.store_url) as store:
        targets = select(await store.registry(), expressions)
    if not targets:
        raise fleetopts.no_match("--select", expressions)
    return targets


async def run_check(
    settings: Settings,
    expressions: Sequence[str],
    *,
    broker: str | None,
    concurrency: int,
    timeout_s: float,
) -> list[FirmwareStatus]:
    """Check the selected devices (and keep what was read)."""
    targets = await _targets(settings, expressions)
    async with (
        open_store(settings.store_url) as store,
        fleetctx.fleet_access(settings, broker) as access,
    ):
        with Progress(
            TextColumn("check"), TimeElapsedColumn(), console=Console(stderr=True), transient=True
        ) as bar:
            bar.add_task("check", total=None)
            return await check_firmware(
                store, targets, secrets=access.secrets, mqtt=access.mqtt,
                concurrency=concurrency, timeout_s=timeout_s, session=access.session,
                opener=access.opener,
            )  # fmt: skip


class RolloutBar:
    """A Rich progress bar over a rollout: one tick per device with an outcome; the wave and the
    last change shown."""

    def __init__(self, bar: Progress, total: int) -> None:
        self.bar = bar
        self.task = bar.add_task("checking", total=total, status="")
        self.finished: set[str] = set()

    def __call__(self, p: RolloutProgress) -> None:
        described = f"wave {p.wave}/{p.waves}" if p.wave else "checking"
        if p.halted:
            described += " (halted)"
        status = f"{p.device}: {p.state}" if p.device else p.state
        if p.detail and p.state in ("progress", "failed", "offline"):
            status += f" {p.detail}" + ("%" if p.state == "progress" else "")
        done = 0
        outcome = p.state in {o.value for o in Outcome}
        if p.device is not None and outcome and p.device not in self.finished:
            self.finished.add(p.device)
            done = 1
        self.bar.update(self.task, advance=done, description=described, status=status)


async def run_update(
    settings: Settings,
    expressions: Sequence[str],
    options: RolloutOptions,
    *,
    broker: str | None,
) -> RolloutReport:
    """Roll out to the selected devices, audited as ``firmware.update`` by ``cli:<os user>``."""
    targets = await _targets(settings, expressions)
    async with (
        open_store(settings.store_url) as store,
        fleetctx.fleet_access(settings, broker) as access,
    ):
        with fleetopts.device_bar(Console(stderr=True)) as bar:
            return await rollout(
                store, targets, options, secrets=access.secrets, mqtt=access.mqtt,
                actor=cli_actor(), on_progress=RolloutBar(bar, len(targets)),
                session=access.session, opener=access.opener,
            )  # fmt: skip


# --- rendering ------------------------------------------------------------------------------


def render_check(found: Sequence[FirmwareStatus], console: Console) -> None:
    """One row per device: model, gen, version, the offers (or the error)."""
    table = Table(title=f"Firmware ({len(found)} devices)")
    for column in ("device", "model", "gen", "version", "stable", "beta", "error"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(
            s.device,
            s.model or "",
            "" if s.gen is None else str(s.gen),
            s.current or "",
            f"[green]{s.stable}[/green]" if s.stable else "[dim]-[/dim]",
            f"[yellow]{s.beta}[/yellow]" if s.beta else "[dim]-[/dim]",
            f"[red]{s.error}[/red]" if s.error else "",
        )
    console.print(table)
    errors = sum(1 for s in found if s.error is not None)
    stable = sum(1 for s in found if s.stable)
    beta = sum(1 for s in found if s.beta)
    console.print(
        f"{len(found)} devices: {stable} offered a stable update, {beta} a beta, {errors} not read"
    )


def render_report(report: RolloutReport, console: Console) -> None:
    """One row per device: outcome, wave, versions before and after, reason; then the counts and
    whether it halted."""
    title = "Dry run" if report.options.dry_run else f"Rollout to {report.options.stage}"
    table = Table(title=f"{title} ({len(report.devices)} devices, {len(report.waves)} waves)")
    for column in ("device", "outcome", "wave", "before", "after", "reason"):
        table.add_column(column, overflow="fold")
    for d in report.devices:
        style = _STYLE[d.outcome]
        table.add_row(
            d.device,
            f"[{style}]{d.outcome.value}[/{style}]",
            "" if d.wave is None else str(d.wave),
            d.before or "",
            d.after or "",
            d.reason or "",
        )
    console.print(table)
    counts = report.summary()
    shown = ", ".join(f"{counts[o.value]} {o.value}" for o in Outcome if counts[o.value])
    console.print(f"{counts['devices']} devices in {report.seconds:.1f} s: {shown}")
    if report.halted:
        console.print(f"[red]halted[/red]: {report.halt_reason}")


# --- commands -------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``firmware check`` and ``firmware update`` to the ``fleet`` group."""
    group = typer.Typer(
        help="Firmware: versions and updates offered, staged rollouts.", no_args_is_help=True
    )
    app.add_typer(group, name="firmware")

    @group.command("check", help=CHECK_HELP)
    def check_(
        selections: Annotated[list[str] | None, fleetopts.SELECT] = None,
        as_json: bool = _JSON,
        concurrency: int = fleetopts.CONCURRENCY_OPTION,
        timeout: float = typer.Option(
            CHECK_TIMEOUT_S, "--timeout", help="Seconds each read may take."
        ),
        broker: str | None = fleetopts.BROKER,
        store: str | None = fleetopts.STORE,
        data_dir: str | None = fleetopts.DATA_DIR,
        config: str | None = fleetopts.CONFIG,
    ) -> None:
        expressions = list(selections or [])
        parse_selection(expressions)
        if concurrency < 1 or timeout <= 0:
            raise ConfigError("--concurrency must be 1 or more and --timeout positive")
        settings = fleetopts.load(store, data_dir, config)
        found = asyncio.run(
            run_check(
                settings, expressions, broker=broker, concurrency=concurrency, timeout_s=timeout
            )
        )
        if as_json:
            typer.echo(orjson.dumps([s.to_json() for s in found]).decode())
        else:
            render_check(found, Console(width=160))
        if any(s.error is not None for s in found):
            raise typer.Exit(1)

    @group.command("update", help=UPDATE_HELP)
    def update_(
        stage: str = typer.Option(..., "--stage", help="stable or beta."),
        selections: Annotated[list[str] | None, fleetopts.SELECT] = None,
        canary: int = typer.Option(1, "--canary", help="Devices in the first wave."),
        max_failures: int = typer.Option(
            0, "--max-failures", help="Halt once more devices than this failed."
        ),
        wave_size: int | None = typer.Option(
            None, "--wave-size", help="Devices per wave after the canary (default: doubling)."
        ),
        timeout: float = typer.Option(
            OTA_TIMEOUT_S, "--timeout", help="Seconds one device's update may take."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Read the devices and print the waves; send nothing."
        ),
        report: Path | None = fleetopts.REPORT,
        as_json: bool = _JSON,
        concurrency: int = fleetopts.CONCURRENCY_OPTION,
        broker: str | None = fleetopts.BROKER,
        store: str | None = fleetopts.STORE,
        data_dir: str | None = fleetopts.DATA_DIR,
        config: str | None = fleetopts.CONFIG,
    ) -> None:
        if stage not in STAGES:
            raise ConfigError(f"unknown --stage {stage!r}; use one of: {', '.join(STAGES)}")
        expressions = list(selections or [])
        parse_selection(expressions)
        try:
            options = RolloutOptions(
                stage=stage, canary=canary, wave_size=wave_size, max_failures=max_failures,
                timeout_s=timeout, concurrency=concurrency, dry_run=dry_run,
            )  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"fleet firmware update: {err}") from None
        settings = fleetopts.load(store, data_dir, config)
        outcome = asyncio.run(run_update(settings, expressions, options, broker=broker))
        body = orjson.dumps(outcome.to_json(), option=orjson.OPT_INDENT_2)
        if as_json:
            typer.echo(body.decode())
        else:
            render_report(outcome, Console(width=160))
        fleetopts.write_report(report, body)
        if outcome.failed:
            raise typer.Exit(1)


__all__ = ["RolloutBar", "register", "render_check", "render_report", "run_check", "run_update"]
