"""Per-device MQTT credentials and topic rules for the managed mosquitto, kept in the store's meta.

``broker.credentials`` → ``{device id: record}``; a record (:class:`Credential`) holds the MQTT user
name, the password's hash (never the password: it is shown once, when it is made), the topics the
device may publish and read, when it was created and last rotated, and whether it is revoked.

Everything here but the ``async`` store functions and :func:`write_private` is pure: records
in, mosquitto's ``password_file`` and ``acl_file`` text out (:func:`render_password_file`,
:func:`render_acl_file`). The password hashes are mosquitto 2.x's own ``$7$`` format
(PBKDF2-HMAC-SHA512), so mosquitto checks them itself and the file needs no conversion.

What each kind of device may do (``<p>`` is its prefix, ``<id>`` its device id):

- ``shelly`` (Gen2 and later): publish ``<p>/#`` and ``/system/<id>/status`` (kilowatch's hourly
  metering script); read ``<p>/rpc`` and ``<p>/command/#`` (docs: shelly-api.md §7.3).
- ``gen1``: publish and read ``shellies/<p>/#``; publish ``shellies/announce``, read
  ``shellies/command`` (the Gen1 broadcast topics, §19).
- ``tasmota``: publish ``tele/<p>/#`` and ``stat/<p>/#``; read ``cmnd/<p>/#`` (§20).

kilowatch's own user (:data:`SERVICE_USER`) reads and writes everything (``#``).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from kilowatch.broker.passwords import mosquitto_hash, verify_password
from kilowatch.errors import ConfigError
from kilowatch.store.protocol import Store

CREDENTIALS_KEY = "broker.credentials"
"""The store meta key holding ``{device id: credential record}``."""
SERVICE_USER = "kilowatch"
"""kilowatch's own MQTT user on the managed broker (the intake); no device may take this name."""
PASSWORD_BYTES = 18
"""Random bytes per generated password: 144 bits, 24 URL-safe characters."""
MAX_DEVICE_ID = 128
MAX_PREFIX = 300
"""Shelly's limit for ``topic_prefix`` (MQTT.SetConfig; shelly-api.md §7.1)."""

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FORBIDDEN_IN_PREFIX = set("#+%?") | {"\x00"}


class DeviceKind(StrEnum):
    """The families whose topics :func:`topics_for` knows."""

    SHELLY = "shelly"
    """Shelly Gen2 and later (``<prefix>/...``)."""
    GEN1 = "gen1"
    """Shelly Gen1 (``shellies/<id>/...``)."""
    TASMOTA = "tasmota"
    """Tasmota (``tele/<topic>/...``, ``stat/...``, ``cmnd/...``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """One device's MQTT user on the managed broker."""

    device: str
    user: str
    kind: DeviceKind
    prefix: str
    """The device's own topic part: Shelly ``topic_prefix``, Gen1 MQTT id, Tasmota topic."""
    password_hash: str
    """mosquitto ``$7$`` hash; the password itself is never stored."""
    publish: tuple[str, ...]
    """Topic filters the device may publish to."""
    subscribe: tuple[str, ...]
    """Topic filters the device may receive messages from."""
    created: float
    rotated: float | None = None
    revoked: bool = False
    revoked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as kept in the store's meta (hash included)."""
        return {**self.public_json(), "hash": self.password_hash}

    def public_json(self) -> dict[str, Any]:
        """The record without its hash: what ``kilowatch broker user list`` shows."""
        return {
            "device": self.device,
            "user": self.user,
            "kind": self.kind.value,
            "prefix": self.prefix,
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "created": self.created,
            "rotated": self.rotated,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Credential:
        return cls(
            device=str(data["device"]),
            user=str(data["user"]),
            kind=DeviceKind(data["kind"]),
            prefix=str(data["prefix"]),
            password_hash=str(data["hash"]),
            publish=tuple(data["publish"]),
            subscribe=tuple(data["subscribe"]),
            created=float(data["created"]),
            rotated=None if data.get("rotated") is None else float(data["rotated"]),
            revoked=bool(data.get("revoked", False)),
            revoked_at=None if data.get("revoked_at") is None else float(data["revoked_at"]),
        )


# --- passwords ------------------------------------------------------------------------------------


def generate_password() -> str:
    """A new random password (URL-safe, so it fits in ``mqtt://user:password@host`` as is)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


# --- records --------------------------------------------------------------------------------------


def check_device_id(device: str) -> str:
    """``device`` if it can be an MQTT user name and topic level, else :class:`ConfigError`."""
    if not _DEVICE_ID.fullmatch(device) or len(device) > MAX_DEVICE_ID:
        raise ConfigError(
            f"device id {device!r} must be 1-{MAX_DEVICE_ID} letters, digits or . _ - (starting "
            "with a letter or digit), e.g. shellypmminig3-ecda3bc4ddb0"
        )
    if device == SERVICE_USER:
        raise ConfigError(f"{SERVICE_USER!r} is kilowatch's own MQTT user, not a device id")
    return device


def check_prefix(prefix: str, kind: DeviceKind) -> str:
    """``prefix`` if it is a valid topic part for ``kind``, else :class:`ConfigError`."""
    what = "--prefix"
    if not prefix or len(prefix) > MAX_PREFIX:
        raise ConfigError(f"{what} must have 1-{MAX_PREFIX} characters")
    if prefix.startswith("$"):
        raise ConfigError(f"{what} {prefix!r} must not start with $ (reserved for the broker)")
    bad = sorted({c for c in prefix if c in _FORBIDDEN_IN_PREFIX or c.isspace()})
    if bad:
        raise ConfigError(f"{what} {prefix!r} must not contain {' '.join(map(repr, bad))}")
    if kind is not DeviceKind.SHELLY and "/" in prefix:
        raise ConfigError(f"{what} {prefix!r} of a {kind.value} device is one topic level: no /")
    return prefix


def parse_kind(value: str) -> DeviceKind:
    try:
        return DeviceKind(value)
    except ValueError:
        kinds = ", ".join(k.value for k in DeviceKind)
        raise ConfigError(f"--kind {value!r} is not one of: {kinds}") from None


def topics_for(
    kind: DeviceKind, device: str, prefix: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(publish, subscribe)`` topic filters a device of ``kind`` needs (see the module doc)."""
    if kind is DeviceKind.SHELLY:
        return (f"{prefix}/#", f"/system/{device}/status"), (f"{prefix}/rpc", f"{prefix}/command/#")
    if kind is DeviceKind.GEN1:
        own = f"shellies/{prefix}/#"
        return (own, "shellies/announce"), (own, "shellies/command")
    return (f"tele/{prefix}/#", f"stat/{prefix}/#"), (f"cmnd/{prefix}/#",)


def new_credential(
    device: str,
    *,
    kind: DeviceKind,
    prefix: str | None,
    now: float,
    password: str | None = None,
) -> tuple[Credential, str]:
    """A fresh record for ``device`` and its password (shown once, never stored); ``password``
    is generated unless given."""
    device = check_device_id(device)
    prefix = check_prefix(device if prefix is None else prefix, kind)
    publish, subscribe = topics_for(kind, device, prefix)
    password = generate_password() if password is None else password
    record = Credential(
        device=device,
        user=device,
        kind=kind,
        prefix=prefix,
        password_hash=mosquitto_hash(password),
        publish=publish,
        subscribe=subscribe,
        created=now,
    )
    return record, password


def rotate(
    record: Credential, *, now: float, password: str | None = None
) -> tuple[Credential, str]:
    """``record`` with a new password, generated unless given (the old one stops working at the
    broker's next reload)."""
    password = generate_password() if password is None else password
    return replace(record, password_hash=mosquitto_hash(password), rotated=now), password


def accepts(record: Credential, password: str) -> bool:
    """Whether the broker lets ``record``'s user in with ``password`` (active, hash matches)."""
    return not record.revoked and verify_password(password, record.password_hash)


def revoke(record: Credential, *, now: float) -> Credential:
    """``record`` revoked: it leaves the password and ACL files; an already revoked one is kept."""
    return record if record.revoked else replace(record, revoked=True, revoked_at=now)


# --- mosquitto's files ----------------------------------------------------------------------------


def render_password_file(records: Iterable[Credential], service_hash: str | None = None) -> str:
    """mosquitto's ``password_file``: ``user:$7$...`` per active device, and kilowatch's user.

    No comment lines: mosquitto's password file format has none to rely on.
    """
    lines = [f"{SERVICE_USER}:{service_hash}"] if service_hash else []
    lines += [f"{r.user}:{r.password_hash}" for r in _active(records)]
    return "".join(f"{line}\n" for line in lines)


def render_acl_file(records: Iterable[Credential], *, anonymous: bool = False) -> str:
    """mosquitto's ``acl_file``: kilowatch's user may do anything, each device its own topics.

    ``anonymous``: the lines before the first ``user`` line apply to clients without a user name;
    with it they may read and write everything, which only makes sense when mosquitto listens on
    loopback alone (it then allows anonymous clients, like the embedded broker; beyond loopback
    the config has ``allow_anonymous false`` and this section is left out).
    """
    out = ["# Written by kilowatch from the store's broker credentials; edits are overwritten."]
    if anonymous:
        out += ["# anonymous clients (mosquitto listens on loopback only)", "topic readwrite #"]
    for rule in topic_rules(records):
        out += ["", f"user {rule.user}"]
        both = set(rule.publish) & set(rule.subscribe)
        out += [f"topic readwrite {t}" for t in rule.publish if t in both]
        out += [f"topic write {t}" for t in rule.publish if t not in both]
        out += [f"topic read {t}" for t in rule.subscribe if t not in both]
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class TopicRule:
    """What one MQTT user may do: the topic filters it may publish to and read from."""

    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def topic_rules(records: Iterable[Credential]) -> list[TopicRule]:
    """Every user's topics, the one rule for both brokers: kilowatch's own user everything
    (``#``), then each active device its own (by user name); revoked devices have none.

    :func:`render_acl_file` writes mosquitto's ``acl_file`` from it; the embedded broker's
    :class:`~kilowatch.broker.embedded.acl.Acl` enforces it.
    """
    return [TopicRule(SERVICE_USER, ("#",), ("#",))] + [
        TopicRule(r.user, r.publish, r.subscribe) for r in _active(records)
    ]


def _active(records: Iterable[Credential]) -> list[Credential]:
    return sorted((r for r in records if not r.revoked), key=lambda r: r.user)


def write_private(path: Path, text: str | bytes) -> None:
    """Write ``path`` owner-only (0600), atomically: readers see the old file or the new one."""
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the store ------------------------------------------------------------------------------------


async def credentials(store: Store) -> dict[str, Credential]:
    """Every device's record (revoked ones included), by device id."""
    data = await store.get_meta(CREDENTIALS_KEY)
    if not isinstance(data, dict):
        return {}
    return {device: Credential.from_json(record) for device, record in data.items()}


async def _save(store: Store, records: Mapping[str, Credential]) -> None:
    await store.put_meta(CREDENTIALS_KEY, {d: r.to_json() for d, r in sorted(records.items())})


async def add_device(
    store: Store, device: str, *, kind: DeviceKind, prefix: str | None, now: float
) -> tuple[Credential, str]:
    """Create ``device``'s credentials and return them with the password (shown once).

    A revoked device gets new credentials; an active one is a :class:`ConfigError` (rotate it).
    """
    records = await credentials(store)
    old = records.get(device)
    if old is not None and not old.revoked:
        raise ConfigError(
            f"device {device!r} already has credentials; for a new password run: "
            f"kilowatch broker user rotate {device}"
        )
    record, password = new_credential(device, kind=kind, prefix=prefix, now=now)
    records[device] = record
    await _save(store, records)
    return record, password


@dataclass(frozen=True, slots=True, kw_only=True)
class NewUser:
    """One device of :func:`add_devices`: its kind, its prefix (``None``: the device id) and its
    password (``None``: one is generated)."""

    device: str
    kind: DeviceKind = DeviceKind.SHELLY
    prefix: str | None = None
    password: str | None = None


async def add_devices(
    store: Store, items: Iterable[NewUser], *, now: float
) -> dict[str, tuple[Credential, str]]:
    """:func:`add_device` for many devices in one read and one write of the store's meta (so
    concurrent adoptions cannot lose each other's records): ``{device: (record, password)}``.

    All or nothing: a device that is active already, listed twice or invalid is a
    :class:`ConfigError` and nothing is written. Revoked devices get new credentials.
    """
    items = list(items)
    _no_duplicates(item.device for item in items)
    records = await credentials(store)
    made: dict[str, tuple[Credential, str]] = {}
    for item in items:
        old = records.get(item.device)
        if old is not None and not old.revoked:
            raise ConfigError(
                f"device {item.device!r} already has credentials; for a new password run: "
                f"kilowatch broker user rotate {item.device}"
            )
        record, password = new_credential(
            item.device, kind=item.kind, prefix=item.prefix, now=now, password=item.password
        )
        made[item.device] = (record, password)
    if made:
        records.update({device: record for device, (record, _) in made.items()})
        await _save(store, records)
    return made


async def rotate_devices(
    store: Store, passwords: Mapping[str, str | None], *, now: float
) -> dict[str, tuple[Credential, str]]:
    """:func:`rotate_device` for many devices in one read and one write: ``passwords`` maps each
    device to its new password (``None``: one is generated). All or nothing: an unknown or revoked
    device is a :class:`ConfigError` and nothing is written."""
    records = await credentials(store)
    done: dict[str, tuple[Credential, str]] = {}
    for device, password in passwords.items():
        record = _active_record(records, device)
        done[device] = rotate(record, now=now, password=password)
    if done:
        records.update({device: record for device, (record, _) in done.items()})
        await _save(store, records)
    return done


def _no_duplicates(devices: Iterable[str]) -> None:
    seen: set[str] = set()
    for device in devices:
        if device in seen:
            raise ConfigError(f"device {device!r} is listed twice")
        seen.add(device)


async def rotate_device(store: Store, device: str, *, now: float) -> tuple[Credential, str]:
    """Give ``device`` a new password; return the record and the password (shown once)."""
    records = await credentials(store)
    records[device], password = rotate(_active_record(records, device), now=now)
    await _save(store, records)
    return records[device], password


async def revoke_device(store: Store, device: str, *, now: float) -> Credential:
    """Revoke ``device`` (kept in the list, marked revoked); revoking twice changes nothing."""
    records = await credentials(store)
    records[device] = revoke(_existing(records, device), now=now)
    await _save(store, records)
    return records[device]


def _active_record(records: Mapping[str, Credential], device: str) -> Credential:
    record = _existing(records, device)
    if record.revoked:
        raise ConfigError(
            f"device {device!r} is revoked; to let it in again run: kilowatch broker user add "
            f"{device} --kind {record.kind.value} --prefix {record.prefix}"
        )
    return record


def _existing(records: Mapping[str, Credential], device: str) -> Credential:
    record = records.get(device)
    if record is None:
        raise ConfigError(
            f"device {device!r} has no broker credentials; kilowatch broker user list shows the "
            f"devices that have, kilowatch broker user add {device} creates them"
        )
    return record


__all__ = [
    "CREDENTIALS_KEY",
    "SERVICE_USER",
    "Credential",
    "DeviceKind",
    "NewUser",
    "TopicRule",
    "accepts",
    "add_device",
    "add_devices",
    "check_device_id",
    "check_prefix",
    "credentials",
    "generate_password",
    "new_credential",
    "parse_kind",
    "render_acl_file",
    "render_password_file",
    "revoke",
    "revoke_device",
    "rotate",
    "rotate_device",
    "rotate_devices",
    "topic_rules",
    "topics_for",
    "write_private",
]
