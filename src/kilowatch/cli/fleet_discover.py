"""``kilowatch fleet discover`` and ``kilowatch fleet list``: find devices, keep them registered.

``discover`` runs the methods asked for (address scans, mDNS, the broker), records what they found
in the store's fleet registry and prints it; ``list`` prints the registry. Neither ever prints a
secret: a registration holds only the reference of its secrets.

Without ``--broker`` or ``--no-broker``, discover also asks the broker kilowatch's settings name,
when it can log in there without a password it does not have: an external broker's URL (with
its user), the embedded broker's ``mqtt_user``/``mqtt_password``, or kilowatch's own broker on a
loopback address, which lets local clients in without a user. kilowatch's own user's password
is made anew at each start of ``serve`` and kept in its memory only, so a managed broker that
listens beyond loopback is asked only with an explicit ``--broker URL``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import aiohttp
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError, FleetError, KilowatchError
from kilowatch.fleet.discovery import (
    BROKER_WAIT_S,
    PROBE_TIMEOUT_S,
    SCAN_CONCURRENCY,
    Found,
    Unsupported,
    from_broker,
    from_mdns,
    merge,
    parse_targets,
    scan,
)
from kilowatch.fleet.mdns import browse
from kilowatch.fleet.registry import (
    RecordSummary,
    parse_selection,
    record_found,
    registration_json,
    select,
)
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.service.config import (
    BrokerAddress,
    Settings,
    load_settings,
    parse_broker_url,
)
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration

DISCOVER_HELP = (
    "Find Shelly Gen2+ devices and record them in the fleet registry: --scan probes GET /shelly "
    "on address ranges (bounded concurrency, a progress bar), --mdns listens for _shelly._tcp "
    "adverts for that many seconds, and the broker's online devices answer Shelly.GetDeviceInfo "
    "over MQTT. The broker is --broker URL, else the one kilowatch's settings name when it can be "
    "reached without kilowatch's own password (an external broker's URL, mqtt_user, or "
    "kilowatch's broker on loopback); --no-broker skips it. A spec is an address (192.168.1.7), a "
    "network (192.168.1.0/24), a range (192.168.1.10-192.168.1.200 or 192.168.1.10-200), each "
    "with an optional :PORT; at most 65 536 addresses. Gen1 devices are listed as not supported "
    "yet. Prints each device with new, updated or unchanged.\n\n"
    "Examples:\n\n"
    "kilowatch fleet discover --scan 192.168.1.0/24\n\n"
    "kilowatch fleet discover --scan 10.0.5.10-10.0.5.250 --scan 10.0.6.7:8080 --no-broker "
    "--concurrency 128 --timeout 1.5\n\n"
    "kilowatch fleet discover --mdns 5 --broker mqtt://kilowatch:secret@192.168.1.2:1883 "
    "--format json"
)
LIST_HELP = (
    "List the fleet registry: id, name, room, model, generation, firmware, address or MQTT "
    "prefix, transport, how it was found, last seen (never a secret). --select KEY=GLOB keeps "
    "the devices that match (keys: id, model, app, name, room, fw, gen, address, transport; "
    "several are ANDed, in one option separated by commas or repeated; a bare GLOB matches "
    "ids).\n\n"
    "Examples:\n\n"
    "kilowatch fleet list\n\n"
    "kilowatch fleet list --select 'model=S3PM*' --select 'room=kitchen'\n\n"
    "kilowatch fleet list --select 'shellypro3em-*,fw=1.4.*' --format json"
)
FORMATS = ("table", "json")

_STORE = typer.Option(None, "--store", help="Store URL (default: as serve).")
_DATA_DIR = typer.Option(None, "--data-dir", help="kilowatch's data dir (default: as serve).")
_CONFIG = typer.Option(None, "--config", help="TOML settings file.")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


# --- the broker ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerChoice:
    """The broker discover asks, and whether the user named it (a failure is then an error)."""

    address: BrokerAddress | None
    explicit: bool
    why_not: str = ""
    """When ``address`` is ``None``: why the settings' broker cannot be asked."""


def broker_choice(settings: Settings, url: str | None, *, disabled: bool) -> BrokerChoice:
    """Which broker ``fleet discover`` asks: ``--broker URL``, else the settings' broker when it
    can be logged in to without kilowatch's own password (see the module's docstring)."""
    if disabled:
        return BrokerChoice(None, explicit=True, why_not="--no-broker")
    if url is not None:
        try:
            return BrokerChoice(parse_broker_url(url), explicit=True)
        except ValueError as err:
            raise ConfigError(f"bad --broker {url!r}: {err}") from None
    if settings.broker_mode is None:
        address = parse_broker_url(settings.broker)
        if address.user is None and settings.mqtt_user is not None:
            address = BrokerAddress(
                address.host, address.port, address.tls, settings.mqtt_user, settings.mqtt_password
            )
        return BrokerChoice(address, explicit=False)
    host = _reachable_host(settings.mqtt_host)
    if settings.mqtt_port == 0:
        return BrokerChoice(None, False, "kilowatch's broker listens on a port picked at start")
    if settings.mqtt_user is not None and settings.mqtt_password is not None:
        address = BrokerAddress(
            host, settings.mqtt_port, False, settings.mqtt_user, settings.mqtt_password
        )
        return BrokerChoice(address, explicit=False)
    if _is_loopback(settings.mqtt_host):
        return BrokerChoice(BrokerAddress(host, settings.mqtt_port, False), explicit=False)
    return BrokerChoice(
        None,
        False,
        f"kilowatch's broker listens on {settings.mqtt_host}, beyond loopback, where it lets no "
        "client in without a user, and kilowatch's own password lives only in the serve process; "
        "pass --broker mqtt://USER:PASSWORD@HOST:PORT",
    )


def _reachable_host(host: str) -> str:
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    return "::1" if host == "::" else host


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prefix_levels(settings: Settings) -> int:
    """How many topic levels a Shelly prefix may have: as many as the deepest of the settings'
    ``shelly_topic_prefixes`` (``+`` is one level, ``home/+`` two), the devices kilowatch's
    intake reads."""
    return max((len(f.split("/")) for f in settings.shelly_topic_prefixes), default=1)


def _tls_context(settings: Settings, address: BrokerAddress) -> ssl.SSLContext | None:
    if not address.tls:
        return None
    context = ssl.create_default_context(
        cafile=str(settings.mqtt_ca) if settings.mqtt_ca is not None else None
    )
    if settings.mqtt_cert is not None:
        key = str(settings.mqtt_key) if settings.mqtt_key is not None else None
        context.load_cert_chain(str(settings.mqtt_cert), key)
    if settings.mqtt_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _where(address: BrokerAddress) -> str:
    return f"{'mqtts' if address.tls else 'mqtt'}://{address.host}:{address.port}"


# --- discover -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one ``fleet discover`` run found and recorded."""

    found: list[Found]
    summary: RecordSummary
    unsupported: list[Unsupported] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """One line per method that could not run (the settings' broker unreachable...)."""


@dataclass(frozen=True, slots=True)
class Plan:
    targets: list[str]
    mdns_seconds: float | None
    broker: BrokerChoice
    concurrency: int
    timeout: float
    broker_wait: float
    broker_levels: int = 1
    """Topic levels of the prefixes asked on the broker (see :func:`prefix_levels`)."""


async def discover(plan: Plan, settings: Settings, console: Console) -> Outcome:
    """Run the methods of ``plan``, record what they found, return it all."""
    lists: list[list[Found]] = []
    unsupported: list[Unsupported] = []
    notes: list[str] = []
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        if plan.targets:
            lists.append(await _scan_with_bar(plan, session, unsupported, console))
        if plan.mdns_seconds is not None:
            advertised = await browse(seconds=plan.mdns_seconds)
            lists.append(
                await from_mdns(
                    advertised,
                    session,
                    concurrency=plan.concurrency,
                    timeout=plan.timeout,
                    unsupported=unsupported,
                )
            )
    if plan.broker.address is not None:
        lists.append(await _from_broker(plan, settings, notes))
    elif not plan.broker.explicit:
        notes.append(f"broker: not asked: {plan.broker.why_not}")
    found = merge(lists)
    async with open_store(settings.store_url) as store:
        summary = await record_found(store, found, now=time.time())
    return Outcome(found, summary, unsupported, notes)


async def _scan_with_bar(
    plan: Plan,
    session: aiohttp.ClientSession,
    unsupported: list[Unsupported],
    console: Console,
) -> list[Found]:
    columns = (
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[found]} found"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("scan", total=len(plan.targets), found=0)
        hits = 0

        def advance(address: str, result: Found | Unsupported | None) -> None:
            nonlocal hits
            hits += isinstance(result, Found)
            bar.update(task, advance=1, found=hits)

        return await scan(
            plan.targets,
            session=session,
            concurrency=plan.concurrency,
            timeout=plan.timeout,
            progress=advance,
            unsupported=unsupported,
        )


async def _from_broker(plan: Plan, settings: Settings, notes: list[str]) -> list[Found]:
    address = plan.broker.address
    assert address is not None
    client = MqttRpc(
        address.host,
        address.port,
        username=address.user,
        password=address.password,
        tls=_tls_context(settings, address),
    )
    try:
        async with client as mqtt:
            return await from_broker(
                mqtt,
                wait=plan.broker_wait,
                concurrency=plan.concurrency,
                levels=plan.broker_levels,
            )
    except KilowatchError as err:
        if plan.broker.explicit:
            raise
        if not plan.targets and plan.mdns_seconds is None:
            raise ConfigError(
                f"the broker of kilowatch's settings, {_where(address)}, cannot be asked ({err}); "
                "pass --broker URL, --scan SPEC or --mdns SECONDS"
            ) from err
        notes.append(f"broker: {_where(address)} not asked: {err}")
        return []


# --- rendering ----------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _found_json(f: Found, summary: RecordSummary) -> dict[str, object]:
    out: dict[str, object] = asdict(f)
    out["how"] = str(f.how)
    out["outcome"] = summary.outcome(f.device)
    return out


def render_outcome_json(outcome: Outcome) -> str:
    s = outcome.summary
    return orjson.dumps(
        {
            "devices": [_found_json(f, s) for f in outcome.found],
            "new": len(s.new),
            "updated": len(s.updated),
            "unchanged": len(s.unchanged),
            "unsupported": [asdict(u) for u in outcome.unsupported],
            "notes": outcome.notes,
        }
    ).decode()


def render_outcome(outcome: Outcome, console: Console) -> None:
    s = outcome.summary
    table = Table(title=f"Found ({len(outcome.found)})")
    for col in ("device", "model", "gen", "fw", "address", "how", "registry"):
        table.add_column(col, overflow="fold")
    for f in outcome.found:
        where = f.address or (f"mqtt {f.prefix}" if f.prefix else "")
        table.add_row(
            f.device,
            f.model or "",
            str(f.gen),
            f.fw_ver or "",
            where,
            str(f.how),
            s.outcome(f.device),
        )
    console.print(table)
    console.print(
        f"{len(outcome.found)} devices: {len(s.new)} new, {len(s.updated)} updated, "
        f"{len(s.unchanged)} unchanged",
        highlight=False,
    )
    if outcome.unsupported:
        listed = ", ".join(f"{u.address} ({u.model or '?'})" for u in outcome.unsupported)
        console.print(
            f"{len(outcome.unsupported)} Gen1 devices not supported yet: {listed}",
            highlight=False,
        )
    for note in outcome.notes:
        console.print(note, highlight=False, markup=False)


def render_registry(records: Sequence[Registration], console: Console) -> None:
    table = Table(title=f"Fleet ({len(records)})")
    for col in (
        "device", "name", "room", "model", "gen", "fw", "address / prefix", "transport",
        "found by", "seen (UTC)",
    ):  # fmt: skip
        table.add_column(col, overflow="fold")
    for r in records:
        where = r.address or (f"mqtt {r.prefix}" if r.prefix else "")
        table.add_row(
            r.device,
            r.name or "",
            r.room or "",
            r.model or "",
            "" if r.gen is None else str(r.gen),
            r.fw_ver or "",
            where,
            r.transport or "",
            r.discovered_by or "",
            _when(r.seen_at),
        )
    console.print(table)


async def _registry(url: str) -> list[Registration]:
    async with open_existing(url) as store:
        return await store.registry()


# --- commands -----------------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")


def register(group: typer.Typer) -> None:
    """Add ``discover`` and ``list`` to the ``fleet`` group."""

    @group.command("discover", help=DISCOVER_HELP)
    def discover_(
        scans: Annotated[
            list[str] | None, typer.Option("--scan", help="Addresses to probe (repeatable).")
        ] = None,
        mdns: float | None = typer.Option(
            None, "--mdns", help="Listen for mDNS adverts this many seconds."
        ),
        broker: str | None = typer.Option(None, "--broker", help="mqtt://user:pass@host:port"),
        no_broker: bool = typer.Option(False, "--no-broker", help="Do not ask a broker."),
        concurrency: int = typer.Option(
            SCAN_CONCURRENCY, "--concurrency", help="Devices asked at once."
        ),
        timeout: float = typer.Option(
            PROBE_TIMEOUT_S, "--timeout", help="Seconds one address may take to answer."
        ),
        broker_wait: float = typer.Option(
            BROKER_WAIT_S, "--broker-wait", help="Seconds to collect the broker's online devices."
        ),
        fmt: str = typer.Option("table", "--format", help="table or json."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        _check_format(fmt)
        if broker is not None and no_broker:
            raise ConfigError("--broker and --no-broker contradict each other; pass one")
        if concurrency < 1:
            raise FleetError("--concurrency", f"must be 1 or more, got {concurrency}")
        if timeout <= 0 or (mdns is not None and mdns <= 0) or broker_wait <= 0:
            raise ConfigError("--timeout, --mdns and --broker-wait take seconds above 0")
        targets = parse_targets(scans or [])  # a bad spec stops here, before anything is opened
        settings = load_settings(
            {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
        )
        choice = broker_choice(settings, broker, disabled=no_broker)
        if not targets and mdns is None and choice.address is None:
            raise ConfigError(
                "nothing to discover with: pass --scan SPEC, --mdns SECONDS or --broker URL"
                + (f" ({choice.why_not})" if choice.why_not != "--no-broker" else "")
            )
        plan = Plan(
            targets, mdns, choice, concurrency, timeout, broker_wait, prefix_levels(settings)
        )
        err_console = Console(stderr=True)
        outcome = asyncio.run(discover(plan, settings, err_console))
        if fmt == "json":
            typer.echo(render_outcome_json(outcome))
        else:
            render_outcome(outcome, Console(width=160))

    @group.command("list", help=LIST_HELP)
    def list_(
        selections: Annotated[
            list[str] | None,
            typer.Option("--select", help="KEY=GLOB (id, model, app, name, room, fw, gen, ...)."),
        ] = None,
        fmt: str = typer.Option("table", "--format", help="table or json."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        _check_format(fmt)
        selections = selections or []
        parse_selection(selections)  # a bad expression stops here, before the store is opened
        settings = load_settings(
            {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
        )
        records = select(asyncio.run(_registry(settings.store_url)), selections)
        if fmt == "json":
            typer.echo(orjson.dumps([registration_json(r) for r in records]).decode())
        else:
            render_registry(records, Console(width=160))


__all__ = ["BrokerChoice", "broker_choice", "discover", "register"]
