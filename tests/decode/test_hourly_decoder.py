"""The hourly metering script: one Interval per hour, validated."""

from __future__ import annotations

import pytest

from kilowatch.errors import DecodeError

PM = "shellypmminig3-ecda3bc4ddb0"


def test_brief_payload(decode):
    assert decode("hourly/pm_mini_g3/status.json") == [
        {
            "kind": "interval",
            "device": PM,
            "channel": "hourly",
            "start": 1720717200,
            "end": 1720720800,
            "energy_wh": 564.559,
            "returned_energy_wh": 0.0,
        },
        {
            "kind": "device_info",
            "device": PM,
            "ts": 1720717201.3,
            "mac": "ECDA3BC4DDB0",
            "fw_ver": "1.4.0-beta1",
        },
    ]


def test_topic_id_wins_and_payload_id_fills_in(decode):
    payload = b'{"id":"from-payload","hourly_energy_usage":1,"timestamp":3600}'
    assert decode(topic="/system/from-topic/status", payload=payload)[0]["device"] == "from-topic"
    interval = decode(topic="/system//status", payload=payload)[0]
    assert interval["device"] == "from-payload"
    assert interval["returned_energy_wh"] == 0.0  # not in the payload: nothing returned


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"hourly_energy_usage":1,"timestamp":1720717201}', "invalid_payload"),  # not an hour
        (b'{"hourly_energy_usage":1,"timestamp":"1720717200"}', "invalid_payload"),
        (b'{"hourly_energy_usage":1}', "invalid_payload"),
        (b'{"hourly_energy_usage":-0.5,"timestamp":3600}', "invalid_payload"),
        (
            b'{"hourly_energy_usage":1,"hourly_ret_energy_usage":-1,"timestamp":3600}',
            "invalid_payload",
        ),
        (b'{"hourly_energy_usage":true,"timestamp":3600}', "invalid_payload"),
        (b'{"hourly_energy_usage":1e300,"timestamp":3600}', "invalid_payload"),
        (b'{"hourly_energy_usage":1,"timestamp":1e308}', "invalid_payload"),  # no date holds it
        (b'{"hourly_energy_usage":1,"timestamp":-3600}', "invalid_payload"),
        (b'{"hourly_energy_usage":1,"timestamp":18446744073709548800}', "invalid_payload"),
        (b'{"timestamp":3600}', "invalid_payload"),
        (b'{"hourly_energy_usage":1,"timestamp":3600', "invalid_json"),
        (b'{"hourly_energy_usage":1,"timestamp":3600}', None),
        (b'{"hourly_energy_usage":1,"timestamp":7200.0}', None),
    ],
)
def test_validation(registry, state, payload, reason):
    if reason is None:
        [interval, _] = registry.decode("/system/d/status", payload, received_at=1.0, state=state)
        assert interval.end - interval.start == 3600
        return
    with pytest.raises(DecodeError) as info:
        registry.decode("/system/d/status", payload, received_at=1.0, state=state)
    assert info.value.reason == reason
