"""The fleet registry's rules, shared by the backends: what a :class:`Registration` may hold, how
one is merged into what is stored, its flat field form, and how it shows in a device's record.

The backends only store and read: SQLite in the ``fleet_devices`` table
(:mod:`kilowatch.store.sqlite.registry`), Redis in ``P:kw:device:{D}:registry`` plus the seed's
``device:<MAC>`` and ``script:<MAC>`` hashes (:mod:`kilowatch.store.redis.registry`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kilowatch.errors import UnstorableError
from kilowatch.store import records
from kilowatch.store.protocol import DeployedScript, DeviceRecord, Registration

TEXT_FIELDS = (
    "mac", "model", "fw_ver", "app", "address", "transport", "prefix", "credentials", "name",
    "room", "discovered_by",
)  # fmt: skip
"""Text fields of a :class:`Registration`: ``None`` keeps the stored value, ``""`` clears it."""
INT_FIELDS = ("gen",)
FLOAT_FIELDS = ("adopted_at", "seen_at")
FIELDS = (*TEXT_FIELDS, *INT_FIELDS, *FLOAT_FIELDS)
"""Every field but ``device`` and ``script``, in the order of the SQLite table's columns."""
SEED_DEVICE_FIELDS = (
    "model", "gen", "fw_ver", "app", "name", "address", "prefix", "room",
)  # fmt: skip
"""Registry fields copied into the seed's ``device:<MAC>`` hash, beside ``id`` and ``mac``."""
HEX = frozenset("0123456789abcdefABCDEF")
INT64 = (-(2**63), 2**63 - 1)
"""What both backends can hold as an integer (SQLite's range)."""


def check(regs: Sequence[Registration]) -> None:
    """Refuse the whole call before anything is stored: :class:`UnstorableError` saying which
    device and field, and why."""
    for reg in regs:
        if not isinstance(reg, Registration):
            raise UnstorableError(
                f"not a Registration: {reg!r}", detail=f"expected Registration, got {type(reg)}"
            )
        check_device_id(reg.device)
        for name in TEXT_FIELDS:
            _check_text(reg, name, getattr(reg, name))
        if reg.mac and records.mac_of("", reg.mac) is None:
            _refuse(reg, "mac", f"{reg.mac!r} is not 12 hex digits (ECDA3BC4DDB0)")
        _check_int(reg, "gen", reg.gen)
        for name in FLOAT_FIELDS:
            _check_float(reg, name, getattr(reg, name))
        if reg.script is not None:
            _check_script(reg, reg.script)


def check_device_id(device: object) -> str:
    """``device`` if it is a usable device id (non-empty, printable, no whitespace), else
    :class:`UnstorableError`."""
    if (
        not isinstance(device, str)
        or not device
        or not device.isprintable()
        or any(c.isspace() for c in device)
    ):
        raise UnstorableError(
            f"invalid device id {device!r}: a device id is a non-empty printable string without "
            "whitespace (shellypmminig3-ecda3bc4ddb0)",
            detail="invalid device id",
        )
    _check_encodable(device, device, "device")
    return device


def _refuse(reg: Registration, name: str, why: str) -> None:
    raise UnstorableError(
        f"registration of {reg.device}: field {name}: {why}; nothing was stored",
        detail=f"{name}: {why}",
    )


def _check_encodable(device: str, text: str, name: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as err:
        raise UnstorableError(
            f"registration of {device!r}: field {name} cannot be stored as UTF-8 ({err}); "
            "nothing was stored",
            detail=f"{name}: {err}",
        ) from err


def _check_text(reg: Registration, name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        _refuse(reg, name, f"expected text, got {type(value).__name__} {value!r}")
        return
    _check_encodable(reg.device, value, name)


def _check_int(reg: Registration, name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse(reg, name, f"expected an integer, got {type(value).__name__} {value!r}")
        return
    if not INT64[0] <= value <= INT64[1]:
        _refuse(reg, name, f"{value} is beyond a 64-bit integer")


def _check_float(reg: Registration, name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(reg, name, f"expected unix seconds, got {type(value).__name__} {value!r}")
        return
    if not math.isfinite(value):
        _refuse(reg, name, f"{value} is not a finite number")


def _check_script(reg: Registration, script: object) -> None:
    if not isinstance(script, DeployedScript):
        _refuse(reg, "script", f"expected a DeployedScript, got {type(script).__name__}")
        return
    if not isinstance(script.name, str) or not script.name:
        _refuse(reg, "script.name", f"expected a non-empty name, got {script.name!r}")
    _check_text(reg, "script.name", script.name)
    _check_text(reg, "script.version", script.version)
    sha = script.sha256
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in HEX for c in sha):
        _refuse(reg, "script.sha256", f"{sha!r} is not a hex SHA-256 (64 hex digits)")
    _check_int(reg, "script.script_id", script.script_id)
    _check_float(reg, "script.deployed_at", script.deployed_at)


def merge(stored: Registration | None, new: Registration) -> Registration:
    """``new`` applied over ``stored``: a ``None`` field keeps the stored value, ``""`` clears a
    text field, ``script=None`` keeps the stored script. MAC and SHA-256 are normalised (upper /
    lower case hex)."""
    base = stored if stored is not None else Registration(new.device)
    changes: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(new, name)
        if value is None:
            continue
        changes[name] = None if value == "" else value
    if changes.get("mac"):
        changes["mac"] = records.mac_of("", changes["mac"])
    if new.script is not None:
        s = new.script
        changes["script"] = dataclasses.replace(
            s, sha256=s.sha256.lower(), version=s.version or None
        )
    for name in FLOAT_FIELDS:
        if changes.get(name) is not None:
            changes[name] = float(changes[name])
    return dataclasses.replace(base, **changes)


def seed_mac(reg: Registration) -> str | None:
    """The MAC that names the device's seed keys: its registered MAC, else its Shelly id's."""
    return records.mac_of(reg.device, reg.mac)


# -- flat fields (Redis hashes, SQLite columns) ----------------------------------------------------


def script_dumps(script: DeployedScript | None) -> str | None:
    if script is None:
        return None
    return records.dumps(dataclasses.asdict(script)).decode()


def script_loads(raw: str | bytes | None) -> DeployedScript | None:
    if raw is None or raw in ("", b""):
        return None
    d = records.loads(raw)
    return DeployedScript(
        name=d["name"],
        version=d.get("version"),
        sha256=d["sha256"],
        script_id=d.get("script_id"),
        deployed_at=d.get("deployed_at"),
    )


def to_fields(reg: Registration) -> dict[str, str | int | float]:
    """The registration's set fields (``script`` as JSON), for a Redis hash."""
    out: dict[str, str | int | float] = {}
    for name in FIELDS:
        value = getattr(reg, name)
        if value is not None:
            out[name] = repr(value) if isinstance(value, float) else value
    script = script_dumps(reg.script)
    if script is not None:
        out["script"] = script
    return out


def from_fields(device: str, values: Mapping[str, Any]) -> Registration:
    """A :class:`Registration` from stored fields or columns (``bytes`` or ``str``, absent or
    ``None`` = not set; unknown keys ignored)."""

    def text(name: str) -> str | None:
        v = values.get(name)
        if v is None or v in ("", b""):
            return None
        return v.decode() if isinstance(v, bytes) else str(v)

    def num(name: str, kind: type[int] | type[float]) -> Any:
        v = text(name)
        return None if v is None else kind(v)

    return Registration(
        device=device,
        **{name: text(name) for name in TEXT_FIELDS},
        gen=num("gen", int),
        adopted_at=num("adopted_at", float),
        seen_at=num("seen_at", float),
        script=script_loads(text("script")),
    )


def seed_device_fields(reg: Registration, mac: str) -> dict[str, str | int]:
    """The seed's ``device:<MAC>`` fields the registry knows: ``id``, ``mac`` and the set ones of
    :data:`SEED_DEVICE_FIELDS`."""
    out: dict[str, str | int] = {"id": reg.device, "mac": mac}
    for name in SEED_DEVICE_FIELDS:
        value = getattr(reg, name)
        if value is not None:
            out[name] = value
    return out


def cleared_seed_fields(new: Registration) -> list[str]:
    """The ``device:<MAC>`` fields that ``new`` clears (given as ``""``)."""
    return [name for name in SEED_DEVICE_FIELDS if getattr(new, name) == ""]


def seed_script_fields(device: str, script: DeployedScript) -> dict[str, str | int | float]:
    """The seed's ``script:<MAC>`` hash: ``name``, ``sha256``, ``id`` (the device id) and, when
    known, ``version``, ``script_id``, ``deployed_at``."""
    out: dict[str, str | int | float] = {"name": script.name, "sha256": script.sha256, "id": device}
    if script.version is not None:
        out["version"] = script.version
    if script.script_id is not None:
        out["script_id"] = script.script_id
    if script.deployed_at is not None:
        out["deployed_at"] = repr(float(script.deployed_at))
    return out


# -- how the registry shows in devices() -----------------------------------------------------------


def host_of(address: str | None) -> str | None:
    """The host of ``host``, ``host:port`` or ``[v6]:port``."""
    if not address:
        return None
    if address.startswith("["):
        return address[1:].split("]", 1)[0] or None
    if address.count(":") == 1:
        return address.split(":", 1)[0] or None
    return address


def with_registration(rec: DeviceRecord | None, reg: Registration | None) -> DeviceRecord | None:
    """A device's record as the dashboard and API show it: the registry's ``name`` (what the
    installer chose) over the name the device reports (a user's ``label`` still shows over both);
    the registry's ``room`` where the user set none; ``model``, ``gen``, ``fw_ver``, ``mac`` and
    ``ip`` (the host of ``address``) from the registry where the device's own record lacks them.
    A registered device that never published gets a record of its own."""
    if reg is None:
        return rec
    if rec is None:
        rec = DeviceRecord(reg.device)
    return dataclasses.replace(
        rec,
        name=reg.name or rec.name,
        room=rec.room or reg.room,
        model=rec.model or reg.model,
        gen=rec.gen if rec.gen is not None else reg.gen,
        fw_ver=rec.fw_ver or reg.fw_ver,
        mac=rec.mac or reg.mac,
        ip=rec.ip or host_of(reg.address),
    )


def merge_devices(recs: Iterable[DeviceRecord], regs: Iterable[Registration]) -> list[DeviceRecord]:
    """Every device's record (:func:`with_registration`), registered or seen, by device id."""
    by_id: dict[str, DeviceRecord | None] = {r.device: r for r in recs}
    by_reg = {r.device: r for r in regs}
    out = []
    for device in sorted(by_id.keys() | by_reg.keys()):
        found = with_registration(by_id.get(device), by_reg.get(device))
        if found is not None:
            out.append(found)
    return out


__all__ = [
    "FIELDS",
    "FLOAT_FIELDS",
    "INT_FIELDS",
    "SEED_DEVICE_FIELDS",
    "TEXT_FIELDS",
    "check",
    "check_device_id",
    "cleared_seed_fields",
    "from_fields",
    "host_of",
    "merge",
    "merge_devices",
    "script_dumps",
    "script_loads",
    "seed_device_fields",
    "seed_mac",
    "seed_script_fields",
    "to_fields",
    "with_registration",
]
