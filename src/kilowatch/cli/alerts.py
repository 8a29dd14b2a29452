"""``kilowatch alerts``: the alerts' current states, their history, the rules and channels,
replacing the configuration from a file, and a test notification (docs/alerts.md).

A thin shell over :mod:`kilowatch.alerts`: the service (``kilowatch serve``) evaluates and
delivers; these commands read what it stored, or write the configuration it reads at its next
evaluation.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import orjson
import typer
from rich.console import Console
from rich.table import Table

from kilowatch.alerts.channels import send_test
from kilowatch.alerts.config import (
    AlertsConfig,
    Channel,
    Rule,
    config_to_json,
    load_config,
    parse_config,
    save_config,
)
from kilowatch.alerts.state import AlertRecord, AlertState, DeliveryResult
from kilowatch.alerts.state import current as current_states
from kilowatch.alerts.state import history as alert_history
from kilowatch.cli.fleet_audit import cli_actor
from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError
from kilowatch.service.config import Settings, load_settings
from kilowatch.store import open_store
from kilowatch.store.audit import audited
from kilowatch.web.site import load_site

HELP = (
    "Alerts: rules over devices (offline, power above a threshold, daily energy above a budget, "
    "firmware update failed) and the channels that notify (signed webhook, e-mail, ntfy push). "
    "Without a sub-command: the current states (firing, pending, recently resolved). "
    "kilowatch serve evaluates the rules; see docs/alerts.md.\n\n"
    "Examples:\n\n"
    "kilowatch alerts\n\n"
    "kilowatch alerts --json --store sqlite:///var/lib/kilowatch/kilowatch.db"
)
HISTORY_HELP = (
    "The notifications sent, newest first: when, rule, device, firing/resolved/repeat, the "
    "message and per channel whether it was delivered (and in how many attempts).\n\n"
    "Examples:\n\n"
    "kilowatch alerts history\n\n"
    "kilowatch alerts history --limit 20 --json"
)
RULES_HELP = (
    "The rules and channels in force (secrets shown as ***).\n\n"
    "Examples:\n\n"
    "kilowatch alerts rules\n\n"
    "kilowatch alerts rules --json --store redis://localhost:6379/0"
)
SET_HELP = (
    "Replace the whole alerts configuration (rules and channels) with FILE's: TOML "
    '(arrays of tables named rules and channels) or JSON ({"rules": [...], "channels": [...]}), by '
    "its extension. It is checked first: an error names the rule or channel and the key, and "
    'nothing changes. A secret given as "***" keeps the one stored for the channel of that '
    "name (so the output of 'rules --json' can be edited and set again). Audited as "
    "alerts.rules; kilowatch serve picks it up at its next evaluation.\n\n"
    "Examples:\n\n"
    "kilowatch alerts set alerts.toml\n\n"
    "kilowatch alerts set alerts.json --store redis://localhost:6379/0"
)
TEST_HELP = (
    "Send a test notification through CHANNEL now (one retry) and say how it went; exit 1 if "
    "it was not delivered. Nothing is recorded in the history.\n\n"
    "Examples:\n\n"
    "kilowatch alerts test ops-hook"
)
MAX_LIMIT = 1000

_STORE = typer.Option(None, "--store", help="Store URL (default: as serve).")
_CONFIG = typer.Option(None, "--config", help="TOML settings file.")
_JSON = typer.Option(False, "--json", help="JSON instead of a table.")
_FILE = typer.Argument(..., help="A .toml or .json file of rules and channels.")
_CHANNEL_NAME = typer.Argument(..., help="The channel's name.")


def _settings(store: str | None, config: str | None) -> Settings:
    return load_settings({"store": store}, config_file=Path(config) if config else None)


def _when(ts: float | None, zone: ZoneInfo) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _value(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


# -- current ---------------------------------------------------------------------------------------


async def fetch_current(url: str, default_tz: str) -> tuple[list[AlertState], str]:
    async with open_existing(url) as store:
        site = await load_site(store, default_tz=default_tz)
        return await current_states(store), site.tz


def render_current(states: Sequence[AlertState], tz: str, console: Console) -> None:
    zone = ZoneInfo(tz)
    table = Table(title=f"Alerts ({len(states)}, times in {tz})")
    for column in ("status", "rule", "device", "since", "value", "message"):
        table.add_column(column, overflow="fold")
    styles = {"firing": "red", "pending": "yellow", "resolved": "green"}
    for s in states:
        style = styles[s.status]
        table.add_row(
            f"[{style}]{s.status}[/{style}]", s.rule, s.device, _when(s.since, zone),
            _value(s.value), s.message,
        )  # fmt: skip
    console.print(table)


# -- history ---------------------------------------------------------------------------------------


async def fetch_history(url: str, default_tz: str, limit: int) -> tuple[list[AlertRecord], str]:
    async with open_existing(url) as store:
        site = await load_site(store, default_tz=default_tz)
        return await alert_history(store, limit), site.tz


def deliveries_text(deliveries: Sequence[DeliveryResult]) -> str:
    """``hook: ok, mail: failed after 5 (error)``."""
    parts = []
    for d in deliveries:
        tries = "" if d.attempts == 1 else f" after {d.attempts}"
        parts.append(
            f"{d.channel}: ok{tries}" if d.ok else f"{d.channel}: failed{tries} ({d.error})"
        )
    return ", ".join(parts) or "no channel"


def render_history(records: Sequence[AlertRecord], tz: str, console: Console) -> None:
    zone = ZoneInfo(tz)
    table = Table(title=f"Alert history ({len(records)}, newest first, times in {tz})")
    for column in ("time", "rule", "device", "transition", "message", "delivered"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            _when(r.ts, zone), r.rule, r.device, r.transition, r.message,
            deliveries_text(r.deliveries),
        )  # fmt: skip
    console.print(table)


# -- rules -----------------------------------------------------------------------------------------


def condition_text(rule: Rule) -> str:
    """What the rule watches, in a few words."""
    if rule.kind == "offline":
        return f"offline for {rule.for_s} s"
    if rule.kind == "power_above":
        return f"{rule.channel or 'total'} > {rule.threshold_w:g} W for {rule.for_s} s"
    if rule.kind == "daily_energy_above":
        return f"> {rule.budget_wh:g} Wh per local day"
    return "firmware update failed"


def target_text(channel: Channel) -> str:
    if channel.kind == "email":
        return f"smtp://{channel.smtp_host}:{channel.smtp_port} to {', '.join(channel.recipients)}"
    parts = urlsplit(channel.url or "")
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def render_rules(cfg: AlertsConfig, console: Console) -> None:
    rules = Table(title=f"Alert rules ({len(cfg.rules)})")
    for column in ("id", "name", "kind", "devices", "condition", "repeat", "notify", "enabled"):
        rules.add_column(column, overflow="fold")
    for r in cfg.rules:
        rules.add_row(
            r.id, r.name, r.kind, " ".join(r.devices) or "all", condition_text(r),
            f"{r.repeat_s} s" if r.repeat_s else "", ", ".join(r.notify),
            "yes" if r.enabled else "no",
        )  # fmt: skip
    console.print(rules)
    channels = Table(title=f"Channels ({len(cfg.channels)})")
    for column in ("name", "kind", "target"):
        channels.add_column(column, overflow="fold")
    for c in cfg.channels:
        channels.add_row(c.name, c.kind, target_text(c))
    console.print(channels)


async def fetch_config(url: str) -> AlertsConfig:
    async with open_existing(url) as store:
        return await load_config(store)


# -- set -------------------------------------------------------------------------------------------


def read_config_file(path: Path) -> Any:
    """The data of a TOML or JSON file; :class:`ConfigError` saying what is wrong."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: give a .toml or a .json file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        if suffix == ".toml":
            return tomllib.loads(raw.decode())
        return json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()}: {err}") from None


async def set_config(url: str, data: Any, *, source: str) -> AlertsConfig:
    """Check ``data`` and store it, audited as ``alerts.rules``; the configuration stored."""
    async with open_store(url) as store:
        cfg = parse_config(data, previous=await load_config(store))
        detail = {"file": source, "rules": len(cfg.rules), "channels": len(cfg.channels)}
        async with audited(store, cli_actor(), "alerts.rules", detail=detail) as act:
            await save_config(store, cfg)
            act.detail.update(rules=len(cfg.rules), channels=len(cfg.channels))
        return cfg


# -- test ------------------------------------------------------------------------------------------


async def try_channel(url: str, name: str) -> tuple[Channel, DeliveryResult]:
    async with open_existing(url) as store:
        cfg = await load_config(store)
    channel = cfg.channel(name)
    if channel is None:
        known = ", ".join(c.name for c in cfg.channels) or "none is configured"
        raise ConfigError(f"no alert channel {name!r} (channels: {known})")
    return channel, await send_test(channel)


# -- the commands ----------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the ``alerts`` group to ``app``."""
    group = typer.Typer(help=HELP, invoke_without_command=True)
    app.add_typer(group, name="alerts")

    @group.callback()
    def alerts(
        ctx: typer.Context,
        as_json: bool = _JSON,
        store: str | None = _STORE,
        config: str | None = _CONFIG,
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        settings = _settings(store, config)
        states, tz = asyncio.run(fetch_current(settings.store_url, settings.tz))
        if as_json:
            typer.echo(orjson.dumps([s.to_json() for s in states]).decode())
        elif not states:
            typer.echo("no alerts: nothing firing, pending or recently resolved")
        else:
            render_current(states, tz, Console(width=160))

    @group.command("history", help=HISTORY_HELP)
    def history(
        limit: int = typer.Option(50, "--limit", help=f"At most N entries (1-{MAX_LIMIT})."),
        as_json: bool = _JSON,
        store: str | None = _STORE,
        config: str | None = _CONFIG,
    ) -> None:
        if not 1 <= limit <= MAX_LIMIT:
            raise ConfigError(f"--limit must be 1-{MAX_LIMIT}, got {limit}")
        settings = _settings(store, config)
        records, tz = asyncio.run(fetch_history(settings.store_url, settings.tz, limit))
        if as_json:
            for r in records:
                sys.stdout.write(orjson.dumps(r.to_json()).decode() + "\n")
        elif not records:
            typer.echo("no notifications yet")
        else:
            render_history(records, tz, Console(width=160))

    @group.command("rules", help=RULES_HELP)
    def rules(
        as_json: bool = _JSON, store: str | None = _STORE, config: str | None = _CONFIG
    ) -> None:
        cfg = asyncio.run(fetch_config(_settings(store, config).store_url))
        if as_json:
            typer.echo(json.dumps(config_to_json(cfg), indent=2))
        elif not cfg.rules and not cfg.channels:
            typer.echo("no alert rules or channels; set them with kilowatch alerts set FILE")
        else:
            render_rules(cfg, Console(width=160))

    @group.command("set", help=SET_HELP)
    def set_(
        file: Path = _FILE,
        store: str | None = _STORE,
        config: str | None = _CONFIG,
    ) -> None:
        data = read_config_file(file)
        cfg = asyncio.run(set_config(_settings(store, config).store_url, data, source=str(file)))
        typer.echo(
            f"alerts configuration set: {len(cfg.rules)} rules, {len(cfg.channels)} channels"
        )

    @group.command("test", help=TEST_HELP)
    def test(
        channel: str = _CHANNEL_NAME,
        store: str | None = _STORE,
        config: str | None = _CONFIG,
    ) -> None:
        found, result = asyncio.run(try_channel(_settings(store, config).store_url, channel))
        where = f"{found.kind} {target_text(found)}"
        if result.ok:
            typer.echo(
                f"test notification delivered through {channel} ({where}), "
                f"attempts={result.attempts}"
            )
            return
        typer.echo(
            f"error: test notification NOT delivered through {channel} ({where}) after "
            f"{result.attempts} attempts: {result.error}",
            err=True,
        )
        raise typer.Exit(1)


__all__ = ["register"]
