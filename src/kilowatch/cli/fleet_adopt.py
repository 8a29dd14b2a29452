"""``kilowatch fleet adopt``: from registered devices to metering devices in one command.

A thin shell over :func:`kilowatch.fleet.adopt.adopt`: pick the devices from the registry (ids,
``--all`` or ``--select``), work out the broker address the devices should use and the CA they
should trust, open the store, the secrets file and a LAN session, adopt, and print a table (or
JSON) of the outcomes. Exit 1 when any device failed. No password is ever printed.

It needs ``kilowatch serve`` running with its managed mosquitto on the same data dir: the new
users are loaded into that mosquitto (SIGHUP), and each device is confirmed by its energy reaching
the store through serve's intake. The run is audited (``fleet.adopt`` by ``cli:<os user>``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import aiohttp
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kilowatch.broker.mosquitto import broker_dir, reload_running, running_pid
from kilowatch.broker.tls import export_ca, tls_dir
from kilowatch.cli.fleet_audit import cli_actor
from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError
from kilowatch.fleet.adopt import (
    DEFAULT_CONCURRENCY,
    DEFAULT_WAIT_S,
    AdoptOptions,
    DeviceResult,
    Outcome,
    adopt,
)
from kilowatch.fleet.registry import select
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.lan import connect_lan
from kilowatch.fleet.secrets import SecretBox
from kilowatch.fleet.tlsmaterial import TlsMaterial, load_material
from kilowatch.service.config import Settings, load_settings
from kilowatch.store.protocol import Registration

ADOPT_HELP = (
    "Adopt registered Shelly Gen2+ devices (kilowatch fleet discover registers them): for each, "
    "create its MQTT user on the managed mosquitto, set its MQTT config (--mqtt-server, its "
    "user and password, its topic prefix, rpc_ntf and status_ntf; with --tls kilowatch's CA "
    "and ssl_ca user_ca.pem), with --set-password give it a device password (Shelly.SetAuth), "
    "reboot it when it asks, wait until it is back and publishing, and confirm that its energy "
    "reaches the store. Passwords are kept in the owner-only secrets file and never printed. "
    "Safe to run again: a device already adopted is left as it is, one cut off midway is "
    "finished. Needs kilowatch serve running with its managed mosquitto on the same data dir. "
    "Exits 1 when any device failed.\n\n"
    "Examples:\n\n"
    "kilowatch fleet adopt shellypmminig3-ecda3bc4ddb0 --mqtt-server 192.168.1.2:1883\n\n"
    "kilowatch fleet adopt --all --mqtt-server 192.168.1.2:8883 --tls --set-password\n\n"
    "kilowatch fleet adopt --select 'model=S3PM*' --mqtt-server 192.168.1.2:1883 --format json"
)
FORMATS = ("table", "json")
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}

_STORE = typer.Option(None, "--store", help="Store URL (default: as serve).")
_DATA_DIR = typer.Option(None, "--data-dir", help="kilowatch's data dir (default: as serve).")
_CONFIG = typer.Option(None, "--config", help="TOML settings file.")


@dataclass(frozen=True, slots=True)
class Request:
    """What the command line asked for, checked."""

    devices: tuple[str, ...]
    all: bool
    selects: tuple[str, ...]
    options: AdoptOptions


# --- the broker address devices get ---------------------------------------------------------------


def mqtt_server(settings: Settings, given: str | None, *, tls: bool) -> tuple[str, str | None]:
    """``(host:port, warning)``: the address devices connect to, ``--mqtt-server`` or the
    settings' broker. Devices on the LAN cannot reach this machine's loopback: a loopback address
    from the settings is refused, an explicit one (devices on this machine, simulated ones)
    comes with a warning."""
    if given is not None:
        host, given_port = _split(given)
        warning = None
        if _is_loopback(host):
            warning = (
                f"devices will connect to {given}, a loopback address: only devices running on "
                "this machine (simulated ones) can reach it"
            )
        return f"{_bracket(host)}:{given_port}", warning
    port: int | None = settings.embedded_tls_port if tls else settings.mqtt_port
    if port is None:
        raise ConfigError(
            "--tls: kilowatch's broker has no TLS listener; set mqtt_tls_local = true (or "
            "mqtt_tls_cert) and restart kilowatch serve, or pass --mqtt-server HOST:PORT"
        )
    host = settings.mqtt_host
    if host in WILDCARD_HOSTS or not port:
        raise ConfigError(
            f"kilowatch's broker listens on {host or '*'}:{port}, which is no address a device "
            "can use; pass --mqtt-server with this machine's LAN address and the broker's port, "
            "e.g. --mqtt-server 192.168.1.2:1883"
        )
    if _is_loopback(host):
        raise ConfigError(
            f"kilowatch's broker listens on {host}, this machine's loopback, which devices on "
            "the LAN cannot reach; set mqtt_host to the LAN address (or 0.0.0.0), restart "
            f"kilowatch serve and pass --mqtt-server LAN-ADDRESS:{port}; for devices on this "
            f"machine (simulated ones) pass --mqtt-server {host}:{port}"
        )
    return f"{_bracket(host)}:{port}", None


def _split(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--mqtt-server {value!r} must be HOST:PORT, e.g. 192.168.1.2:1883 (the port too: "
            "plain MQTT and TLS listen on different ports)"
        )
    return host, int(port)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_material(settings: Settings, ca: str | None) -> TlsMaterial:
    """The CA devices get with ``--tls``: ``--ca FILE``, else kilowatch's local CA (made on first
    use), which signs the managed mosquitto's certificate unless mqtt_tls_cert names your own."""
    if ca is not None:
        return load_material(ca=Path(ca))
    if settings.mqtt_tls_cert is not None:
        raise ConfigError(
            f"--tls: the broker's certificate is your own ({settings.mqtt_tls_cert}); pass --ca "
            "with the CA bundle that signed it, for the devices to trust"
        )
    pem, _ = export_ca(tls_dir(settings.data_dir))
    return load_material(ca=pem)


# --- running it -----------------------------------------------------------------------------------


def _pick(registry: Sequence[Registration], request: Request) -> list[Registration]:
    if request.all:
        picked = list(registry)
    elif request.selects:
        picked = select(registry, request.selects)
    else:
        picked = []
    known = {r.device: r for r in registry}
    unknown = [d for d in request.devices if d not in known]
    if unknown:
        raise ConfigError(
            f"not in the fleet registry: {', '.join(unknown)}; kilowatch fleet discover finds "
            "devices, kilowatch fleet list shows the registry"
        )
    have = {r.device for r in picked}
    picked += [known[d] for d in dict.fromkeys(request.devices) if d not in have]
    if not picked:
        raise ConfigError(
            "no device to adopt: the registry is empty or --select matched nothing; kilowatch "
            "fleet list shows the registry"
        )
    return picked


async def run(settings: Settings, request: Request, console: Console) -> list[DeviceResult]:
    """Adopt what ``request`` names, with a progress bar on ``console``."""
    if running_pid(broker_dir(settings.data_dir)) is None:
        raise ConfigError(
            f"no managed mosquitto runs for {broker_dir(settings.data_dir)}: start kilowatch "
            "serve (broker managed or auto) on this data dir first; adopt loads the devices' "
            "users into it and confirms their energy through serve"
        )
    box = SecretBox.in_data_dir(settings.data_dir)
    async with open_existing(settings.store_url) as store:
        devices = _pick(await store.registry(), request)
        connector = aiohttp.TCPConnector(limit=2 * max(1, request.options.concurrency))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def opener(reg: Registration, password: str | None) -> ShellyRpc:
                assert reg.address is not None  # adopt checks it before opening
                return await connect_lan(
                    reg.address, session=session, password=password, device_id=reg.device
                )

            async def reload() -> object:
                return await reload_running(settings.data_dir, store)

            columns = (TextColumn("adopting"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn())  # fmt: skip
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("adopt", total=len(devices), failed=0)
                failed = 0

                def advance(result: DeviceResult) -> None:
                    nonlocal failed
                    failed += not result.ok
                    bar.update(task, advance=1, failed=failed)

                return await adopt(
                    store, devices, opener=opener, secrets_box=box, options=request.options,
                    reload=reload, on_result=advance, actor=cli_actor(),
                )  # fmt: skip


# --- rendering ------------------------------------------------------------------------------------


def counts(results: Sequence[DeviceResult]) -> dict[str, int]:
    return {o.value: sum(r.outcome is o for r in results) for o in Outcome}


def render_json(results: Sequence[DeviceResult], seconds: float) -> str:
    return orjson.dumps(
        {
            "devices": [r.to_json() for r in results],
            **counts(results),
            "seconds": round(seconds, 3),
        }
    ).decode()


def render_table(results: Sequence[DeviceResult], seconds: float, console: Console) -> None:
    table = Table(title=f"Adopted ({len(results)})")
    for col in ("device", "outcome", "done", "seconds", "failed at", "error"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            r.device, r.outcome.value, ", ".join(r.changed), f"{r.seconds:.1f}",
            "" if r.step is None else r.step.value, r.error or "",
        )  # fmt: skip
    console.print(table)
    n = counts(results)
    console.print(
        f"{n[Outcome.ADOPTED]} adopted, {n[Outcome.ALREADY]} already adopted, "
        f"{n[Outcome.FAILED]} failed in {seconds:.1f} s",
        highlight=False,
    )


# --- the command ----------------------------------------------------------------------------------


def _password(password: str | None, password_file: str | None) -> str | None:
    if password is not None and password_file is not None:
        raise ConfigError("pass --password or --password-file, not both")
    if password_file is None:
        return password
    try:
        text = Path(password_file).read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read --password-file {password_file}: {err.strerror}") from err
    if not text or not text[0]:
        raise ConfigError(f"--password-file {password_file}: its first line is empty")
    return text[0]


def register(group: typer.Typer) -> None:
    """Add ``adopt`` to the ``fleet`` group."""

    @group.command("adopt", help=ADOPT_HELP)
    def adopt_(
        devices: Annotated[
            list[str] | None, typer.Argument(help="Device ids from the fleet registry.")
        ] = None,
        all_: bool = typer.Option(False, "--all", help="Every registered device."),
        selects: Annotated[
            list[str] | None,
            typer.Option("--select", help="KEY=GLOB, as kilowatch fleet list (repeatable)."),
        ] = None,
        server: str | None = typer.Option(
            None,
            "--mqtt-server",
            help="HOST:PORT devices connect to (default: the broker of the settings, when it "
            "is an address devices can reach).",
        ),
        tls: bool = typer.Option(
            False, "--tls/--no-tls", help="MQTT over TLS, devices trusting kilowatch's CA."
        ),
        ca: str | None = typer.Option(
            None, "--ca", help="CA bundle (PEM) devices trust with --tls (default: the local CA)."
        ),
        set_password: bool = typer.Option(
            False, "--set-password", help="Give each device its own password (Shelly.SetAuth)."
        ),
        password: str | None = typer.Option(
            None,
            "--password",
            help="The password devices have now, when kilowatch keeps none for them (visible "
            "to other users in the process list: prefer --password-file).",
        ),
        password_file: str | None = typer.Option(
            None, "--password-file", help="File whose first line is that password."
        ),
        wait: float = typer.Option(
            DEFAULT_WAIT_S,
            "--wait",
            help="Seconds a device may take after its configuration to come back, publish and "
            "have its energy stored.",
        ),
        concurrency: int = typer.Option(
            DEFAULT_CONCURRENCY, "--concurrency", help="Devices adopted at once."
        ),
        fmt: str = typer.Option("table", "--format", help="table or json."),
        as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
        fmt = "json" if as_json else fmt
        if not devices and not all_ and not selects:
            raise ConfigError("name the devices to adopt: device ids, --all or --select KEY=GLOB")
        if wait <= 0 or concurrency < 1:
            raise ConfigError("--wait must be above 0 and --concurrency at least 1")
        if ca is not None and not tls:
            raise ConfigError("--ca goes with --tls")
        settings = load_settings(
            {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
        )
        address, warning = mqtt_server(settings, server, tls=tls)
        err_console = Console(stderr=True)
        if warning is not None:
            err_console.print(f"warning: {warning}", highlight=False, markup=False)
        options = AdoptOptions(
            server=address, tls=tls_material(settings, ca) if tls else None,
            set_password=set_password, password=_password(password, password_file),
            wait_s=wait, concurrency=concurrency,
        )  # fmt: skip
        request = Request(tuple(devices or ()), all_, tuple(selects or ()), options)
        started = time.monotonic()
        results = asyncio.run(run(settings, request, err_console))
        seconds = time.monotonic() - started
        if fmt == "json":
            sys.stdout.write(render_json(results, seconds) + "\n")
        else:
            render_table(results, seconds, Console(width=160))
        if any(not r.ok for r in results):
            raise typer.Exit(1)
