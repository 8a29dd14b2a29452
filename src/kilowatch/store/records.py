"""JSON encodings of stored values, shared by the backends (compact, via orjson)."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import orjson

from kilowatch.errors import UnstorableError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.store.protocol import AuditEntry, DeadLetter, DeviceRecord, DeviceUpdate, PowerMinute

EVENTS_PER_DEVICE = 1000
"""Events kept per device (older ones are dropped)."""
EVENTS_OVERALL = 10_000
"""Events kept in the all-devices list of the Redis backend (SQLite keeps them per device only)."""
LOGS_PER_DEVICE = 1000
"""Log lines kept per device."""
LOGS_OVERALL = 10_000
"""Log lines kept in the all-devices list of the Redis backend."""
DEAD_LETTERS = 10_000
"""Dead letters kept overall; their counts by reason are kept forever."""
AUDIT_ENTRIES = 100_000
"""Audit entries kept (the newest; older ones are dropped as new ones come)."""
AUDIT_DETAIL_MAX_BYTES = 65_536
"""Largest audit entry (its JSON) a store takes: a report of a rollout over a thousand devices
fits; a bigger one is refused (``UnstorableError``) rather than kept 100 000 times over."""
POWER_DAYS = 3
"""UTC days of power minutes a channel keeps: the day written and the two before it (the device
page asks for 24 hours, an API client for at most 48). Writing a channel's first minute of a new
day drops its minutes of older days in the same commit; Redis also lets a channel's day expire
:data:`POWER_TTL_S` after its last write (a channel that went quiet)."""
POWER_TTL_S = (POWER_DAYS + 1) * 86400
"""Expiry of a Redis power day, renewed by every commit that writes it."""
POWER_MINUTE_END = 253_402_300_800
"""9999-12-31T24:00Z: power minutes are dated from 1970 to the end of year 9999."""
POWER_MW_MAX = 2**62
"""Largest absolute mean power, in mW, a store takes (both keep milliwatts as 64-bit integers)."""

DEVICE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DeviceUpdate) if f.name != "device")
"""Fields a :class:`DeviceUpdate` may set (``None`` = leave as is)."""


def dumps(value: Any) -> bytes:
    """Compact JSON; :class:`UnstorableError` for values JSON cannot hold (nested deeper than
    orjson's limit of 254 levels, an integer beyond 64 bits, a lone surrogate, a non-JSON type):
    no store can hold them, so a retry would fail the same way."""
    try:
        return orjson.dumps(value)
    except TypeError as err:  # orjson.JSONEncodeError is a TypeError
        raise UnstorableError(f"value cannot be stored as JSON: {err}", detail=str(err)) from err


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


def _body(value: Reading | Event | LogLine) -> bytes:
    out = value.to_json()
    out.pop("kind", None)
    return dumps(out)


def reading_dumps(reading: Reading) -> bytes:
    return _body(reading)


def reading_loads(raw: bytes | str) -> Reading:
    return Reading(**loads(raw))


def event_dumps(event: Event) -> bytes:
    return dumps(
        {
            "device": event.device,
            "ts": event.ts,
            "component": event.component,
            "event": event.event,
            "data": event.data,
        }
    )


def event_loads(raw: bytes | str) -> Event:
    return Event(**loads(raw))


def log_dumps(line: LogLine) -> bytes:
    return _body(line)


def log_loads(raw: bytes | str) -> LogLine:
    return LogLine(**loads(raw))


def dead_letter_dumps(letter: DeadLetter) -> bytes:
    return dumps(
        {
            "ts": letter.ts,
            "topic": letter.topic,
            "payload": base64.b64encode(letter.payload).decode(),
            "reason": letter.reason,
            "detail": letter.detail,
        }
    )


def dead_letter_loads(raw: bytes | str) -> DeadLetter:
    d = loads(raw)
    return DeadLetter(
        ts=d["ts"],
        topic=d["topic"],
        payload=base64.b64decode(d["payload"]),
        reason=d["reason"],
        detail=d["detail"],
    )


def power_rows(minutes: Sequence[PowerMinute]) -> dict[tuple[str, str, int], tuple[int, int]]:
    """``(device, channel, minute) -> (mW, samples)`` of ``minutes``, the last of a minute named
    twice winning (values replace). Both stores keep the mean as whole milliwatts.

    :class:`UnstorableError`, before anything is stored, for a minute that is not a multiple of
    60, an empty device or channel, a power that is not a finite number or beyond
    :data:`POWER_MW_MAX`, a sample count that is not a positive ``int``."""
    out: dict[tuple[str, str, int], tuple[int, int]] = {}
    for m in minutes:
        if not (
            isinstance(m.device, str) and m.device and isinstance(m.channel, str) and m.channel
        ):
            raise _bad_power(m, "device and channel must be non-empty strings")
        if isinstance(m.minute, bool) or not isinstance(m.minute, int) or m.minute % 60:
            raise _bad_power(m, f"minute {m.minute!r} is not a whole UTC minute (unix s / 60)")
        if not 0 <= m.minute < POWER_MINUTE_END:
            raise _bad_power(m, f"minute {m.minute!r} is before 1970 or after 9999")
        p = m.power_w
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
            raise _bad_power(m, f"power {p!r} is not a finite number")
        mw = round(p * 1000)
        if abs(mw) > POWER_MW_MAX:
            raise _bad_power(m, f"power {p!r} W is beyond what a store keeps")
        n = m.samples
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < 2**62:
            raise _bad_power(m, f"samples {n!r} is not a positive whole number")
        out[(m.device, m.channel, m.minute)] = (mw, n)
    return out


def _bad_power(m: PowerMinute, why: str) -> UnstorableError:
    return UnstorableError(
        f"power minute of {m.device!r} {m.channel!r} at {m.minute!r} cannot be stored: {why}",
        detail=why,
    )


def audit_dumps(entry: AuditEntry) -> bytes:
    """One audit entry as JSON (what both stores keep); :class:`UnstorableError` for an entry
    that cannot be stored: an empty id, a time that is not a finite number, a field of the wrong
    type, a ``detail`` JSON cannot hold (not JSON-able, nested deeper than 254 levels) or an
    entry over :data:`AUDIT_DETAIL_MAX_BYTES`."""

    def bad(why: str) -> UnstorableError:
        return UnstorableError(f"audit entry {entry.id!r} cannot be stored: {why}", detail=why)

    if not isinstance(entry.id, str) or not entry.id or entry.id != entry.id.strip():
        raise bad("its id must be a non-empty string without surrounding blanks")
    ts = entry.ts
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise bad(f"ts {ts!r} is not a finite number")
    for name in ("actor", "action", "result"):
        if not isinstance(getattr(entry, name), str):
            raise bad(f"{name} must be a string")
    devices = entry.devices
    if isinstance(devices, str) or not all(isinstance(d, str) and d for d in devices):
        raise bad("devices must be a sequence of non-empty strings")
    if not isinstance(entry.detail, Mapping):
        raise bad("detail must be a mapping")
    try:
        raw = dumps(
            {
                "id": entry.id,
                "ts": float(ts),
                "actor": entry.actor,
                "action": entry.action,
                "devices": list(devices),
                "result": entry.result,
                "detail": dict(entry.detail),
            }
        )
    except UnstorableError as err:
        raise bad(f"its detail is not JSON: {err.detail}") from err
    if len(raw) > AUDIT_DETAIL_MAX_BYTES:
        raise bad(f"{len(raw)} bytes of JSON, over {AUDIT_DETAIL_MAX_BYTES}")
    return raw


def audit_loads(raw: bytes | str) -> AuditEntry:
    d = loads(raw)
    return AuditEntry(
        id=d["id"],
        ts=d["ts"],
        actor=d["actor"],
        action=d["action"],
        devices=tuple(d["devices"]),
        result=d["result"],
        detail=d["detail"],
    )


def audit_check(entries: Sequence[AuditEntry]) -> list[tuple[AuditEntry, bytes]]:
    """Each entry with its JSON, the first of an id named twice kept; :class:`UnstorableError`
    for the first that cannot be stored (see :func:`audit_dumps`)."""
    out: dict[str, tuple[AuditEntry, bytes]] = {}
    for entry in entries:
        raw = audit_dumps(entry)
        out.setdefault(entry.id, (entry, raw))
    return list(out.values())


def action_matches(action: str, wanted: str | None) -> bool:
    """Whether ``action`` is ``wanted`` or below it (``fleet`` matches ``fleet.adopt``)."""
    return wanted is None or action == wanted or action.startswith(wanted + ".")


def device_record(device: str, values: dict[str, Any], channels: list[str]) -> DeviceRecord:
    """A :class:`DeviceRecord` from stored column/field values (unknown keys ignored)."""

    def num(key: str, kind: type[float] | type[int]) -> Any:
        v = values.get(key)
        return None if v is None or v == "" else kind(v)

    def text(key: str) -> str | None:
        v = values.get(key)
        if v is None or v == "":
            return None
        return v.decode() if isinstance(v, bytes) else str(v)

    online = values.get("online")
    return DeviceRecord(
        device=device,
        first_seen=num("first_seen", float),
        last_seen=num("last_seen", float),
        online=None if online is None or online == "" else bool(int(online)),
        mac=text("mac"),
        model=text("model"),
        gen=num("gen", int),
        fw_ver=text("fw_ver"),
        available_update=text("available_update"),
        name=text("name"),
        label=text("label"),
        room=text("room"),
        ip=text("ip"),
        source=text("source"),
        channels=tuple(sorted(channels)),
    )


def update_values(update: DeviceUpdate) -> dict[str, Any]:
    """The fields an update sets, as storable scalars (booleans as 0/1)."""
    out: dict[str, Any] = {}
    for name in DEVICE_FIELDS:
        v = getattr(update, name)
        if v is not None:
            out[name] = int(v) if isinstance(v, bool) else v
    return out


def mac_of(device: str, mac: str | None) -> str | None:
    """The device's MAC in the seed's form (12 upper-case hex digits): its reported ``mac`` if
    known,
    else the 12-hex suffix of a Shelly id (``shellypmminig3-ecda3bc4ddb0`` → ``ECDA3BC4DDB0``)."""
    if mac:
        clean = mac.replace(":", "").replace("-", "").upper()
        if len(clean) == 12 and all(c in "0123456789ABCDEF" for c in clean):
            return clean
    suffix = device.rsplit("-", 1)[-1]
    if len(suffix) == 12 and all(c in "0123456789abcdefABCDEF" for c in suffix):
        return suffix.upper()
    return None


__all__ = [
    "AUDIT_DETAIL_MAX_BYTES",
    "AUDIT_ENTRIES",
    "DEAD_LETTERS",
    "DEVICE_FIELDS",
    "EVENTS_OVERALL",
    "EVENTS_PER_DEVICE",
    "LOGS_OVERALL",
    "LOGS_PER_DEVICE",
    "POWER_DAYS",
    "POWER_MINUTE_END",
    "POWER_MW_MAX",
    "POWER_TTL_S",
    "action_matches",
    "audit_check",
    "audit_dumps",
    "audit_loads",
    "dead_letter_dumps",
    "dead_letter_loads",
    "device_record",
    "dumps",
    "event_dumps",
    "event_loads",
    "loads",
    "log_dumps",
    "log_loads",
    "mac_of",
    "power_rows",
    "reading_dumps",
    "reading_loads",
    "update_values",
]
