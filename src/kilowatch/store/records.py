"""JSON encodings of stored values, shared by the backends (compact, via orjson)."""

from __future__ import annotations

import base64
from dataclasses import fields
from typing import Any

import orjson

from kilowatch.errors import UnstorableError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.store.protocol import DeadLetter, DeviceRecord, DeviceUpdate

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
    "DEAD_LETTERS",
    "DEVICE_FIELDS",
    "EVENTS_OVERALL",
    "EVENTS_PER_DEVICE",
    "LOGS_OVERALL",
    "LOGS_PER_DEVICE",
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
    "reading_dumps",
    "reading_loads",
    "update_values",
]
