"""``kilowatch fleet plan`` and ``kilowatch fleet apply``: a profile's drift, and making it so.

A thin shell over :mod:`kilowatch.fleet.apply`: load the profile, pick the registered devices
(``--select``, else the profile's ``[select]``), reach each through the registry's ``open_rpc``
with its password from the secrets file (:mod:`kilowatch.service.fleetctx`, shared with the
dashboard), draw a Rich progress bar on stderr, print a table (or JSON) on stdout, and exit 1
when any device failed. Never prints a secret. Each device's compliance is kept after a plan or
an apply; an apply (not a dry run) is audited as ``fleet.apply`` by ``cli:<os user>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kilowatch.cli import fleetopts
from kilowatch.cli.fleet_audit import cli_actor
from kilowatch.errors import ConfigError, FleetError
from kilowatch.fleet.apply import (
    ApplyOptions,
    ApplyReport,
    Status,
)
from kilowatch.fleet.plan import DevicePlan
from kilowatch.fleet.profile import Profile, load_profile
from kilowatch.fleet.registry import parse_selection, select
from kilowatch.service import fleetctx
from kilowatch.service.config import Settings
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration

PLAN_HELP = (
    "Read every selected device and print how it differs from the profile (its drift), field by "
    "field: actual → desired. Nothing is written. Devices that cannot be read are listed with "
    "their error (exit 1). The devices are the registry's (kilowatch fleet discover), chosen by "
    "--select KEY=GLOB, else by the profile's [select] match; docs/profiles.md describes the "
    "profile.\n\n"
    "Examples:\n\n"
    "kilowatch fleet plan examples/profiles/home.toml\n\n"
    "kilowatch fleet plan home.toml --select room=kitchen --format json"
)
APPLY_HELP = (
    "Make every selected device match the profile: TLS material, MQTT, system, scripts, the "
    "device password last, one reboot when a device asks for it, then a check that nothing "
    "differs any more. --concurrency devices at a time; a device that cannot be reached is "
    "retried with backoff; one that fails does not stop the others. A second apply changes "
    "nothing. --dry-run prints what would be done and writes nothing. --report FILE.json writes "
    "the per-device report. Exit 1 when any device failed.\n\n"
    "Examples:\n\n"
    "kilowatch fleet apply examples/profiles/home.toml --dry-run\n\n"
    "kilowatch fleet apply home.toml --select model=S3PM* --report apply.json"
)
FORMATS = ("table", "json")
_STATUS_STYLE = {
    Status.OK: "green",
    Status.UNCHANGED: "dim",
    Status.FAILED: "red",
    Status.PLANNED: "yellow",
}


# --- running --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """What one plan or apply works on."""

    profile: Profile
    targets: list[Registration]
    settings: Settings
    broker: str | None
    concurrency: int


async def _targets(settings: Settings, expressions: Sequence[str]) -> list[Registration]:
    async with open_store(settings.store_url) as store:
        return select(await store.registry(), expressions)


def prepare(
    profile_path: Path,
    selections: Sequence[str] | None,
    *,
    store: str | None,
    data_dir: str | None,
    config: str | None,
    broker: str | None,
    concurrency: int,
) -> Job:
    """Load the profile and the selected registrations; refuse an empty selection."""
    if concurrency < 1:
        raise FleetError("--concurrency", f"must be 1 or more, got {concurrency}")
    profile = load_profile(profile_path)
    expressions = list(selections) if selections else list(profile.select)
    parse_selection(expressions)  # a bad expression stops here, before the store is opened
    settings = fleetopts.load(store, data_dir, config)
    targets = asyncio.run(_targets(settings, expressions))
    if not targets:
        raise fleetopts.no_match(str(profile_path), expressions)
    return Job(profile, targets, settings, broker, concurrency)


def broker_client(url: str | None, settings: Settings) -> AbstractAsyncContextManager[Any]:
    """:func:`kilowatch.service.fleetctx.broker_client` (kept here: other commands import it)."""
    return fleetctx.broker_client(url, settings)


class BarProgress:
    """A Rich progress bar over the devices: one tick per device finished, the last step shown."""

    def __init__(self, bar: Progress, total: int, verb: str) -> None:
        self.bar = bar
        self.task = bar.add_task(verb, total=total, status="")

    def started(self, device: str) -> None:
        pass

    def step(self, device: str, step: str) -> None:
        self.bar.update(self.task, status=f"{device}: {step}")

    def finished(self, device: str, status: Status) -> None:
        self.bar.update(self.task, advance=1, status=f"{device}: {status.value}")


async def run_plan(job: Job, console: Console) -> list[DevicePlan]:
    """Plan ``job``; each device's compliance (in sync, drifted, unreadable) is kept."""
    async with (
        open_store(job.settings.store_url) as store,
        fleetctx.fleet_access(job.settings, job.broker) as access,
    ):
        with fleetopts.device_bar(console) as bar:
            progress = BarProgress(bar, len(job.targets), "plan")
            return await fleetctx.plan_and_record(
                store, job.profile, job.targets, access,
                concurrency=job.concurrency, progress=progress,
            )  # fmt: skip


async def run_apply(job: Job, options: ApplyOptions, console: Console) -> ApplyReport:
    """Apply ``job`` (audited as ``fleet.apply`` by ``cli:<os user>`` unless a dry run); the
    registry and each device's compliance learn the outcome."""
    async with (
        open_store(job.settings.store_url) as store,
        fleetctx.fleet_access(job.settings, job.broker) as access,
    ):
        with fleetopts.device_bar(console) as bar:
            verb = "dry run" if options.dry_run else "apply"
            progress = BarProgress(bar, len(job.targets), verb)
            return await fleetctx.apply_and_record(
                store, job.profile, job.targets, access,
                actor=cli_actor(), options=options, progress=progress,
            )  # fmt: skip


registry_updates = fleetctx.registry_updates
"""Kept here under its old name (tests import it)."""
apply_result = fleetctx.apply_result


# --- rendering ------------------------------------------------------------------------------


def render_plan(plans: Sequence[DevicePlan], console: Console) -> None:
    """One row per change (``actual → desired``), per device in sync, per device not read."""
    table = Table(title=f"Plan ({len(plans)} devices)")
    for column in ("device", "step", "field", "actual", "desired"):
        table.add_column(column, overflow="fold")
    for plan in plans:
        if plan.error is not None:
            table.add_row(plan.device, "[red]error[/red]", plan.error.type, plan.error.message, "")
            continue
        if not plan.changes:
            table.add_row(plan.device, "[dim]in sync[/dim]", "", "", "")
        for change in plan.changes:
            step = change.step.value + (" (report only)" if change.advisory else "")
            table.add_row(
                plan.device, step, change.field, _cell(change.actual), _cell(change.desired)
            )
    console.print(table)
    drift = sum(1 for p in plans if p.pending)
    errors = sum(1 for p in plans if p.error is not None)
    console.print(
        f"{len(plans)} devices: {drift} to change, "
        f"{len(plans) - drift - errors} in sync, {errors} not read"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_report(report: ApplyReport, console: Console) -> None:
    """One row per device: status, steps, seconds, error or notices; then the counts."""
    title = "Dry run" if report.dry_run else "Apply"
    table = Table(title=f"{title} ({len(report.devices)} devices)")
    for column in ("device", "status", "steps", "seconds", "error / notes"):
        table.add_column(column, overflow="fold")
    for result in report.devices:
        style = _STATUS_STYLE[result.status]
        notes = result.error.message if result.error is not None else "; ".join(result.notices)
        table.add_row(
            result.device,
            f"[{style}]{result.status.value}[/{style}]",
            ", ".join(result.steps),
            f"{result.seconds:.1f}",
            notes,
        )
    console.print(table)
    counts = report.summary()
    shown = ", ".join(f"{counts[s.value]} {s.value}" for s in Status if counts[s.value])
    console.print(f"{counts['devices']} devices in {report.seconds:.1f} s: {shown}")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")


# --- commands -------------------------------------------------------------------------------


def register(group: typer.Typer) -> None:
    """Add ``plan`` and ``apply`` to the ``fleet`` group."""

    @group.command("plan", help=PLAN_HELP)
    def plan_(
        profile: Annotated[Path, typer.Argument(help="The profile (TOML).")],
        selections: Annotated[list[str] | None, fleetopts.SELECT] = None,
        concurrency: int = fleetopts.CONCURRENCY_OPTION,
        fmt: str = typer.Option("table", "--format", help="table or json."),
        broker: str | None = fleetopts.BROKER,
        store: str | None = fleetopts.STORE,
        data_dir: str | None = fleetopts.DATA_DIR,
        config: str | None = fleetopts.CONFIG,
    ) -> None:
        _check_format(fmt)
        job = prepare(
            profile,
            selections,
            store=store,
            data_dir=data_dir,
            config=config,
            broker=broker,
            concurrency=concurrency,
        )
        plans = asyncio.run(run_plan(job, Console(stderr=True)))
        if fmt == "json":
            typer.echo(orjson.dumps([p.to_json() for p in plans]).decode())
        else:
            render_plan(plans, Console(width=160))
        if any(p.error is not None for p in plans):
            raise typer.Exit(1)

    @group.command("apply", help=APPLY_HELP)
    def apply_(
        profile: Annotated[Path, typer.Argument(help="The profile (TOML).")],
        selections: Annotated[list[str] | None, fleetopts.SELECT] = None,
        concurrency: int = fleetopts.CONCURRENCY_OPTION,
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Plan and say what would be done; write nothing."
        ),
        report: Path | None = fleetopts.REPORT,
        fmt: str = typer.Option("table", "--format", help="table or json (the report)."),
        broker: str | None = fleetopts.BROKER,
        store: str | None = fleetopts.STORE,
        data_dir: str | None = fleetopts.DATA_DIR,
        config: str | None = fleetopts.CONFIG,
    ) -> None:
        _check_format(fmt)
        job = prepare(
            profile,
            selections,
            store=store,
            data_dir=data_dir,
            config=config,
            broker=broker,
            concurrency=concurrency,
        )
        options = ApplyOptions(concurrency=concurrency, dry_run=dry_run)
        outcome = asyncio.run(run_apply(job, options, Console(stderr=True)))
        body = orjson.dumps(outcome.to_json(), option=orjson.OPT_INDENT_2)
        if fmt == "json":
            typer.echo(body.decode())
        else:
            render_report(outcome, Console(width=160))
        fleetopts.write_report(report, body)
        if outcome.failed:
            raise typer.Exit(1)


__all__ = [
    "BarProgress",
    "apply_result",
    "broker_client",
    "prepare",
    "register",
    "render_plan",
    "render_report",
]
