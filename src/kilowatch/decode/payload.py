"""Small, strict helpers every decoder uses to read a payload: JSON, numbers, booleans.

They raise :class:`~kilowatch.errors.DecodeError` with the stable reasons ``invalid_json`` and
``invalid_payload`` so that every decoder reports bad input the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

from kilowatch.errors import DecodeError

INVALID_JSON = "invalid_json"
INVALID_PAYLOAD = "invalid_payload"
UNKNOWN_TOPIC = "unknown_topic"
UNKNOWN_METHOD = "unknown_method"
UNKNOWN_SOURCE = "unknown_source"
MISSING_TOPIC = "missing_topic"

_PREVIEW = 80


def preview(payload: bytes) -> str:
    """The start of a payload, printable on one line, for error messages."""
    text = payload[:_PREVIEW].decode("utf-8", "replace")
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text + ("…" if len(payload) > _PREVIEW else "")


def load_json(payload: bytes, *, what: str) -> Any:
    """Parse ``payload`` as JSON, or raise ``DecodeError("invalid_json")`` naming ``what``."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError(
            INVALID_JSON, f"{what} is not valid JSON ({err.msg}): {preview(payload)!r}"
        ) from err


def load_object(payload: bytes, *, what: str) -> dict[str, Any]:
    """Parse ``payload`` as a JSON object (``{...}``)."""
    doc = load_json(payload, what=what)
    if type(doc) is not dict:
        raise DecodeError(
            INVALID_PAYLOAD, f"{what} must be a JSON object, got {preview(payload)!r}"
        )
    return doc


def number(value: object, *, field: str) -> float:
    """A JSON number as ``float``; ``bool`` and strings are rejected (``invalid_payload``)."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[return-value]
    if kind is int:
        return float(value)  # type: ignore[arg-type]
    raise DecodeError(INVALID_PAYLOAD, f"{field} must be a number, got {value!r}")


def text_number(payload: bytes, *, field: str) -> float:
    """A plain-text number payload (Gen1 per-topic values such as ``52.37``)."""
    try:
        value = float(payload)
    except ValueError as err:
        raise DecodeError(
            INVALID_PAYLOAD, f"{field} must be a number, got {preview(payload)!r}"
        ) from err
    if value != value or value in (float("inf"), float("-inf")):
        raise DecodeError(INVALID_PAYLOAD, f"{field} must be a finite number, got {value!r}")
    return value


def text_bool(payload: bytes, *, true: bytes, false: bytes, field: str) -> bool:
    """A plain-text boolean such as ``true``/``false`` or Tasmota's ``Online``/``Offline``."""
    word = payload.strip()
    if word == true:
        return True
    if word == false:
        return False
    raise DecodeError(
        INVALID_PAYLOAD,
        f"{field} must be {true.decode()!r} or {false.decode()!r}, got {preview(payload)!r}",
    )


def wmin_to_wh(value: float) -> float:
    """Watt-minutes (Shelly Gen1 counters) to Wh, rounded to 1 µWh to drop float noise."""
    return round(value / 60.0, 6)


def kwh_to_wh(value: float) -> float:
    """kWh (Tasmota, Zigbee2MQTT) to Wh, rounded to 1 µWh to drop float noise (14.834 → 14834.0)."""
    return round(value * 1000.0, 6)
