"""Shelly Gen1 decoding: Watt-minutes vs Wh, one field per topic, the /status JSON on info."""

from __future__ import annotations

import pytest

from kilowatch.errors import DecodeError

G1 = "shellyplug-s-C18B12"
G3 = "shellyem3-68C63AFB5856"
T = 1752840200.0


def test_relay_power_is_a_reading_with_only_power(decode):
    assert decode("gen1/plug_s/relay_0_power.txt") == [
        {"kind": "reading", "device": G1, "channel": "relay/0", "ts": T, "power_w": 52.37}
    ]


def test_relay_energy_watt_minutes_become_wh(decode):
    # 1016197 Wmin / 60 = 16936.616666... Wh
    assert decode("gen1/plug_s/relay_0_energy.txt") == [
        {"kind": "reading", "device": G1, "channel": "relay/0", "ts": T, "energy_wh": 16936.616667}
    ]


@pytest.mark.parametrize(
    ("field", "attr", "value"),
    [
        ("power", "power_w", 2166.2),
        ("pf", "power_factor", 0.99),
        ("current", "current_a", 9.59),
        ("voltage", "voltage_v", 227.0),
        ("total", "energy_wh", 3105576.4),  # already Wh
        ("total_returned", "returned_energy_wh", 0.0),
    ],
)
def test_emeter_values(decode, field, attr, value):
    assert decode(f"gen1/em3/emeter_0_{field}.txt") == [
        {"kind": "reading", "device": G3, "channel": "emeter/0", "ts": T, attr: value}
    ]


def test_emeter_reactive_power(decode):
    out = decode(topic="shellies/shellyem-B9E0D1/emeter/1/reactive_power", payload=b"-12.5")
    assert out[0]["reactive_power_var"] == -12.5
    assert out[0]["channel"] == "emeter/1"


@pytest.mark.parametrize("field", ["energy", "returned_energy"])
def test_emeter_ram_counters_are_not_counters(decode, field):
    # same energy as total/total_returned but restarting at reboot: two counters on one channel
    # would look like a reset at every message
    assert decode(f"gen1/em3/emeter_0_{field}.txt") == []


def test_info_meters_are_watt_minutes_and_device_info(decode):
    assert decode("gen1/plug_s/info.json") == [
        {
            "kind": "reading",
            "device": G1,
            "channel": "relay/0",
            "ts": T,
            "power_w": 52.37,
            "energy_wh": 16936.616667,
        },
        {
            "kind": "device_info",
            "device": G1,
            "ts": T,
            "mac": "3C6105C18B12",
            "gen": 1,
            "uptime_s": 1020594,
            "ip": "192.168.0.114",
            "available_update": "20231107-164738/v1.14.1-rc1-g0617c15",
        },
    ]


def test_info_emeters_are_wh_and_invalid_ones_are_skipped(decode):
    out = decode("gen1/em3/info.json")
    readings = [m for m in out if m["kind"] == "reading"]
    assert readings == [
        {
            "kind": "reading",
            "device": G3,
            "channel": "emeter/0",
            "ts": T,
            "power_w": 2166.2,
            "voltage_v": 227.0,
            "current_a": 9.59,
            "energy_wh": 3105576.4,
            "returned_energy_wh": 0.0,
            "power_factor": 0.99,
        },
        {
            "kind": "reading",
            "device": G3,
            "channel": "emeter/1",
            "ts": T,
            "power_w": 3.6,
            "voltage_v": 230.0,
            "current_a": 0.04,
            "energy_wh": 195765.7,
            "returned_energy_wh": 0.0,
            "power_factor": 0.36,
        },
    ]
    [info] = [m for m in out if m["kind"] == "device_info"]
    assert "available_update" not in info  # has_update is false


def test_online_and_announce(decode):
    assert decode("gen1/plug_s/online.txt") == [
        {"kind": "availability", "device": G1, "online": True, "ts": T}
    ]
    assert decode("gen1/plug_s/announce.json") == [
        {
            "kind": "device_info",
            "device": G1,
            "ts": T,
            "mac": "3C6105C18B12",
            "model": "SHPLG-S",
            "gen": 1,
            "fw_ver": "20230913-113421/v1.14.0-gcb84623",
            "ip": "192.168.0.114",
        }
    ]


def test_per_device_announce_uses_topic_id(decode):
    out = decode(topic="shellies/plug-kitchen/announce", payload=b'{"id":"other","mac":"AA"}')
    assert out[0]["device"] == "plug-kitchen"


@pytest.mark.parametrize(
    "topic",
    [
        "shellies/command",
        "shellies/x/relay/0",
        "shellies/x/relay/0/command",
        "shellies/x/temperature",
        "shellies/x/input/0",
        "shellies/x/light/0/status",
    ],
)
def test_other_gen1_topics_carry_nothing(decode, topic):
    assert decode(topic=topic, payload=b"on") == []


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("shellies/x/relay/0/power", b"lots", "invalid_payload"),
        ("shellies/x/relay/0/energy", b"nan", "invalid_payload"),
        ("shellies/x/relay/0/power", b"inf", "invalid_payload"),
        ("shellies/x/emeter/0/total", b"1e300", "invalid_payload"),  # the value is all there is
        ("shellies/x/emeter/0/voltage", b"-2e15", "invalid_payload"),
        ("shellies/x/info", b'{"meters":[{"total":1e300}]}', "invalid_payload"),
        ("shellies/x/info", b'{"emeters":[{"total_returned":-1e16}]}', "invalid_payload"),
        ("shellies/x/online", b"yes", "invalid_payload"),
        ("shellies/x/info", b"{", "invalid_json"),
        ("shellies/x/info", b'{"meters":[{"total":"a lot"}]}', "invalid_payload"),
        ("shellies/announce", b'{"model":"SHPLG-S"}', "invalid_payload"),
    ],
)
def test_bad_gen1_input(registry, state, topic, payload, reason):
    with pytest.raises(DecodeError) as info:
        registry.decode(topic, payload, received_at=1.0, state=state)
    assert info.value.reason == reason


def test_info_leaves_out_samples_out_of_range(decode):
    out = decode(
        topic="shellies/x/info",
        payload=b'{"uptime":18446744073709551615,"meters":[{"power":1e300,"total":600}],'
        b'"emeters":[{"power":-1e300,"voltage":230.5,"total":12.5}]}',
    )
    assert [m for m in out if m["kind"] == "reading"] == [
        {"kind": "reading", "device": "x", "channel": "relay/0", "ts": 1.7e9, "energy_wh": 10.0},
        {
            "kind": "reading",
            "device": "x",
            "channel": "emeter/0",
            "ts": 1.7e9,
            "voltage_v": 230.5,
            "energy_wh": 12.5,
        },
    ]
    assert "uptime_s" not in out[-1]
