"""``kilowatch broker``: the managed mosquitto's per-device MQTT users and its local TLS CA.

``user add|list|rotate|revoke`` change the credentials in the store's meta. When the managed
mosquitto of the same data dir runs (``kilowatch serve`` started it), they rewrite its password
and ACL files and make it reload them (SIGHUP): the change holds at once, and a revoked or rotated
device's open connection is closed. When it does not run, only the store changes; the files are
written from the store when ``serve`` next starts it. Each change is audited
(``credentials.add``, ``credentials.rotate``, ``credentials.revoke`` by ``cli:<os user>``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table

from kilowatch.broker.credentials import (
    Credential,
    add_device,
    check_device_id,
    check_prefix,
    credentials,
    parse_kind,
    revoke_device,
    rotate_device,
)
from kilowatch.broker.mosquitto import broker_dir, reload_running
from kilowatch.broker.tls import export_ca, tls_dir
from kilowatch.cli.fleet_audit import cli_actor
from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError
from kilowatch.service.config import Settings, load_settings
from kilowatch.store import open_store
from kilowatch.store.audit import audited

ADD_HELP = (
    "Create MQTT credentials for DEVICE on the managed mosquitto and print its password (shown "
    "only this once; kilowatch keeps only its hash). The device may publish only under its own "
    "topics and read only its own RPC and command topics (--kind: shelly for Gen2 and later, "
    "gen1, tasmota). --prefix is the device's topic part when it is not the device id: a Shelly's "
    "topic_prefix, a Gen1 MQTT id, a Tasmota topic. If kilowatch serve runs its mosquitto on this "
    "data dir, the user works at once; otherwise from serve's next start.\n\n"
    "Examples:\n\n"
    "kilowatch broker user add shellypmminig3-ecda3bc4ddb0\n\n"
    "kilowatch broker user add shellyplus1pm-a8032ab12345 --prefix home/boiler\n\n"
    "kilowatch broker user add tasmota_5A3B2C --kind tasmota"
)
LIST_HELP = (
    "List the devices' MQTT users: kind, prefix, topics, created, rotated, revoked (never a "
    "password or hash).\n\n"
    "Examples:\n\n"
    "kilowatch broker user list\n\n"
    "kilowatch broker user list --format json"
)
ROTATE_HELP = (
    "Give DEVICE a new MQTT password and print it (shown once). The old password stops working "
    "at once if kilowatch serve runs its mosquitto on this data dir (the device's connection is "
    "closed), else when serve next starts it.\n\n"
    "Example:\n\n"
    "kilowatch broker user rotate shellypmminig3-ecda3bc4ddb0"
)
REVOKE_HELP = (
    "Revoke DEVICE's MQTT user: the device can no longer connect (if kilowatch serve runs its "
    "mosquitto on this data dir, its open connection is closed now). It stays in the list, "
    "marked revoked; kilowatch broker user add DEVICE lets it in again with a new password.\n\n"
    "Example:\n\n"
    "kilowatch broker user revoke shellypmminig3-ecda3bc4ddb0"
)
CA_EXPORT_HELP = (
    "Write the local CA certificate (PEM) that signs the managed mosquitto's TLS certificate to "
    "FILE, or to stdout without one; the CA is made on first use. Upload it to a Shelly with "
    "Shelly.PutUserCA and set ssl_ca to user_ca.pem in MQTT.SetConfig.\n\n"
    "Examples:\n\n"
    "kilowatch broker ca export kilowatch-ca.pem\n\n"
    "kilowatch broker ca export"
)
FORMATS = ("table", "json")

_STORE = typer.Option(None, "--store", help="Store URL (default: as serve).")
_DATA_DIR = typer.Option(None, "--data-dir", help="kilowatch's data dir (default: as serve).")
_CONFIG = typer.Option(None, "--config", help="TOML settings file.")


def _settings(store: str | None, data_dir: str | None, config: str | None) -> Settings:
    return load_settings(
        {"store": store, "data_dir": data_dir}, config_file=Path(config) if config else None
    )


async def _add(
    s: Settings, device: str, kind: str, prefix: str | None
) -> tuple[Credential, str, int | None]:
    async with open_store(s.store_url) as store:
        async with audited(store, cli_actor(), "credentials.add", devices=[device]):
            record, password = await add_device(
                store, device, kind=parse_kind(kind), prefix=prefix, now=time.time()
            )
        return record, password, await reload_running(s.data_dir, store)


async def _rotate(s: Settings, device: str) -> tuple[Credential, str, int | None]:
    async with open_existing(s.store_url) as store:
        async with audited(store, cli_actor(), "credentials.rotate", devices=[device]):
            record, password = await rotate_device(store, device, now=time.time())
        return record, password, await reload_running(s.data_dir, store)


async def _revoke(s: Settings, device: str) -> tuple[Credential, bool, int | None]:
    async with open_existing(s.store_url) as store:
        before = (await credentials(store)).get(device)
        async with audited(store, cli_actor(), "credentials.revoke", devices=[device]):
            record = await revoke_device(store, device, now=time.time())
        was_revoked = before is not None and before.revoked
        return record, was_revoked, await reload_running(s.data_dir, store)


async def _list(s: Settings) -> list[Credential]:
    async with open_existing(s.store_url) as store:
        return sorted((await credentials(store)).values(), key=lambda r: r.device)


def _say_reloaded(pid: int | None, s: Settings) -> None:
    if pid is not None:
        typer.echo(f"mosquitto (pid {pid}) reloaded its users: in effect now")
    else:
        typer.echo(
            f"no managed mosquitto runs for {broker_dir(s.data_dir)}: in effect when kilowatch "
            "serve starts it"
        )


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _table(records: list[Credential]) -> None:
    table = Table(title=f"MQTT users ({len(records)})")
    for col in ("device", "user", "kind", "prefix", "created (UTC)", "rotated (UTC)", "state"):
        table.add_column(col, overflow="fold")
    for r in records:
        state = f"revoked {_when(r.revoked_at)}" if r.revoked else "active"
        table.add_row(
            r.device, r.user, r.kind.value, r.prefix, _when(r.created), _when(r.rotated), state
        )
    Console(width=160).print(table)


def _register_users(group: typer.Typer) -> None:
    users = typer.Typer(
        help="Per-device MQTT users of the managed mosquitto.", no_args_is_help=True
    )
    group.add_typer(users, name="user")

    @users.command("add", help=ADD_HELP)
    def add(
        device: str = typer.Argument(..., help="Device id; also its MQTT user name."),
        prefix: str | None = typer.Option(None, "--prefix", help="Topic part (default: DEVICE)."),
        kind: str = typer.Option("shelly", "--kind", help="shelly, gen1 or tasmota."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        # checked before the store is opened: bad input creates nothing
        check_device_id(device)
        if prefix is not None:
            check_prefix(prefix, parse_kind(kind))
        parse_kind(kind)
        s = _settings(store, data_dir, config)
        record, password, pid = asyncio.run(_add(s, device, kind, prefix))
        typer.echo(f"created MQTT user {record.user} ({record.kind.value}, prefix {record.prefix})")
        typer.echo(f"password: {password}")
        typer.echo("(shown once: kilowatch keeps only its hash)")
        _say_reloaded(pid, s)

    @users.command("list", help=LIST_HELP)
    def list_(
        fmt: str = typer.Option("table", "--format", help="table or json."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown --format {fmt!r}; use one of: {', '.join(FORMATS)}")
        records = asyncio.run(_list(_settings(store, data_dir, config)))
        if fmt == "json":
            typer.echo(orjson.dumps([r.public_json() for r in records]).decode())
        else:
            _table(records)

    @users.command("rotate", help=ROTATE_HELP)
    def rotate(
        device: str = typer.Argument(..., help="Device id."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        s = _settings(store, data_dir, config)
        record, password, pid = asyncio.run(_rotate(s, device))
        typer.echo(f"new password for MQTT user {record.user}: {password}")
        typer.echo("(shown once: kilowatch keeps only its hash; the old password is void)")
        _say_reloaded(pid, s)

    @users.command("revoke", help=REVOKE_HELP)
    def revoke(
        device: str = typer.Argument(..., help="Device id."),
        store: str | None = _STORE,
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        s = _settings(store, data_dir, config)
        record, was_revoked, pid = asyncio.run(_revoke(s, device))
        if was_revoked:
            typer.echo(f"MQTT user {record.user} was already revoked ({_when(record.revoked_at)})")
        else:
            typer.echo(f"revoked MQTT user {record.user}")
        _say_reloaded(pid, s)


def _register_ca(group: typer.Typer) -> None:
    ca = typer.Typer(help="The local CA of the managed mosquitto's TLS.", no_args_is_help=True)
    group.add_typer(ca, name="ca")

    @ca.command("export", help=CA_EXPORT_HELP)
    def export(
        file: str | None = typer.Argument(None, help="Output file (default: stdout)."),
        data_dir: str | None = _DATA_DIR,
        config: str | None = _CONFIG,
    ) -> None:
        directory = tls_dir(_settings(None, data_dir, config).data_dir)
        pem, created = export_ca(directory)
        if created:
            typer.echo(f"created a local CA in {directory}", err=True)
        if file is None or file == "-":
            typer.echo(pem.decode(), nl=False)
            return
        try:
            Path(file).write_bytes(pem)
        except OSError as err:
            raise ConfigError(f"cannot write {file}: {err.strerror}") from err
        typer.echo(f"wrote the CA certificate to {file}", err=True)


def register(app: typer.Typer) -> None:
    """Add the ``broker`` command group to ``app``."""
    group = typer.Typer(
        help="The managed mosquitto: per-device MQTT users and the TLS CA.", no_args_is_help=True
    )
    app.add_typer(group, name="broker")
    _register_users(group)
    _register_ca(group)
