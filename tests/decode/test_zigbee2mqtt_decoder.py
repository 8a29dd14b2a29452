"""Zigbee2MQTT decoding: kWh → Wh, availability in both modes, ignored bridge/commands."""

from __future__ import annotations

import pytest

from kilowatch.decode import DecoderOptions, DecoderState, default_registry
from kilowatch.errors import DecodeError

T = 1752840200.0
NAME = "living room plug"


def test_state_is_a_default_channel_reading(decode):
    assert decode("zigbee2mqtt/plug/state.json") == [
        {
            "kind": "reading",
            "device": NAME,
            "channel": "default",
            "ts": T,
            "power_w": 12.5,
            "voltage_v": 230.1,
            "current_a": 0.06,
            "energy_wh": 1230.0,  # 1.23 kWh
        }
    ]


def test_availability_json_and_legacy(decode):
    assert decode("zigbee2mqtt/plug/availability.json") == [
        {"kind": "availability", "device": NAME, "online": True, "ts": T}
    ]
    assert decode("zigbee2mqtt/plug/availability_legacy.txt") == [
        {"kind": "availability", "device": NAME, "online": False, "ts": T}
    ]


@pytest.mark.parametrize("name", ["zigbee2mqtt/plug/set.json", "zigbee2mqtt/bridge/state.json"])
def test_bridge_and_commands_are_ignored(decode, name):
    assert decode(name) == []


def test_get_and_nested_names(decode):
    assert decode(topic="zigbee2mqtt/plug/get", payload=b'{"state":""}') == []
    out = decode(topic="zigbee2mqtt/kitchen/plug", payload=b'{"power":3,"produced_energy":0.5}')
    assert out == [
        {
            "kind": "reading",
            "device": "kitchen/plug",
            "channel": "default",
            "ts": 1_700_000_000.0,
            "power_w": 3.0,
            "returned_energy_wh": 500.0,
        }
    ]


def test_non_metering_device_is_empty(decode):
    assert decode(topic="zigbee2mqtt/hall sensor", payload=b'{"temperature":20.1}') == []


def test_several_base_topics():
    registry = default_registry(DecoderOptions(zigbee2mqtt_base_topics=("z2m-a", "z2m/b")))
    assert {"z2m-a/#", "z2m/b/#"} <= set(registry.subscriptions())
    state = DecoderState()
    [a] = registry.decode("z2m-a/p1", b'{"energy":2}', received_at=1.0, state=state)
    [b] = registry.decode("z2m/b/p2", b'{"energy":3}', received_at=1.0, state=state)
    assert (a.device, a.energy_wh, b.device, b.energy_wh) == ("p1", 2000.0, "p2", 3000.0)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("zigbee2mqtt/p", b"ON", "invalid_json"),
        ("zigbee2mqtt/p", b'{"power":"12 W"}', "invalid_payload"),
        ("zigbee2mqtt/p", b'{"energy":1e300}', "invalid_payload"),  # inf Wh
        ("zigbee2mqtt/p", b'{"produced_energy":-1e13}', "invalid_payload"),
        ("zigbee2mqtt/p/availability", b'{"state":"maybe"}', "invalid_payload"),
        ("zigbee2mqtt/p/availability", b"up", "invalid_payload"),
    ],
)
def test_bad_z2m_input(registry, state, topic, payload, reason):
    with pytest.raises(DecodeError) as info:
        registry.decode(topic, payload, received_at=1.0, state=state)
    assert info.value.reason == reason


def test_samples_out_of_range_are_left_out(decode):
    [reading] = decode(topic="zigbee2mqtt/p", payload=b'{"power":1e300,"energy":1.5,"voltage":231}')
    assert (reading["energy_wh"], reading["voltage_v"], "power_w" in reading) == (
        1500.0,
        231.0,
        False,
    )
    assert decode(topic="zigbee2mqtt/p", payload=b'{"power":-1e300}') == []
