"""The fleet registry: what discovery found, kept in the store, and the way back to each device.

* :func:`registration_for` and :func:`record_found` turn :class:`~kilowatch.fleet.discovery.Found`
  devices into :class:`~kilowatch.store.Registration` records (one ``Store.register`` call);
* :func:`select` picks registered devices with ``--select`` expressions (``model=S3PM*``);
* :func:`open_rpc` opens a :class:`~kilowatch.fleet.rpc.ShellyRpc` to a registered device, on the
  LAN with its password from the secrets file, or over the broker.

Secrets never pass through here except on their way to the device: a registration holds only the
reference of its secrets (``credentials``, the device id).
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import aiohttp

from kilowatch.errors import FleetError
from kilowatch.fleet.discovery import Found
from kilowatch.fleet.rpc import ShellyRpc
from kilowatch.fleet.rpc.lan import connect_lan
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.store.protocol import Registration, Store

LAN = "lan"
MQTT = "mqtt"
"""The two values of ``Registration.transport``."""


def registration_for(found: Found, *, now: float) -> Registration:
    """The registry record of a device discovery found at ``now`` (unix seconds).

    Transport ``lan`` when it has an address, else ``mqtt``; its topic prefix is the one seen on
    the broker, else the device id (the firmware's default ``topic_prefix``, §1); its secrets'
    reference is its id. ``room`` and ``adopted_at`` are left as stored (``None``).
    """
    return Registration(
        device=found.device,
        mac=found.mac,
        model=found.model,
        gen=found.gen,
        fw_ver=found.fw_ver,
        app=found.app,
        address=found.address,
        transport=LAN if found.address is not None else MQTT,
        prefix=found.prefix if found.prefix is not None else found.device,
        credentials=found.device,
        name=found.name,
        discovered_by=str(found.how),
        seen_at=now,
    )


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What :func:`record_found` did, device ids by outcome (each sorted)."""

    new: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def outcome(self, device: str) -> str:
        """``new``, ``updated`` or ``unchanged`` (``""`` for a device not recorded)."""
        for name in ("new", "updated", "unchanged"):
            if device in getattr(self, name):
                return name
        return ""


_NOT_COMPARED = {"seen_at"}
"""Fields a sighting always changes: they do not make a device 'updated'."""


async def record_found(store: Store, found: Sequence[Found], *, now: float) -> RecordSummary:
    """Register every device of ``found`` in one ``store.register`` call and say which were new,
    updated (anything but ``seen_at`` changed) or unchanged; the same discovery run twice gives
    all unchanged the second time.

    What is stored and a sighting cannot know stays: who found it first (``discovered_by``), a
    prefix the broker showed when this sighting has none, the transport and address of a device
    now seen on the broker only, a secrets reference adoption set, the name once it has one.
    """
    stored = {r.device: r for r in await store.registry()}
    records: list[Registration] = []
    new: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for f in found:
        record = registration_for(f, now=now)
        old = stored.get(f.device)
        if old is None:
            new.append(f.device)
        else:
            record = _keep_stored(record, f, old)
            same = _compared(overlay(old, record)) == _compared(old)
            (unchanged if same else updated).append(f.device)
        records.append(record)
    if records:
        await store.register(records)
    return RecordSummary(tuple(sorted(new)), tuple(sorted(updated)), tuple(sorted(unchanged)))


def _keep_stored(record: Registration, found: Found, old: Registration) -> Registration:
    keep: dict[str, Any] = {}
    if old.discovered_by is not None:
        keep["discovered_by"] = None
    if found.prefix is None and old.prefix is not None:
        keep["prefix"] = None
    if found.address is None and old.address is not None:
        keep["transport"] = None
    if old.credentials is not None:
        keep["credentials"] = None
    if old.name is not None:
        # The registry's name is the installer's (``{{ device.name }}`` in profiles): the name a
        # device reports only fills it in once. Taking it again at each sighting would feed a
        # profile's ``name = "{{ device.name }} ({{ device.room }})"`` its own output.
        keep["name"] = None
    return replace(record, **keep)


def overlay(stored: Registration, update: Registration) -> Registration:
    """``stored`` with ``update``'s fields that are not ``None``: what ``Store.register`` keeps."""
    changes = {
        f.name: getattr(update, f.name)
        for f in fields(Registration)
        if getattr(update, f.name) is not None
    }
    return replace(stored, **changes)


def _compared(record: Registration) -> tuple[Any, ...]:
    return tuple(
        getattr(record, f.name) for f in fields(Registration) if f.name not in _NOT_COMPARED
    )


# --- selection ----------------------------------------------------------------------------------

SELECT_KEYS: dict[str, Callable[[Registration], object]] = {
    "id": lambda r: r.device,
    "model": lambda r: r.model,
    "app": lambda r: r.app,
    "name": lambda r: r.name,
    "room": lambda r: r.room,
    "fw": lambda r: r.fw_ver,
    "gen": lambda r: r.gen,
    "address": lambda r: r.address,
    "transport": lambda r: r.transport,
}
"""What ``--select KEY=GLOB`` can match, and the registry field each reads."""


@dataclass(frozen=True, slots=True)
class _Term:
    key: str
    pattern: str

    def matches(self, record: Registration) -> bool:
        value = SELECT_KEYS[self.key](record)
        text = "" if value is None else str(value)
        return fnmatch.fnmatchcase(text.lower(), self.pattern.lower())


def parse_selection(expressions: Sequence[str]) -> list[_Term]:
    """The terms of ``--select`` expressions, all of which a device must match: ``KEY=GLOB``
    (``model=S3PM*``), several per expression separated by commas, a bare glob being an id glob.
    Raises :class:`FleetError` on an unknown key, listing the valid ones."""
    terms: list[_Term] = []
    for expression in expressions:
        for part in (p.strip() for p in expression.split(",")):
            if not part:
                continue
            key, sep, pattern = part.partition("=")
            if not sep:
                key, pattern = "id", part
            key = key.strip().lower()
            if key not in SELECT_KEYS:
                raise FleetError(
                    f"--select {expression}",
                    f"unknown key {key!r}; use KEY=GLOB with KEY one of {', '.join(SELECT_KEYS)} "
                    "(a bare GLOB matches ids)",
                )
            terms.append(_Term(key, pattern.strip()))
    return terms


def select(registrations: Iterable[Registration], expressions: Sequence[str]) -> list[Registration]:
    """The registrations that match every ``--select`` expression (see :func:`parse_selection`;
    globs as in ``fnmatch``, case-insensitive; a field not set matches only ``*``). No
    expressions select everything."""
    terms = parse_selection(expressions)
    return [r for r in registrations if all(t.matches(r) for t in terms)]


# --- the way back to a device ---------------------------------------------------------------------


@asynccontextmanager
async def open_rpc(
    reg: Registration,
    *,
    secrets: SecretBox | None,
    session: aiohttp.ClientSession,
    mqtt: MqttRpc | None,
) -> AsyncIterator[ShellyRpc]:
    """A :class:`ShellyRpc` to the registered device, closed on exit.

    On the LAN when it has an address (its device password from ``secrets`` under its
    ``credentials`` reference, when it has one), unless its transport is ``mqtt`` and ``mqtt``
    is given; over the broker by its prefix otherwise. :class:`FleetError` when neither way is
    open (no address, and no prefix or no broker).
    """
    if reg.address is not None and not (reg.transport == MQTT and mqtt is not None):
        password = await _device_password(reg, secrets)
        rpc = await connect_lan(
            reg.address, session=session, password=password, device_id=reg.device
        )
    elif mqtt is not None and reg.prefix is not None:
        rpc = mqtt.device(reg.prefix, device_id=reg.device)
    elif reg.prefix is not None:
        raise FleetError(
            reg.device,
            f"reachable over MQTT only (prefix {reg.prefix}) and no broker is connected; pass "
            "--broker, or discover it on the LAN",
        )
    else:
        raise FleetError(
            reg.device, "the registry has neither an address nor an MQTT prefix for it; discover it"
        )
    async with rpc:
        yield rpc


async def _device_password(reg: Registration, secrets: SecretBox | None) -> str | None:
    if secrets is None:
        return None
    # the secrets file is read with blocking I/O (and a lock): off the event loop
    stored = await asyncio.to_thread(secrets.get, reg.credentials or reg.device)
    return None if stored is None else stored.device_password


# --- rendering ------------------------------------------------------------------------------------


def registration_json(reg: Registration) -> dict[str, Any]:
    """A registration as JSON-able data (it holds no secret: ``credentials`` is a reference)."""
    out = {f.name: getattr(reg, f.name) for f in fields(Registration) if f.name != "script"}
    script = reg.script
    out["script"] = (
        None if script is None else {f.name: getattr(script, f.name) for f in fields(script)}
    )
    return out


__all__ = [
    "LAN",
    "MQTT",
    "SELECT_KEYS",
    "RecordSummary",
    "open_rpc",
    "overlay",
    "parse_selection",
    "record_found",
    "registration_for",
    "registration_json",
    "select",
]
