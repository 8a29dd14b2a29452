"""Fuzzing every decoder with mutated recorded payloads (tests/fixtures): one bad message must never
stop the rest.

Each example takes a real payload and swaps value types, deletes keys, puts huge, negative and
non-finite numbers in (``NaN``/``Infinity`` literals and ``1e309`` too, which a JSON parser may or
may not take), nests values deeply, pads it past the size limit or garbles its bytes, then decodes
it through the registry on its own topic, auto-detected or with the source named. Whatever comes:

- the only exception is ``DecodeError``, with one of the stable reasons (a reject is always
  counted as a dead letter under its reason), and never a decoder crash the registry had to catch;
- every number that reaches a message is finite and within the limits, every timestamp is a date.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kilowatch.decode import DecoderState, default_registry
from kilowatch.decode.payload import MAX_JSON_DEPTH, MAX_MAGNITUDE, MAX_PAYLOAD_BYTES, MAX_TS
from kilowatch.errors import DecodeError
from kilowatch.model.messages import DeviceInfo, Event, Interval, LogLine, Message, Reading

from .conftest import FIXTURES, INDEX

REGISTRY = default_registry()
REASONS = {
    "invalid_json",
    "invalid_payload",
    "unknown_method",
    "payload_too_large",
    "too_deeply_nested",
}
# exceptions the registry translates into invalid_payload as a last resort: a decoder that raises
# them did not check the shape it reads (a bug), even though ingestion goes on
CRASHES = (KeyError, TypeError, AttributeError, IndexError, RecursionError, OverflowError)

# (name, topic, received_at, parsed JSON or None, payload bytes)
CASES: list[tuple[str, str, float, Any, bytes]] = []
for _name, _entry in sorted(INDEX.items()):
    _payload = (FIXTURES / _name).read_bytes()
    try:
        _doc = json.loads(_payload)
    except ValueError:
        _doc = None
    CASES.append(
        (
            _name,
            _entry["topic"],
            _entry["received_at"],
            _doc if isinstance(_doc, dict | list) else None,
            _payload,
        )
    )
JSON_CASES = [case for case in CASES if case[3] is not None]
TEXT_CASES = [case for case in CASES if case[3] is None]
SHELLY_FRAMES = [case for case in JSON_CASES if case[0].startswith("shelly/")]

# number literals written into the JSON text as they are: non-finite, overflowing, huge, tiny
RAW_NUMBERS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e309",
    b"-1e400",
    b"1e308",
    b"-1.7976931348623157e308",
    b"1e16",
    b"-1e15",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"99999999999999999999999999999",
    b"-0",
    b"-1",
    b"1e-400",
    b"5e-324",
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["1e300", "NaN", "inf", "", "on", "Online", "true"]),
    st.just([]),
    st.just({}),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.sampled_from(["total", "tC", "version"]), st.integers(), max_size=2),
)
TEXT_PAYLOADS = st.one_of(
    st.sampled_from(
        [
            b"nan",
            b"inf",
            b"-inf",
            b"1e309",
            b"1e308",
            b"-1",
            b"9" * 400,
            b"",
            b" ",
            b"\xff\xfe",
            b"true\x00",
            b"Online\n",
            b"dev \xc2\xb2 1700000000 2|x.c:1 m",
            b"dev 1 nan 2|x.c:1 m",
            b"dev 1 1e300 2|x.c:1 m",
            b"dev 1 1700000000 " + b"9" * 5000 + b"|x.c:1 m",
        ]
    ),
    st.binary(max_size=80),
)

Path = tuple[str | int, ...]


def paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every path to a value inside ``value`` (the root excluded)."""
    out: list[Path] = []
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


def parent_of(doc: Any, path: Path) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


class Raw:
    """Bytes to splice into the JSON text in place of a marker string."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def marker(self, text: bytes) -> str:
        self.pieces.append(text)
        return f"__kw_raw_{len(self.pieces) - 1}__"

    def dump(self, value: Any) -> bytes:
        text = json.dumps(value, separators=(",", ":")).encode()
        for i in reversed(range(len(self.pieces))):
            text = text.replace(b'"__kw_raw_%d__"' % i, self.pieces[i])
        return text


def mutate(data: st.DataObject, doc: Any) -> bytes:
    """Up to four mutations of the parsed payload ``doc`` (changed in place), then its bytes."""
    raw = Raw()
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        where = paths(doc)
        if not where:
            break
        path = data.draw(st.sampled_from(where), label="path")
        parent, key = parent_of(doc, path), path[-1]
        op = data.draw(
            st.sampled_from(["swap", "delete", "number", "number", "nest", "pad"]), label="op"
        )
        if op == "swap":
            parent[key] = data.draw(VALUES, label="value")
        elif op == "delete":
            del parent[key]
        elif op == "number":
            parent[key] = raw.marker(data.draw(st.sampled_from(RAW_NUMBERS), label="number"))
        elif op == "nest":
            depth = data.draw(
                st.sampled_from([2, 31, 32, 33, 100, 995, 1010, 1020, 1100]), label="n"
            )
            opener, closer = data.draw(
                st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"k":', b"}]")]),
                label="nesting",
            )
            inner = raw.dump(parent[key])
            parent[key] = raw.marker(opener * depth + inner + closer * depth)
        else:  # past the size limit
            parent[key] = "x" * (MAX_PAYLOAD_BYTES + 1)
    payload = raw.dump(doc)
    if data.draw(st.integers(min_value=0, max_value=5), label="garble") == 0:
        payload = garble(data, payload)
    return payload


def garble(data: st.DataObject, payload: bytes) -> bytes:
    """Truncate, overwrite or insert random bytes."""
    at = data.draw(st.integers(min_value=0, max_value=len(payload)), label="at")
    how = data.draw(st.sampled_from(["cut", "put", "insert"]), label="garble how")
    noise = data.draw(st.binary(min_size=1, max_size=6), label="noise")
    if how == "cut":
        return payload[:at]
    if how == "put":
        return payload[:at] + noise + payload[at + len(noise) :]
    return payload[:at] + noise + payload[at:]


def source_for(data: st.DataObject, topic: str) -> str:
    """Auto-detection, or the decoder of the topic named (the named-source path)."""
    decoder = REGISTRY.decoder_for(topic)
    assert decoder is not None, topic
    return data.draw(st.sampled_from(["auto", decoder.name]), label="source")


def usable(value: object) -> bool:
    return isinstance(value, int | float) and -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE


def a_date(value: object) -> bool:
    return isinstance(value, int | float) and 0 <= value <= MAX_TS


def finite_data(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_data(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_data(v) for v in value)
    return True


def check_message(message: Message) -> None:
    if isinstance(message, Reading):
        assert a_date(message.ts), message
        for name in (
            "power_w",
            "voltage_v",
            "current_a",
            "frequency_hz",
            "energy_wh",
            "returned_energy_wh",
            "apparent_power_va",
            "reactive_power_var",
            "power_factor",
        ):
            value = getattr(message, name)
            assert value is None or (type(value) is float and usable(value)), (name, message)
    elif isinstance(message, Interval):
        assert a_date(message.start) and a_date(message.end), message
        assert usable(message.energy_wh) and usable(message.returned_energy_wh), message
    elif isinstance(message, Event):
        assert a_date(message.ts) and finite_data(message.data), message
    elif isinstance(message, DeviceInfo):
        assert a_date(message.ts), message
        assert message.uptime_s is None or usable(message.uptime_s), message
    elif isinstance(message, LogLine):
        assert a_date(message.ts), message
    orjson.dumps(message.to_json())


def check(
    topic: str, payload: bytes, received_at: float, state: DecoderState, source: str = "auto"
) -> list[Message]:
    """Decode through the registry: messages passing :func:`check_message`, or a counted reject."""
    try:
        messages = REGISTRY.decode(
            topic, payload, received_at=received_at, state=state, source=source
        )
    except DecodeError as err:
        assert err.reason in REASONS, (err.reason, str(err))
        assert not isinstance(err.__cause__, CRASHES), repr(err.__cause__)
        assert str(err) and "\n" not in str(err)
        return []
    for message in messages:
        check_message(message)
    return messages


FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.sampled_from(JSON_CASES), st.data())
def test_mutated_json_payloads(case, data):
    _, topic, received_at, doc, _ = case
    payload = mutate(data, json.loads(json.dumps(doc)))
    check(topic, payload, received_at, DecoderState(), source_for(data, topic))


def test_deep_nesting_at_every_place_of_every_payload():
    # Not left to chance: JSON nested ~1 000 levels is valid to the parser but exhausts Python's
    # stack in any recursive walk of the decoded value (merging a Shelly delta, without_nulls...),
    # and only nesting at the right place, deep enough but under the parser's 1 024, gets there.
    for _, topic, received_at, doc, _ in JSON_CASES:
        for path in [(), *paths(doc)]:
            for depth in (MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH + 1, 995, 1015):
                for opener, closer in ((b'{"a":', b"}"), (b"[", b"]")):
                    copy, raw = json.loads(json.dumps(doc)), Raw()
                    if path:
                        parent = parent_of(copy, path)
                        inner = raw.dump(parent[path[-1]])
                        parent[path[-1]] = raw.marker(opener * depth + inner + closer * depth)
                        payload = raw.dump(copy)
                    else:
                        payload = opener * depth + raw.dump(copy) + closer * depth
                    state = DecoderState()
                    for _ in range(2):  # the second time, merged onto what the first one left
                        check(topic, payload, received_at, state)


@settings(FUZZ, max_examples=300)
@given(st.lists(st.sampled_from(SHELLY_FRAMES), min_size=1, max_size=5), st.data())
def test_mutated_shelly_messages_in_sequence_never_poison_the_state(cases, data):
    # merged state carries whatever a bad message left behind into the messages after it
    state = DecoderState()
    for _, topic, received_at, doc, _ in cases:
        check(topic, mutate(data, json.loads(json.dumps(doc))), received_at, state)
    for _, topic, received_at, _, payload in cases:  # the real payloads still decode
        messages = REGISTRY.decode(topic, payload, received_at=received_at, state=state)
        for message in messages:
            check_message(message)


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(TEXT_CASES), TEXT_PAYLOADS, st.data())
def test_text_payloads(case, payload, data):
    _, topic, received_at, _, _ = case
    check(topic, payload, received_at, DecoderState(), source_for(data, topic))


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(CASES), st.binary(max_size=200), st.data())
def test_random_bytes_on_every_recorded_topic(case, payload, data):
    _, topic, received_at, _, _ = case
    check(topic, payload, received_at, DecoderState(), source_for(data, topic))


@settings(FUZZ, max_examples=200)
@given(st.sampled_from(JSON_CASES), st.data())
def test_garbled_real_payloads(case, data):
    _, topic, received_at, _, payload = case
    check(topic, garble(data, payload), received_at, DecoderState(), source_for(data, topic))


def test_every_recorded_payload_passes_the_checks():
    for _, topic, received_at, _, payload in CASES:
        for message in REGISTRY.decode(
            topic, payload, received_at=received_at, state=DecoderState()
        ):
            check_message(message)
