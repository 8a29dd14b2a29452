"""``kilowatch fleet plan`` and ``kilowatch fleet apply``: a profile's drift, and making it so.

A thin shell over :mod:`kilowatch.fleet.apply`: load the profile, pick the registered devices
(``--select``, else the profile's ``[select]``), reach each through the registry's ``open_rpc``
with its password from the secrets file, draw a Rich progress bar on stderr, print a table (or
JSON) on stdout, and exit 1 when any device failed. Never prints a secret.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kilowatch.errors import ConfigError, FleetError
from kilowatch.fleet.apply import (
    CONCURRENCY,
    ApplyOptions,
    ApplyReport,
    SecretPasswords,
    Status,
    apply_fleet,
    plan_fleet,
)
from kilowatch.fleet.plan import DevicePlan
from kilowatch.fleet.profile import Profile, load_profile
from kilowatch.fleet.registry import open_rpc, parse_selection, select
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.service.config import Settings, load_settings, parse_broker_url
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
_STORE = typer.Option(None, "--store", help="Store URL (default: as serve).")
_DATA_DIR = typer.Option(None, "--data-dir", help="kilowatch's data dir (default: as serve).")
_CONFIG = typer.Option(None, "--config", help="TOML settings file.")
_BROKER = typer.Option(
    None,
    "--broker",
    help="mqtt[s]://user:pass@host:port to reach devices registered with transport mqtt.",
)
_REPORT = typer.Option(None, "--report", help="Write the per-device report to this JSON file.")
_CONCURRENCY = typer.Option(CONCURRENCY, "--concurrency", help="Devices worked on at once.")
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
    settings = load_settings(
        {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
    )
    targets = asyncio.run(_targets(settings, expressions))
    if not targets:
        shown = " ".join(expressions) or "(everything)"
        raise FleetError(
            str(profile_path),
            f"no registered device matches {shown}; kilowatch fleet list shows the registry, "
            "kilowatch fleet discover fills it",
        )
    return Job(profile, targets, settings, broker, concurrency)


def broker_client(url: str | None, settings: Settings) -> AbstractAsyncContextManager[Any]:
    """The ``MqttRpc`` of ``--broker URL`` (TLS against the settings' ``mqtt_ca`` for
    ``mqtts://``), or a context giving ``None`` without one."""
    if url is None:
        return nullcontext(None)
    try:
        address = parse_broker_url(url)
    except ValueError as err:
        raise ConfigError(f"bad --broker {url!r}: {err}") from None
    tls = None
    if address.tls:
        ca = str(settings.mqtt_ca) if settings.mqtt_ca is not None else None
        tls = ssl.create_default_context(cafile=ca)
    return MqttRpc(
        address.host, address.port, username=address.user, password=address.password, tls=tls
    )


@asynccontextmanager
async def _devices(job: Job) -> AsyncIterator[Any]:
    """The opener for ``job``'s devices and their passwords, with the sessions they need."""
    box = SecretBox.in_data_dir(job.settings.data_dir)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        broker_client(job.broker, job.settings) as mqtt,
    ):

        def opener(reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
            return open_rpc(reg, secrets=box, session=session, mqtt=mqtt)

        yield opener, SecretPasswords(box)


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


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


async def run_plan(job: Job, console: Console) -> list[DevicePlan]:
    async with _devices(job) as (opener, passwords):
        with _bar(console) as bar:
            progress = BarProgress(bar, len(job.targets), "plan")
            return await plan_fleet(
                job.profile,
                job.targets,
                opener,
                passwords=passwords,
                concurrency=job.concurrency,
                progress=progress,
            )


async def run_apply(job: Job, options: ApplyOptions, console: Console) -> ApplyReport:
    async with _devices(job) as (opener, passwords):
        with _bar(console) as bar:
            verb = "dry run" if options.dry_run else "apply"
            progress = BarProgress(bar, len(job.targets), verb)
            report = await apply_fleet(
                job.profile,
                job.targets,
                opener,
                passwords=passwords,
                options=options,
                progress=progress,
            )
    if not options.dry_run:
        await record(job, report)
    return report


def registry_updates(profile: Profile, report: ApplyReport) -> list[Registration]:
    """What the registry learns from an apply, per device changed: its new topic prefix, and
    the profile's first script as deployed (a registration holds one script, the seed's
    ``script:<MAC>``)."""
    first = profile.scripts[0].name if profile.scripts else None
    out = []
    for result in report.devices:
        if result.status is not Status.OK:
            continue
        prefix = next((c.desired for c in result.changes if c.field == "mqtt.topic_prefix"), None)
        script = next((d for d in result.scripts if d.name == first), None)
        if prefix is not None or script is not None:
            out.append(Registration(device=result.device, prefix=prefix, script=script))
    return out


async def record(job: Job, report: ApplyReport) -> None:
    """Keep :func:`registry_updates` in the store."""
    records = registry_updates(job.profile, report)
    if records:
        async with open_store(job.settings.store_url) as store:
            await store.register(records)


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

_SELECT = typer.Option(
    "--select", help="KEY=GLOB (id, model, app, name, room, fw, gen, ...); repeatable."
)


def register(group: typer.Typer) -> None:
    """Add ``plan`` and ``apply`` to the ``fleet`` group."""

    @group.command("plan", help=PLAN_HELP)
    def plan_(
        profile: Annotated[Path, typer.Argument(help="The profile (TOML).")],
        selections: Annotated[list[str] | None, _SELECT] = None,
        concurrency: int = _CONCURRENCY,
        fmt: str = typer.Option("table", "--format", help="table or json."),
        broker: str | None = _BROKER,
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
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
        selections: Annotated[list[str] | None, _SELECT] = None,
        concurrency: int = _CONCURRENCY,
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Plan and say what would be done; write nothing."
        ),
        report: Path | None = _REPORT,
        fmt: str = typer.Option("table", "--format", help="table or json (the report)."),
        broker: str | None = _BROKER,
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
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
        if report is not None:
            try:
                report.write_bytes(body + b"\n")
            except OSError as err:
                raise ConfigError(f"cannot write the report to {report}: {err}") from err
        if outcome.failed:
            raise typer.Exit(1)


__all__ = ["BarProgress", "broker_client", "prepare", "register", "render_plan", "render_report"]
