"""Shelly Gen2+ decoding: recorded payloads in, hand-checked messages out."""

from __future__ import annotations

import pytest

from kilowatch.decode import DecoderState
from kilowatch.errors import DecodeError

PM = "shellypmminig3-ecda3bc4ddb0"
S1 = "shelly1pmminig3-5432044edbc0"
E3 = "shellypro3em-aabbccddeeff"


def test_notify_status_gives_the_brief_reading(decode):
    assert decode("shelly/pm_mini_g3/NotifyStatus.json") == [
        {
            "kind": "reading",
            "device": PM,
            "channel": "pm1:0",
            "ts": 1752840144.0,
            "power_w": 4.4,
            "voltage_v": 229.8,
            "current_a": 0.046,
            "frequency_hz": 50.1,
            "energy_wh": 42291.09,
            "returned_energy_wh": 0.0,
        }
    ]


def test_delta_merges_instant_values_but_never_restamps_counters(decode):
    decode("shelly/pm_mini_g3/NotifyStatus.json")
    # the second delta carries apower and current only: voltage and frequency come from the merged
    # status, the counters are absent because this frame did not carry them
    assert decode("shelly/pm_mini_g3/NotifyStatus_power.json") == [
        {
            "kind": "reading",
            "device": PM,
            "channel": "pm1:0",
            "ts": 1752840151.37,
            "power_w": 11.5,
            "voltage_v": 229.8,
            "current_a": 0.071,
            "frequency_hz": 50.1,
        }
    ]


def test_delta_without_known_status_carries_only_its_fields(decode):
    assert decode("shelly/1pm_mini_g3/NotifyStatus.json") == [
        {
            "kind": "reading",
            "device": S1,
            "channel": "switch:0",
            "ts": 1788945292.88,
            "power_w": 11.5,
            "current_a": 0.071,
        }
    ]


def test_status_topic_is_a_full_reading_stamped_with_received_at(decode):
    assert decode("shelly/1pm_mini_g3/status_switch_0.json") == [
        {
            "kind": "reading",
            "device": S1,
            "channel": "switch:0",
            "ts": 1788945293.0,
            "power_w": 11.5,
            "voltage_v": 240.3,
            "current_a": 0.073,
            "frequency_hz": 50.0,
            "energy_wh": 152669.987,
            "returned_energy_wh": 0.0,
        }
    ]


def test_integer_values_become_floats(decode):
    [reading] = decode("shelly/pm_mini_g3/status_pm1_0.json")
    assert reading["power_w"] == 230.0 and type(reading["power_w"]) is float
    assert reading["current_a"] == 1.0 and reading["frequency_hz"] == 51.0
    assert reading["energy_wh"] == 3195.88 and reading["returned_energy_wh"] == 0.0
    assert reading["ts"] == 1727857631.5


def test_null_in_a_delta_removes_the_key(decode, state):
    decode("shelly/1pm_mini_g3/status_switch_0.json")
    out = decode(
        topic=f"{S1}/events/rpc",
        payload=(
            b'{"src":"%s","method":"NotifyStatus","params":{"ts":1788945300.5,'
            b'"switch:0":{"apower":12.0,"voltage":null,"temperature":{"tF":null}}}}' % S1.encode()
        ),
    )
    assert out == [
        {
            "kind": "reading",
            "device": S1,
            "channel": "switch:0",
            "ts": 1788945300.5,
            "power_w": 12.0,
            "current_a": 0.073,
            "frequency_hz": 50.0,
        }
    ]
    status = state.get(S1, "switch:0")
    assert status is not None
    assert "voltage" not in status
    assert status["temperature"] == {"tC": 55.0}
    assert status["aenergy"]["total"] == 152669.987


def test_null_component_forgets_it(decode, state):
    decode("shelly/1pm_mini_g3/status_switch_0.json")
    out = decode(
        topic=f"{S1}/events/rpc",
        payload=b'{"src":"%s","method":"NotifyStatus","params":{"ts":1.0,"switch:0":null}}'
        % S1.encode(),
    )
    assert out == []
    assert state.get(S1, "switch:0") is None


def test_delta_with_no_metering_field_gives_no_reading(decode):
    decode("shelly/1pm_mini_g3/status_switch_0.json")
    out = decode(
        topic=f"{S1}/events/rpc",
        payload=(
            b'{"src":"%s","method":"NotifyStatus","params":{"ts":1788945301.0,'
            b'"switch:0":{"output":false,"source":"button",'
            b'"aenergy":{"by_minute":[1.0,0.0,0.0],"minute_ts":1788945300}}}}' % S1.encode()
        ),
    )
    assert out == []


def test_full_status_replaces_state_and_reports_the_device(decode, state):
    state.merge(PM, "switch:7", {"apower": 1.0})  # a component the full status no longer has
    out = decode("shelly/pm_mini_g3/NotifyFullStatus.json")
    assert out == [
        {
            "kind": "reading",
            "device": PM,
            "channel": "pm1:0",
            "ts": 1720717223.12,
            "power_w": 55.0,
            "voltage_v": 234.7,
            "current_a": 0.322,
            "frequency_hz": 50.0,
            "energy_wh": 1234.567,
            "returned_energy_wh": 0.0,
        },
        {
            "kind": "device_info",
            "device": PM,
            "ts": 1720717223.12,
            "mac": "ECDA3BC4DDB0",
            "uptime_s": 86400,
            "ip": "192.168.0.108",
            "available_update": "1.4.4",
        },
    ]
    assert state.components(PM) == ["pm1:0"]


def test_power_strip_switch_has_power_factor(decode):
    [reading] = decode("shelly/power_strip_g4/status_switch_3.json")
    assert reading["channel"] == "switch:3"
    assert reading["power_factor"] == 0.62
    assert reading["energy_wh"] == 18440.297


def test_three_phase_em_gives_totals_and_phases(decode):
    out = decode("shelly/pro_3em/status_em_0.json")
    assert [r["channel"] for r in out] == ["em:0", "em:0/a", "em:0/b", "em:0/c"]
    total, a, b, c = out
    assert total == {
        "kind": "reading",
        "device": E3,
        "channel": "em:0",
        "ts": 1747561101.0,
        "power_w": 2413.825,
        "current_a": 11.116,
        "apparent_power_va": 2525.779,
    }
    assert a == {
        "kind": "reading",
        "device": E3,
        "channel": "em:0/a",
        "ts": 1747561101.0,
        "power_w": 2166.2,
        "voltage_v": 227.0,
        "current_a": 9.592,
        "frequency_hz": 49.9,
        "apparent_power_va": 2175.9,
        "power_factor": 0.99,
    }
    assert (b["power_w"], b["power_factor"]) == (3.6, 0.36)
    assert (c["current_a"], c["voltage_v"]) == (1.479, 230.2)


def test_emdata_counters_land_on_the_em_channels(decode):
    out = decode("shelly/pro_3em/status_emdata_0.json")
    assert [(r["channel"], r["energy_wh"], r["returned_energy_wh"]) for r in out] == [
        ("em:0", 5415414.19, 0.0),
        ("em:0/a", 3105576.42, 0.0),
        ("em:0/b", 195765.72, 0.0),
        ("em:0/c", 2114072.05, 0.0),
    ]
    assert all("power_w" not in r for r in out)


def test_three_phase_delta_merges_and_carries_only_moved_counters(decode):
    decode("shelly/pro_3em/status_em_0.json")
    decode("shelly/pro_3em/status_emdata_0.json")
    out = decode("shelly/pro_3em/NotifyStatus.json")
    assert out == [
        {
            "kind": "reading",
            "device": E3,
            "channel": "em:0",
            "ts": 1747561160.02,
            "power_w": 2418.025,
            "current_a": 11.135,
            "energy_wh": 5415450.34,
            "apparent_power_va": 2525.779,
        },
        {
            "kind": "reading",
            "device": E3,
            "channel": "em:0/a",
            "ts": 1747561160.02,
            "power_w": 2170.4,
            "voltage_v": 227.0,
            "current_a": 9.611,
            "frequency_hz": 49.9,
            "energy_wh": 3105612.57,
            "apparent_power_va": 2175.9,
            "power_factor": 0.99,
        },
    ]


def test_em1_and_em1data_share_a_channel(decode):
    assert decode("shelly/pro_em_50/status_em1_0.json") == [
        {
            "kind": "reading",
            "device": "shellyproem50-aabbccddeeff",
            "channel": "em1:0",
            "ts": 1752840000.0,
            "power_w": 1327.6,
            "voltage_v": 240.2,
            "current_a": 6.473,
            "frequency_hz": 50.0,
            "apparent_power_va": 1557.6,
            "power_factor": 0.87,
        }
    ]
    [counters] = decode("shelly/pro_em_50/status_em1data_0.json")
    assert counters["channel"] == "em1:0"
    assert (counters["energy_wh"], counters["returned_energy_wh"]) == (2776175.11, 571584.87)


def test_em1_and_em1data_in_one_frame_make_one_reading(decode):
    out = decode(
        topic="shellyemg3-aabbccddeeff/events/rpc",
        payload=(
            b'{"src":"shellyemg3-aabbccddeeff","method":"NotifyStatus","params":{"ts":100.0,'
            b'"em1:1":{"act_power":-350.5},"em1data:1":{"total_act_ret_energy":12.5}}}'
        ),
    )
    assert out == [
        {
            "kind": "reading",
            "device": "shellyemg3-aabbccddeeff",
            "channel": "em1:1",
            "ts": 100.0,
            "power_w": -350.5,
            "returned_energy_wh": 12.5,
        }
    ]


def test_online_and_last_will(decode):
    assert decode("shelly/pm_mini_g3/online.txt") == [
        {"kind": "availability", "device": PM, "online": True, "ts": 1752840200.0}
    ]
    assert decode("shelly/pm_mini_g3/offline.txt")[0]["online"] is False


def test_notify_event_keeps_event_fields(decode):
    assert decode("shelly/pm_mini_g3/NotifyEvent_ota_progress.json") == [
        {
            "kind": "event",
            "device": PM,
            "ts": 1752840300.11,
            "component": "sys",
            "event": "ota_progress",
            "data": {"msg": "Waiting for data", "progress_percent": 42},
        }
    ]
    [push] = decode("shelly/pro_4pm/NotifyEvent_single_push.json")
    assert (push["component"], push["event"], push["data"]) == ("input:0", "single_push", {"id": 0})


def test_debug_log_line_names_its_device(decode):
    assert decode("shelly/pro_4pm/debug_log.txt") == [
        {
            "kind": "log",
            "device": "shellypro4pm-84cca87fb768",
            "ts": 1646735205.737,
            "message": "Switch.GetConfig via HTTP 192.168.178.112:47620",
            "level": 2,
            "seq": 3731,
            "source": "mg_rpc.c:314",
        }
    ]


def test_debug_log_keeps_lines_it_cannot_split(decode):
    out = decode(
        topic="boiler/debug/log",
        payload=b"shellyplus1-a 12 1700000001.5 1|wifi.c:1 up\n\nplain text from a script\n",
        received_at=1700000002.0,
    )
    assert out == [
        {
            "kind": "log",
            "device": "shellyplus1-a",
            "ts": 1700000001.5,
            "message": "up",
            "level": 1,
            "seq": 12,
            "source": "wifi.c:1",
        },
        {
            "kind": "log",
            "device": "boiler",
            "ts": 1700000002.0,
            "message": "plain text from a script",
        },
    ]


def test_sys_status_reports_no_update_as_empty_string(decode):
    assert decode("shelly/pm_mini_g3/status_sys.json") == [
        {
            "kind": "device_info",
            "device": PM,
            "ts": 1738418641.2,
            "mac": "ECDA3BC4DDB0",
            "uptime_s": 3603,
            "available_update": "",
        }
    ]


def test_non_metering_status_decodes_to_nothing(decode, state):
    assert decode("shelly/pm_mini_g3/status_mqtt.json") == []
    assert len(state) == 0


def test_custom_prefix_and_missing_src(decode):
    out = decode(
        topic="home/cellar/boiler/events/rpc",
        payload=b'{"method":"NotifyStatus","params":{"ts":5,"pm1:0":{"apower":1}}}',
    )
    assert out[0]["device"] == "home/cellar/boiler"
    assert out[0]["ts"] == 5.0
    assert decode(topic="home/cellar/boiler/online", payload=b"true")[0]["device"] == (
        "home/cellar/boiler"
    )


def test_frame_without_ts_uses_received_at(decode):
    out = decode(
        topic="x/events/rpc",
        payload=b'{"src":"dev","method":"NotifyStatus","params":{"pm1:0":{"apower":1}}}',
        received_at=42.5,
    )
    assert out[0]["ts"] == 42.5


def test_state_is_per_device(registry):
    state = DecoderState()
    for device, volts in (("a", 230.0), ("b", 240.0)):
        registry.decode(
            f"{device}/status/pm1:0",
            b'{"id":0,"voltage":%f,"apower":1}' % volts,
            received_at=1.0,
            state=state,
        )
    [reading] = registry.decode(
        "b/events/rpc",
        b'{"src":"b","method":"NotifyStatus","params":{"ts":2,"pm1:0":{"apower":2}}}',
        received_at=2.0,
        state=state,
    )
    assert reading.voltage_v == 240.0


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("d/events/rpc", b'{"src":"d","method":"NotifyStatus"', "invalid_json"),
        ("d/events/rpc", b"[1,2]", "invalid_payload"),
        ("d/events/rpc", b'{"src":"d","method":"NotifyStatus"}', "invalid_payload"),
        ("d/events/rpc", b'{"src":"d","method":"Frobnicate","params":{}}', "unknown_method"),
        (
            "d/events/rpc",
            b'{"src":"d","method":"NotifyStatus","params":{"pm1:0":{"apower":"high"}}}',
            "invalid_payload",
        ),
        (
            "d/events/rpc",
            b'{"src":"d","method":"NotifyStatus","params":{"pm1:0":5}}',
            "invalid_payload",
        ),
        (
            "d/events/rpc",
            b'{"src":"d","method":"NotifyStatus","params":{"ts":"now"}}',
            "invalid_payload",
        ),
        (
            "d/events/rpc",
            b'{"src":"d","method":"NotifyEvent","params":{"ts":1}}',
            "invalid_payload",
        ),
        (
            "d/events/rpc",
            b'{"src":"d","method":"NotifyEvent","params":{"events":[{"event":"x"}]}}',
            "invalid_payload",
        ),
        ("d/online", b"maybe", "invalid_payload"),
        ("d/status/pm1:0", b"not json", "invalid_json"),
        ("d/status/pm1:0", b'{"aenergy":{"total":true}}', "invalid_payload"),
    ],
)
def test_bad_input_has_a_reason(registry, topic, payload, reason):
    with pytest.raises(DecodeError) as info:
        registry.decode(topic, payload, received_at=1.0, state=DecoderState())
    assert info.value.reason == reason
    assert "\n" not in str(info.value)


def test_custom_prefix_learns_the_device_from_frames(decode):
    prefix = "home/boiler"
    before = decode(topic=f"{prefix}/online", payload=b"true")
    assert before[0]["device"] == prefix  # nothing known yet: the topic's prefix
    decode(
        topic=f"{prefix}/events/rpc",
        payload=b'{"src":"%s","method":"NotifyStatus","params":{"ts":1,"pm1:0":{"apower":1}}}'
        % PM.encode(),
    )
    assert decode(topic=f"{prefix}/online", payload=b"false")[0]["device"] == PM
    [reading] = decode(topic=f"{prefix}/status/pm1:0", payload=b'{"id":0,"apower":2}')
    assert (reading["device"], reading["power_w"]) == (PM, 2.0)
    # the merged status is shared with the frames' device
    [merged] = decode(
        topic=f"{prefix}/events/rpc",
        payload=b'{"src":"%s","method":"NotifyStatus","params":{"ts":3,"pm1:0":{"voltage":230}}}'
        % PM.encode(),
    )
    assert (merged["power_w"], merged["voltage_v"]) == (2.0, 230.0)


COVER = "shelly2pmg3-aabbccddeeff"


def test_cover_in_roller_mode_meters_like_a_switch(decode):
    assert decode("shelly/2pm_g3_cover/status_cover_0.json") == [
        {
            "kind": "reading",
            "device": COVER,
            "channel": "cover:0",
            "ts": 1760364737.0,
            "power_w": 128.4,
            "voltage_v": 231.6,
            "current_a": 0.602,
            "frequency_hz": 50.0,
            "energy_wh": 1357.102,
            "returned_energy_wh": 0.0,
            "power_factor": 0.92,
        }
    ]
    # the motor stops at the top: the delta's powers and counters, merged voltage and frequency
    assert decode("shelly/2pm_g3_cover/NotifyStatus.json") == [
        {
            "kind": "reading",
            "device": COVER,
            "channel": "cover:0",
            "ts": 1760364780.02,
            "power_w": 0.0,
            "voltage_v": 231.6,
            "current_a": 0.0,
            "frequency_hz": 50.0,
            "energy_wh": 1359.028,
            "returned_energy_wh": 0.0,
            "power_factor": 0.0,
        }
    ]


@pytest.mark.parametrize(
    ("name", "device", "channel", "fields"),
    [
        (
            "shelly/dimmer_g3/status_light_0.json",
            "shellydimmerg3-e4b3233be13c",
            "light:0",
            {"power_w": 24.7, "voltage_v": 231.4, "current_a": 0.112, "energy_wh": 1203.545},
        ),
        (
            "shelly/plus_rgbw_pm/status_rgbw_0.json",
            "shellyplusrgbwpm-aabbccddeeff",
            "rgbw:0",
            {"power_w": 18.1, "voltage_v": 24.1, "current_a": 0.751, "energy_wh": 845.221},
        ),
        (
            "shelly/plus_rgbw_pm/status_rgb_0.json",
            "shellyplusrgbwpm-aabbccddeeff",
            "rgb:0",
            {"power_w": 9.6, "voltage_v": 24.1, "current_a": 0.398, "energy_wh": 846.013},
        ),
        (
            "shelly/pro_rgbww_pm/status_cct_1.json",
            "shellyprorgbwwpm-aabbccddeeff",
            "cct:1",
            {"power_w": 14.0, "voltage_v": 24.0, "current_a": 0.583, "energy_wh": 512.908},
        ),
    ],
)
def test_lights_meter_too(decode, recorded, name, device, channel, fields):
    _, _, received_at = recorded(name)
    assert decode(name) == [
        {"kind": "reading", "device": device, "channel": channel, "ts": received_at, **fields}
    ]


@pytest.mark.parametrize("key", ["switch:0", "pm1:0", "cover:0", "light:0", "rgb:0", "rgbw:0"])
def test_every_metering_component_decodes_in_a_full_status(decode, key):
    out = decode(
        topic="dev/events/rpc",
        payload=b'{"src":"dev","method":"NotifyFullStatus","params":{"ts":10,"%s":{"id":0,'
        b'"apower":5,"aenergy":{"total":7.5},"ret_aenergy":{"total":0.5}}}}' % key.encode(),
    )
    assert out == [
        {
            "kind": "reading",
            "device": "dev",
            "channel": key,
            "ts": 10.0,
            "power_w": 5.0,
            "energy_wh": 7.5,
            "returned_energy_wh": 0.5,
        }
    ]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (b'{"ts":1e300,"pm1:0":{"apower":1}}', "invalid_payload"),  # a date cannot hold it
        (b'{"ts":-5,"pm1:0":{"apower":1}}', "invalid_payload"),
        (b'{"ts":1,"pm1:0":{"aenergy":{"total":1e300}}}', "invalid_payload"),
        (b'{"ts":1,"emdata:0":{"total_act":-2e15}}', "invalid_payload"),
        (b'{"ts":1,"events":[{"component":"sys","event":"x","ts":1e19}]}', "invalid_payload"),
    ],
)
def test_counters_and_timestamps_out_of_range_are_rejected(registry, state, params, reason):
    method = b"NotifyEvent" if b"events" in params else b"NotifyStatus"
    payload = b'{"src":"d","method":"%s","params":%s}' % (method, params)
    with pytest.raises(DecodeError) as info:
        registry.decode("d/events/rpc", payload, received_at=1.0, state=state)
    assert info.value.reason == reason


def test_instant_values_out_of_range_are_left_out(decode):
    out = decode(
        topic="d/events/rpc",
        payload=b'{"src":"d","method":"NotifyStatus","params":{"ts":2,'
        b'"pm1:0":{"apower":1e300,"voltage":-1.5e16,"current":0.2,"aenergy":{"total":12.5}}}}',
    )
    # the bad samples are absent, as if the device had not sent them; the counter stays
    assert out == [
        {
            "kind": "reading",
            "device": "d",
            "channel": "pm1:0",
            "ts": 2.0,
            "current_a": 0.2,
            "energy_wh": 12.5,
        }
    ]


def test_uptime_out_of_range_is_left_out(decode):
    out = decode(
        topic="d/status/sys", payload=b'{"mac":"AABBCCDDEEFF","uptime":18446744073709551615}'
    )
    assert out[0]["mac"] == "AABBCCDDEEFF" and "uptime_s" not in out[0]


@pytest.mark.parametrize(
    "line",
    [
        "dev 1 nan 2|x.c:1 not a time",
        "dev 1 inf 2|x.c:1 not a time",
        "dev 1 1e300 2|x.c:1 no date holds it",
        "dev ² 1700000000 2|x.c:1 a digit int() refuses",
        "dev 1 1700000000 " + "9" * 5000 + "|x.c:1 a level int() refuses",
    ],
)
def test_log_lines_with_unusable_numbers_are_kept_as_text(decode, line):
    [log] = decode(topic="pfx/debug/log", payload=line.encode(), received_at=5.0)
    assert log == {"kind": "log", "device": "pfx", "ts": 5.0, "message": line}
