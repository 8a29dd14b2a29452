"""What a fleet action needs around it: the way to each registered device and its password.

Shared by the CLI (``kilowatch fleet plan/apply/firmware``, ``backfill``) and the dashboard's
Fleet page, which cannot import the CLI: the owner-only secrets file under the data dir, one
HTTP session for the LAN transport, and, for devices reached over MQTT, an RPC client on a
broker (``--broker URL`` in the CLI; the managed mosquitto's own user in ``kilowatch serve``).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kilowatch.errors import ConfigError
from kilowatch.fleet import compliance
from kilowatch.fleet.apply import (
    ApplyOptions,
    ApplyReport,
    Progress,
    SecretPasswords,
    Status,
    apply_fleet,
    plan_fleet,
)
from kilowatch.fleet.plan import DevicePlan
from kilowatch.fleet.profile import Profile
from kilowatch.fleet.registry import open_rpc
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.service.config import Settings, parse_broker_url
from kilowatch.store.audit import audited
from kilowatch.store.protocol import Registration, Store

PROFILES_DIR = "profiles"
"""Where the dashboard finds the profiles it offers: ``<data_dir>/profiles/*.toml``."""


def broker_client(url: str | None, settings: Settings) -> AbstractAsyncContextManager[Any]:
    """The ``MqttRpc`` of a broker URL (TLS against the settings' ``mqtt_ca`` for
    ``mqtts://``), or a context giving ``None`` without one. A bad URL is a
    :class:`ConfigError` naming it."""
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


Opener = Callable[[Registration], AbstractAsyncContextManager[ShellyRpc]]


@dataclass(frozen=True, slots=True)
class FleetAccess:
    """An open way to the registered devices: ``opener`` gives an RPC client to one device,
    ``passwords`` the secrets file's device passwords (``apply`` writes new ones there),
    ``secrets`` the file itself, ``session`` the LAN's HTTP session, ``mqtt`` the broker's
    RPC client (``None``: devices reachable over MQTT only fail with a clear error)."""

    opener: Opener
    passwords: SecretPasswords
    secrets: SecretBox
    session: aiohttp.ClientSession
    mqtt: MqttRpc | None


@asynccontextmanager
async def fleet_access(settings: Settings, broker: str | None) -> AsyncIterator[FleetAccess]:
    """Open :class:`FleetAccess` for the settings' data dir and ``broker`` (a URL or ``None``)."""
    box = SecretBox.in_data_dir(settings.data_dir)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        broker_client(broker, settings) as mqtt,
    ):

        def opener(reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
            return open_rpc(reg, secrets=box, session=session, mqtt=mqtt)

        yield FleetAccess(opener, SecretPasswords(box), box, session, mqtt)


def profiles_dir(data_dir: Path) -> Path:
    """``<data_dir>/profiles``: the profiles the dashboard lists (made by the owner)."""
    return Path(data_dir) / PROFILES_DIR


def list_profiles(data_dir: Path) -> list[str]:
    """The ``*.toml`` file names in :func:`profiles_dir`, sorted (none when it is missing)."""
    directory = profiles_dir(data_dir)
    try:
        return sorted(p.name for p in directory.glob("*.toml") if p.is_file())
    except OSError:
        return []


def profile_path(data_dir: Path, name: str) -> Path:
    """The path of the profile called ``name`` (a file name listed by :func:`list_profiles`);
    anything else (a path, a name not listed) is a :class:`ConfigError` naming what exists."""
    names = list_profiles(data_dir)
    if name not in names:
        shown = ", ".join(names) or f"none: put *.toml profiles in {profiles_dir(data_dir)}"
        raise ConfigError(f"no profile {name!r}; the profiles are: {shown}")
    return profiles_dir(data_dir) / name


# --- plan and apply, with what they leave behind ----------------------------------------------


async def plan_and_record(
    store: Store,
    profile: Profile,
    targets: Sequence[Registration],
    access: FleetAccess,
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> list[DevicePlan]:
    """Plan ``targets`` and keep each device's compliance. A plan writes nothing to a device and
    is not audited."""
    plans = await plan_fleet(
        profile, targets, access.opener, passwords=access.passwords,
        concurrency=concurrency, progress=progress,
    )  # fmt: skip
    await compliance.record(store, compliance.from_plans(profile.path.name, plans, time.time()))
    return plans


async def apply_and_record(
    store: Store,
    profile: Profile,
    targets: Sequence[Registration],
    access: FleetAccess,
    *,
    actor: str,
    options: ApplyOptions,
    progress: Progress | None = None,
) -> ApplyReport:
    """Apply ``profile`` to ``targets`` and keep what it leaves: the audit entries
    (``fleet.apply`` by ``actor``: ``ok``, ``partial`` or ``failed`` with the counts; a dry run
    is not audited), the registry's new prefixes and scripts (:func:`registry_updates`), and
    each device's compliance."""

    async def run() -> ApplyReport:
        return await apply_fleet(
            profile, targets, access.opener, passwords=access.passwords, options=options,
            progress=progress,
        )  # fmt: skip

    name = profile.path.name
    if options.dry_run:
        report = await run()
    else:
        detail = {"profile": name}
        devices = [t.device for t in targets]
        async with audited(store, actor, "fleet.apply", devices=devices, detail=detail) as act:
            report = await run()
            act.result = apply_result(report)
            act.detail = {**detail, **report.summary()}
        records = registry_updates(profile, report)
        if records:
            await store.register(records)
    await compliance.record(store, compliance.from_report(name, report, time.time()))
    return report


def apply_result(report: ApplyReport) -> str:
    """The audit result of an apply: ``ok``, ``partial`` (some devices failed) or ``failed``
    (every device did)."""
    failed = report.count(Status.FAILED)
    if not failed:
        return "ok"
    return "failed" if failed == len(report.devices) else "partial"


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


__all__ = [
    "PROFILES_DIR",
    "FleetAccess",
    "Opener",
    "apply_and_record",
    "apply_result",
    "broker_client",
    "fleet_access",
    "list_profiles",
    "plan_and_record",
    "profile_path",
    "profiles_dir",
    "registry_updates",
]
