"""Tasmota decoding: kWh → Wh, per-channel arrays, LWT, STATE, custom full topics."""

from __future__ import annotations

import pytest

from kilowatch.decode import DecoderOptions, DecoderState, default_registry
from kilowatch.errors import ConfigError, DecodeError

T = 1752840200.0


def test_sensor_energy(decode):
    assert decode("tasmota/pow_r2/SENSOR.json") == [
        {
            "kind": "reading",
            "device": "pow-r2",
            "channel": "ENERGY",
            "ts": T,  # Tasmota's Time is local without a zone: received_at is used
            "power_w": 0.0,
            "voltage_v": 230.0,
            "current_a": 0.0,
            "energy_wh": 14834.0,  # 14.834 kWh
            "apparent_power_va": 0.0,
            "reactive_power_var": 0.0,
            "power_factor": 0.0,
        }
    ]


def test_status8_answer(decode):
    assert decode("tasmota/pow_r2/STATUS8.json") == [
        {
            "kind": "reading",
            "device": "pow-r2",
            "channel": "ENERGY",
            "ts": T,
            "power_w": 120.0,
            "voltage_v": 231.0,
            "current_a": 0.541,
            "frequency_hz": 50.0,
            "energy_wh": 14835.0,
            "apparent_power_va": 125.0,
            "reactive_power_var": 35.0,
            "power_factor": 0.96,
        }
    ]


def test_arrays_become_numbered_channels(decode):
    out = decode("tasmota/shelly25/SENSOR.json")
    # the scalar Total is the sum of both relays: the whole device's counter, on ENERGY; the one
    # Voltage and Frequency are the supply both relays share: on every channel
    assert out == [
        {
            "kind": "reading",
            "device": "shelly25-kitchen",
            "channel": "ENERGY",
            "ts": T,
            "voltage_v": 229.0,
            "frequency_hz": 50.0,
            "energy_wh": 3217.0,
        },
        {
            "kind": "reading",
            "device": "shelly25-kitchen",
            "channel": "ENERGY/1",
            "ts": T,
            "power_w": 0.0,
            "voltage_v": 229.0,
            "current_a": 0.0,
            "frequency_hz": 50.0,
            "apparent_power_va": 0.0,
            "reactive_power_var": 0.0,
            "power_factor": 0.0,
        },
        {
            "kind": "reading",
            "device": "shelly25-kitchen",
            "channel": "ENERGY/2",
            "ts": T,
            "power_w": 96.0,
            "voltage_v": 229.0,
            "current_a": 0.455,
            "frequency_hz": 50.0,
            "apparent_power_va": 104.0,
            "reactive_power_var": 40.0,
            "power_factor": 0.92,
        },
    ]


def test_total_per_relay_with_setoption129(decode):
    out = decode("tasmota/shelly25/SENSOR_so129.json")
    # no whole-device counter any more: each relay has its own; Today/Yesterday arrays are ignored
    assert [
        (m["channel"], m.get("energy_wh"), m.get("power_w"), m.get("voltage_v")) for m in out
    ] == [
        ("ENERGY/1", 1745.0, 0.0, 229.0),
        ("ENERGY/2", 1480.0, 97.0, 229.0),
    ]
    assert all(m["frequency_hz"] == 50.0 for m in out)


def test_tariff_arrays_are_not_channels(decode):
    # TotalTariff holds one counter per tariff (8.123 + 6.711 = Total): not ENERGY/1, ENERGY/2
    assert decode("tasmota/pow_r2/SENSOR_tariff.json") == [
        {
            "kind": "reading",
            "device": "pow-r2",
            "channel": "ENERGY",
            "ts": T,
            "power_w": 120.0,
            "voltage_v": 231.0,
            "current_a": 0.541,
            "energy_wh": 14834.0,
            "apparent_power_va": 125.0,
            "reactive_power_var": 35.0,
            "power_factor": 0.96,
        }
    ]


def test_three_phases_with_one_frequency(decode):
    total, *phases = decode("tasmota/shelly3em/SENSOR.json")
    assert total == {
        "kind": "reading",
        "device": "shelly3em-garage",
        "channel": "ENERGY",
        "ts": T,
        "frequency_hz": 50.0,
        "energy_wh": 2315218.0,
    }
    assert [(p["channel"], p["power_w"], p["voltage_v"], p["frequency_hz"]) for p in phases] == [
        ("ENERGY/1", 1023.0, 229.8, 50.0),
        ("ENERGY/2", 12.0, 231.4, 50.0),
        ("ENERGY/3", 409.0, 230.6, 50.0),
    ]
    assert [p["current_a"] for p in phases] == [4.561, 0.196, 1.879]
    assert all("energy_wh" not in p for p in phases)


def test_shared_scalars_alone_make_no_whole_device_reading(decode):
    out = decode(topic="tele/m/SENSOR", payload=b'{"ENERGY":{"Power":[5,null,7],"Voltage":230}}')
    # ENERGY would only repeat the voltage; a channel whose items are all null is left out
    assert [(m["channel"], m["power_w"], m["voltage_v"]) for m in out] == [
        ("ENERGY/1", 5.0, 230.0),
        ("ENERGY/3", 7.0, 230.0),
    ]


def test_counters_out_of_range_reject_and_samples_out_of_range_are_left_out(registry, state):
    with pytest.raises(DecodeError) as info:
        registry.decode(
            "tele/m/SENSOR", b'{"ENERGY":{"Total":1e300}}', received_at=1.0, state=state
        )
    assert info.value.reason == "invalid_payload"  # 1e300 kWh is inf Wh
    with pytest.raises(DecodeError):
        registry.decode(
            "tele/m/SENSOR", b'{"ENERGY":{"Total":[1,2e12]}}', received_at=1.0, state=state
        )
    [reading] = registry.decode(
        "tele/m/SENSOR",
        b'{"ENERGY":{"Total":1.5,"Power":1e300,"Voltage":-1e16,"Current":0.5}}',
        received_at=1.0,
        state=state,
    )
    assert (reading.energy_wh, reading.power_w, reading.voltage_v, reading.current_a) == (
        1500.0,
        None,
        None,
        0.5,
    )


def test_per_channel_totals_and_export(decode):
    out = decode(
        topic="tele/meter/SENSOR",
        payload=b'{"ENERGY":{"Total":[1.5,0.25],"ExportActive":0.125}}',
    )
    assert [(m["channel"], m.get("energy_wh"), m.get("returned_energy_wh")) for m in out] == [
        ("ENERGY", None, 125.0),
        ("ENERGY/1", 1500.0, None),
        ("ENERGY/2", 250.0, None),
    ]


def test_sensor_without_energy_is_empty(decode):
    assert decode(topic="tele/th/SENSOR", payload=b'{"AM2301":{"Temperature":21.5}}') == []


def test_lwt_state_info(decode):
    assert decode("tasmota/pow_r2/LWT.txt") == [
        {"kind": "availability", "device": "pow-r2", "online": True, "ts": T}
    ]
    assert decode("tasmota/pow_r2/LWT_offline.txt")[0]["online"] is False
    assert decode("tasmota/pow_r2/STATE.json") == [
        {"kind": "device_info", "device": "pow-r2", "ts": T, "uptime_s": 66612}
    ]
    info1 = decode(
        topic="tele/pow-r2/INFO1",
        payload=b'{"Info1":{"Module":"Sonoff Pow R2","Version":"14.1.0(release-tasmota)"}}',
    )
    assert info1[0]["model"] == "Sonoff Pow R2"
    assert info1[0]["fw_ver"] == "14.1.0(release-tasmota)"
    info2 = decode(topic="tele/pow-r2/INFO2", payload=b'{"Info2":{"IPAddress":"192.168.1.50"}}')
    assert info2[0]["ip"] == "192.168.1.50"


def test_custom_full_topic():
    registry = default_registry(DecoderOptions(tasmota_full_topics=("tasmota/%topic%/%prefix%/",)))
    assert "tasmota/+/tele/SENSOR" in registry.subscriptions()
    assert "tele/+/SENSOR" not in registry.subscriptions()
    [reading] = registry.decode(
        "tasmota/garage/tele/SENSOR",
        b'{"ENERGY":{"Total":2}}',
        received_at=1.0,
        state=DecoderState(),
    )
    assert (reading.device, reading.energy_wh) == ("garage", 2000.0)
    with pytest.raises(DecodeError) as info:
        registry.decode("tele/garage/SENSOR", b"{}", received_at=1.0, state=DecoderState())
    assert info.value.reason == "unknown_topic"


@pytest.mark.parametrize("full_topic", ["%prefix%/", "x/%topic%/", "%prefix%/a%topic%/"])
def test_invalid_full_topic_is_a_config_error(full_topic):
    with pytest.raises(ConfigError):
        default_registry(DecoderOptions(tasmota_full_topics=(full_topic,)))


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("tele/x/SENSOR", b"{", "invalid_json"),
        ("tele/x/SENSOR", b'{"ENERGY":{"Total":"1 kWh"}}', "invalid_payload"),
        ("tele/x/LWT", b"online", "invalid_payload"),
        ("stat/x/RESULT", b"{}", "unknown_topic"),
        ("tele/x/STATUS8", b"{}", "unknown_topic"),  # STATUS8 comes on stat/
    ],
)
def test_bad_tasmota_input(registry, state, topic, payload, reason):
    with pytest.raises(DecodeError) as info:
        registry.decode(topic, payload, received_at=1.0, state=state)
    assert info.value.reason == reason
