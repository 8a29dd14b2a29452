"""Small, strict helpers every decoder uses to read a payload: JSON, numbers, booleans.

They raise :class:`~kilowatch.errors.DecodeError` with the stable reasons ``invalid_json``,
``invalid_payload``, ``payload_too_large`` and ``too_deeply_nested`` so that every decoder reports
bad input the same way.

Limits, checked before a payload is parsed (docs/sources.md, "Limits"):

- :data:`MAX_PAYLOAD_BYTES`: the largest payload a decoder parses. The largest real payloads are a
  device's whole status (``NotifyFullStatus``, Gen1 ``info``): a few KB. A Shelly builds each
  message in RAM and has about 250 KB of it (``sys.ram_size`` 247 524 and 260 088 bytes, 70–150 KB
  free, shelly-api.md §7.4, §11.1), so 64 KiB is far above anything a meter sends while keeping
  a runaway publisher's message from being parsed and kept as a dead letter at full size.
- :data:`MAX_JSON_DEPTH`: the deepest JSON nesting a decoder parses. Real payloads nest at most 5
  levels (frame → ``params`` → ``pm1:0`` → ``aenergy`` → ``by_minute``); 32 leaves room for script
  event data while keeping every recursive walk of a decoded value (status merges, ``to_json``,
  the store's JSON encoder, which stops at 255 levels) far from Python's recursion limit.
- :data:`MAX_MAGNITUDE`: the largest absolute number a reading, counter or timestamp may hold.
  No meter value comes near 10^15 (W, V, A, Wh: a Pro 3EM's counters are ~10^7 Wh); the ledger
  turns counters into integer mWh, and 10^15 Wh is 10^18 mWh, inside a 64-bit integer. Anything
  larger, or ``inf``/``nan``, would overflow on use (``1e308`` kWh is ``inf`` Wh).
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import orjson

from kilowatch.errors import DecodeError

INVALID_JSON = "invalid_json"
INVALID_PAYLOAD = "invalid_payload"
UNKNOWN_TOPIC = "unknown_topic"
UNKNOWN_METHOD = "unknown_method"
UNKNOWN_SOURCE = "unknown_source"
MISSING_TOPIC = "missing_topic"
PAYLOAD_TOO_LARGE = "payload_too_large"
TOO_DEEPLY_NESTED = "too_deeply_nested"

MAX_PAYLOAD_BYTES = 64 * 1024
"""Largest payload a decoder parses (bytes); see the module docstring for why."""
MAX_JSON_DEPTH = 32
"""Deepest JSON nesting (objects and arrays) a decoder parses; real payloads nest 5 levels."""
MAX_MAGNITUDE = 1e15
"""Largest absolute value of a reading field, counter or timestamp kilowatch accepts."""
MAX_TS = 253_402_300_799.0
"""The last second of year 9999 (UTC): the latest unix time a date can be built from."""

_PREVIEW = 80
_RANGE = f"(a finite number within ±{MAX_MAGNITUDE:.0e} is expected)"
# bracket bytes → +1 / -1 as signed bytes; every other byte is deleted before the depth count
_SIGNS = bytes.maketrans(b"{[}]", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{[}]")


def preview(payload: bytes) -> str:
    """The start of a payload, printable on one line, for error messages."""
    text = payload[:_PREVIEW].decode("utf-8", "replace")
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text + ("…" if len(payload) > _PREVIEW else "")


def check_size(payload: bytes, *, what: str) -> None:
    """Raise ``DecodeError("payload_too_large")`` for a payload over :data:`MAX_PAYLOAD_BYTES`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(
            PAYLOAD_TOO_LARGE,
            f"{what} is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES} a meter message can be: "
            f"{preview(payload)!r}",
        )


def json_depth(payload: bytes) -> int:
    """How deep the objects and arrays of JSON text ``payload`` nest, from a scan of its bytes.

    Brackets inside strings do not count. Exact for valid JSON; for invalid JSON an estimate (the
    parser refuses it anyway). Linear, in C-speed byte operations: no recursion, no parse.
    """
    # Drop escaped backslashes, then escaped quotes: every remaining quote opens or closes a
    # string, so the even pieces between quotes are the text outside strings.
    bare = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(bare.split(b'"')[::2])
    steps = memoryview(outside.translate(_SIGNS, _NOT_BRACKETS)).cast("b")
    return max(accumulate(steps), default=0)


def check_depth(payload: bytes, *, what: str) -> None:
    """Raise ``DecodeError("too_deeply_nested")`` for JSON nested over :data:`MAX_JSON_DEPTH`."""
    # No more opening brackets than the limit cannot nest deeper (see load_json).
    if len(payload) - len(payload.replace(b"{", b"").replace(b"[", b"")) <= MAX_JSON_DEPTH:
        return
    depth = json_depth(payload)
    if depth > MAX_JSON_DEPTH:
        raise DecodeError(
            TOO_DEEPLY_NESTED,
            f"{what} nests {depth} levels deep, over the {MAX_JSON_DEPTH} kilowatch reads "
            f"(real payloads nest 5): {preview(payload)!r}",
        )


def load_json(payload: bytes, *, what: str) -> Any:
    """Parse ``payload`` as JSON, or raise ``DecodeError`` naming ``what``: ``invalid_json``,
    or ``payload_too_large`` / ``too_deeply_nested`` (checked before parsing)."""
    # The common case costs a length test and a count of opening brackets: a payload with no more
    # of them than the depth limit cannot nest deeper. (Two bytes.replace calls count them in half
    # the time of two bytes.count calls: replace skips to each match with memchr.)
    if (
        len(payload) > MAX_PAYLOAD_BYTES
        or len(payload) - len(payload.replace(b"{", b"").replace(b"[", b"")) > MAX_JSON_DEPTH
    ):
        check_size(payload, what=what)
        check_depth(payload, what=what)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError(
            INVALID_JSON, f"{what} is not valid JSON ({err.msg}): {preview(payload)!r}"
        ) from err


def load_object(payload: bytes, *, what: str) -> dict[str, Any]:
    """Parse ``payload`` as a JSON object (``{...}``); errors as :func:`load_json`."""
    # load_json inlined: this is the first step of nearly every message
    if (
        len(payload) > MAX_PAYLOAD_BYTES
        or len(payload) - len(payload.replace(b"{", b"").replace(b"[", b"")) > MAX_JSON_DEPTH
    ):
        check_size(payload, what=what)
        check_depth(payload, what=what)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError(
            INVALID_JSON, f"{what} is not valid JSON ({err.msg}): {preview(payload)!r}"
        ) from err
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


def usable(value: float) -> bool:
    """Whether ``value`` is finite and within ±:data:`MAX_MAGNITUDE` (false for inf and nan)."""
    return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE


def counter(value: float, *, field: str) -> float:
    """``value`` (a counter, already converted to Wh) if the ledger can use it; else
    ``invalid_payload``: a counter is never guessed at, and the next message carries it again."""
    if -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        return value
    raise DecodeError(INVALID_PAYLOAD, f"{field} is out of range: {value!r} {_RANGE}")


def timestamp(value: object, *, field: str) -> float:
    """A unix time (seconds) a date can be built from, else ``invalid_payload``."""
    ts = number(value, field=field)
    if 0.0 <= ts <= MAX_TS:
        return ts
    raise DecodeError(
        INVALID_PAYLOAD, f"{field} must be a unix time from 0 to {MAX_TS:.0f}, got {value!r}"
    )


def text_number(payload: bytes, *, field: str) -> float:
    """A plain-text number payload (Gen1 per-topic values such as ``52.37``) within
    ±:data:`MAX_MAGNITUDE`: the value is all the message carries, so a bad one rejects it."""
    check_size(payload, what=field)
    try:
        value = float(payload)
    except ValueError as err:
        raise DecodeError(
            INVALID_PAYLOAD, f"{field} must be a number, got {preview(payload)!r}"
        ) from err
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        raise DecodeError(INVALID_PAYLOAD, f"{field} is out of range: {value!r} {_RANGE}")
    return value


def text_bool(payload: bytes, *, true: bytes, false: bytes, field: str) -> bool:
    """A plain-text boolean such as ``true``/``false`` or Tasmota's ``Online``/``Offline``."""
    check_size(payload, what=field)
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
