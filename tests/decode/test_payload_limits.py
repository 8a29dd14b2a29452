"""Limits checked before a payload is parsed: size, JSON depth (a byte scan), and number ranges."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilowatch.decode import DecoderState, default_registry
from kilowatch.decode.payload import (
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_BYTES,
    PAYLOAD_TOO_LARGE,
    TOO_DEEPLY_NESTED,
    json_depth,
)
from kilowatch.errors import DecodeError

from .conftest import FIXTURES, INDEX

JSON_TOPICS = [
    "dev/events/rpc",
    "dev/status/pm1:0",
    "dev/status/sys",
    "/system/dev/status",
    "shellies/dev/info",
    "shellies/announce",
    "tele/dev/SENSOR",
    "stat/dev/STATUS8",
    "tele/dev/STATE",
    "tele/dev/INFO1",
    "zigbee2mqtt/dev",
    "zigbee2mqtt/dev/availability",
]


def nested(depth: int, *, inner: bytes = b"1") -> bytes:
    """A frame whose ``params`` nest ``depth`` levels in all (objects and arrays mixed)."""
    body = inner
    for level in range(depth - 1):  # the outermost is an object, as params must be
        body = b'{"a":%s}' % body if (depth - level) % 2 == 0 else b"[0,%s]" % body
    return b'{"src":"d","method":"NotifyStatus","params":%s}' % body


@pytest.mark.parametrize(
    "text",
    [
        b"1",
        b"[]",
        b'{"a":[1,{"b":[]}]}',
        b'{"a":"[[[[{{{{","b":["\\"[","\\\\"]}',
        b'["\\\\\\"]]]]", [[]]]',
        b"[[[[]]],[[]],{}]",
    ],
)
def test_json_depth_matches_the_parsed_value(text):
    assert json_depth(text) == depth_of(json.loads(text))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\/ax\u00e9:,', max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_json_depth_of_any_json_text(value, indent):
    # strings full of brackets, quotes and backslashes never count; whitespace does not matter
    text = json.dumps(value, indent=1 if indent else None, ensure_ascii=indent).encode()
    assert json_depth(text) == depth_of(value)


def test_every_fixture_is_within_the_limits():
    deepest = 0
    for name in INDEX:
        payload = (FIXTURES / name).read_bytes()
        assert len(payload) < MAX_PAYLOAD_BYTES // 16, name  # real payloads are far below
        deepest = max(deepest, json_depth(payload))
    assert deepest == 5  # frame → params → component → aenergy → by_minute


@pytest.mark.parametrize("topic", JSON_TOPICS)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 990, 1023, 5000])
def test_deep_json_is_refused_before_parsing_on_every_topic(topic, depth):
    registry = default_registry()
    with pytest.raises(DecodeError) as info:
        registry.decode(topic, nested(depth), received_at=1.0, state=DecoderState())
    assert info.value.reason == TOO_DEEPLY_NESTED
    assert f"nests {depth} levels" in str(info.value)


def test_nesting_up_to_the_limit_is_read_and_merged():
    x = b"1"
    for _ in range(MAX_JSON_DEPTH - 3):  # frame → params → pm1:0 → 29 nested objects
        x = b'{"k":%s}' % x
    frame = b'{"src":"d","method":"NotifyStatus","params":{"ts":1,"pm1:0":{"apower":1,"x":%s}}}' % x
    assert json_depth(frame) == MAX_JSON_DEPTH
    registry, state = default_registry(), DecoderState()
    for _ in range(2):  # the second delta is deep-merged onto the first
        [reading] = registry.decode("d/events/rpc", frame, received_at=1.0, state=state)
        assert reading.power_w == 1.0


def test_deep_script_event_data_stays_within_the_limit():
    # NotifyEvent data is kept as sent; the cap keeps it far below orjson's 255-level dump limit
    data = b"1"
    for _ in range(MAX_JSON_DEPTH - 5):
        data = b'{"k":%s}' % data
    frame = (
        b'{"src":"d","method":"NotifyEvent","params":{"ts":1,"events":[{"component":"script:1",'
        b'"event":"deep","data":%s}]}}' % data
    )
    [event] = default_registry().decode(
        "d/events/rpc", frame, received_at=1.0, state=DecoderState()
    )
    orjson.dumps(event.to_json())


@pytest.mark.parametrize("topic", [*JSON_TOPICS, "dev/debug/log", "dev/online", "tele/dev/LWT"])
def test_oversized_payloads_are_refused_on_every_parsed_topic(topic):
    payload = b'{"src":"d","method":"NotifyStatus","params":{"x":"%s"}}' % (
        b"a" * MAX_PAYLOAD_BYTES
    )
    with pytest.raises(DecodeError) as info:
        default_registry().decode(topic, payload, received_at=1.0, state=DecoderState())
    assert info.value.reason == PAYLOAD_TOO_LARGE
    assert str(len(payload)) in str(info.value)


@pytest.mark.parametrize(
    "topic", ["zigbee2mqtt/bridge/devices", "shellies/dev/relay/0", "zigbee2mqtt/plug/set"]
)
def test_topics_whose_payload_is_never_read_are_not_size_checked(topic):
    # Zigbee2MQTT's bridge/devices lists every device and can be far larger: it is not read
    big = b"[" + b",".join([b'{"ieee_address":"0x00158d0001"}'] * 5000) + b"]"
    assert len(big) > MAX_PAYLOAD_BYTES
    assert default_registry().decode(topic, big, received_at=1.0, state=DecoderState()) == []


def test_orjson_refuses_non_finite_literals():
    # Decoders rely on this for values they pass through unchanged (event data): if a new orjson
    # accepted NaN or Infinity, event data would need its own check.
    for text in (b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e400", b"nan", b"inf"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
