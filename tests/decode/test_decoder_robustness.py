"""Whatever arrives on a known topic, decoding returns messages or raises DecodeError, nothing else:
malformed input must become a dead letter, never stop ingestion."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kilowatch.decode import DecoderState, default_registry
from kilowatch.errors import DecodeError

REGISTRY = default_registry()

TOPICS = [
    "dev/events/rpc",
    "dev/status/pm1:0",
    "dev/status/em:0",
    "dev/status/emdata:0",
    "dev/status/sys",
    "dev/online",
    "dev/debug/log",
    "/system/dev/status",
    "shellies/dev/info",
    "shellies/announce",
    "shellies/dev/relay/0/energy",
    "shellies/dev/emeter/1/total",
    "tele/dev/SENSOR",
    "stat/dev/STATUS8",
    "tele/dev/STATE",
    "tele/dev/INFO1",
    "tele/dev/LWT",
    "zigbee2mqtt/dev",
    "zigbee2mqtt/dev/availability",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["total", "apower", "ENERGY", "Total", "Info1", "events", "ts", "stable"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ts",
                    "src",
                    "method",
                    "params",
                    "events",
                    "component",
                    "event",
                    "pm1:0",
                    "em:0",
                    "emdata:0",
                    "switch:0",
                    "sys",
                    "wifi",
                    "apower",
                    "voltage",
                    "aenergy",
                    "total",
                    "a_act_power",
                    "total_act",
                    "available_updates",
                    "stable",
                    "version",
                    "meters",
                    "emeters",
                    "ENERGY",
                    "StatusSNS",
                    "Total",
                    "Power",
                    "Info1",
                    "UptimeSec",
                    "hourly_energy_usage",
                    "timestamp",
                    "id",
                    "mac",
                    "energy",
                    "power",
                    "state",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)

methods = st.sampled_from(["NotifyStatus", "NotifyFullStatus", "NotifyEvent", "Other", None])


def check(topic: str, payload: bytes, state: DecoderState) -> None:
    try:
        messages = REGISTRY.decode(topic, payload, received_at=1.0, state=state)
    except DecodeError as err:
        assert err.reason in {"invalid_json", "invalid_payload", "unknown_method"}
        # the registry turns a decoder crash into invalid_payload as a last resort; the decoders
        # themselves must have checked the shape
        assert not isinstance(err.__cause__, KeyError | TypeError | AttributeError | IndexError)
        assert "\n" not in str(err)
    else:
        assert isinstance(messages, list)
        for message in messages:
            orjson.dumps(message.to_json())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TOPICS), json_values)
def test_any_json_on_any_topic(topic, value):
    check(topic, orjson.dumps(value), DecoderState())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(methods, st.lists(json_values, min_size=1, max_size=4))
def test_any_rpc_frames_in_sequence(method, params_list):
    # several frames in a row on one state: whatever got merged before must not break later ones
    state = DecoderState()
    for params in params_list:
        frame = {"src": "dev", "method": method, "params": params}
        check("dev/events/rpc", orjson.dumps(frame), state)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(TOPICS), st.binary(max_size=64))
def test_any_bytes_on_any_topic(topic, payload):
    check(topic, payload, DecoderState())
