"""The registry: choosing decoders by topic, third-party decoders, errors, subscriptions."""

from __future__ import annotations

import pytest

from kilowatch.decode import DecoderOptions, DecoderRegistry, DecoderState, default_registry
from kilowatch.errors import DecodeError
from kilowatch.model.messages import Message, Reading


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("shellypmminig3-ecda3bc4ddb0/events/rpc", "shelly"),
        ("shellypmminig3-ecda3bc4ddb0/online", "shelly"),
        ("shellypmminig3-ecda3bc4ddb0/status/pm1:0", "shelly"),
        ("SHpro4PM-Heizung/debug/log", "shelly"),
        ("x/debug/log", "shelly"),
        ("x/online", "shelly"),
        ("x/events/rpc", "shelly"),
        ("x/status/em:0", "shelly"),
        ("/online", None),
        ("home/cellar/boiler/events/rpc", "shelly"),
        ("shellies/shellyplug-s-C18B12/online", "shelly-gen1"),
        ("shellies/announce", "shelly-gen1"),
        ("/system/shellypmminig3-ecda3bc4ddb0/status", "hourly"),
        ("tele/pow/SENSOR", "tasmota"),
        ("stat/pow/STATUS8", "tasmota"),
        ("zigbee2mqtt/plug/availability", "zigbee2mqtt"),
        ("zigbee2mqtt/bridge/state", "zigbee2mqtt"),
        ("x/status/", None),
        ("/status/sys", None),
        ("events/rpc", None),
        ("tele/pow/RESULT", None),
        ("something/else", None),
    ],
)
def test_auto_picks_the_decoder_by_topic(registry, topic, name):
    decoder = registry.decoder_for(topic)
    assert (decoder.name if decoder else None) == name


def test_default_subscriptions(registry):
    assert registry.subscriptions() == [
        "/system/+/status",
        "shellies/#",
        "tele/+/SENSOR",
        "tele/+/LWT",
        "tele/+/STATE",
        "tele/+/INFO1",
        "tele/+/INFO2",
        "stat/+/STATUS8",
        "zigbee2mqtt/#",
        "+/events/rpc",
        "+/online",
        "+/status/+",
        "+/debug/log",
    ]


def test_shelly_prefix_filters():
    registry = default_registry(DecoderOptions(shelly_topic_prefixes=("+", "home/+")))
    subs = registry.subscriptions()
    assert {"+/events/rpc", "home/+/events/rpc", "home/+/status/+", "home/+/debug/log"} <= set(subs)


def test_names(registry):
    assert registry.names == ("hourly", "shelly-gen1", "tasmota", "zigbee2mqtt", "shelly")


def test_unknown_topic(registry, state):
    with pytest.raises(DecodeError) as info:
        registry.decode("some/random/topic", b"{}", received_at=1.0, state=state)
    assert info.value.reason == "unknown_topic"
    assert "some/random/topic" in str(info.value)


def test_explicit_source(registry, state):
    out = registry.decode("tele/pow/LWT", b"Online", received_at=1.0, state=state, source="tasmota")
    assert out[0].device == "pow"
    with pytest.raises(DecodeError) as info:
        registry.decode("tele/pow/LWT", b"Online", received_at=1.0, state=state, source="shelly")
    assert info.value.reason == "unknown_topic"
    with pytest.raises(DecodeError) as info:
        registry.decode("tele/pow/LWT", b"Online", received_at=1.0, state=state, source="gen5")
    assert info.value.reason == "unknown_source"


def test_device_override(registry, state):
    out = registry.decode(
        "/system/abc/status",
        b'{"hourly_energy_usage":1,"timestamp":3600}',
        received_at=1.0,
        state=state,
        device="renamed",
    )
    assert {m.device for m in out} == {"renamed"}


class MeterBox:
    """A third-party decoder: ``meterbox/<id>/kwh`` carries a cumulative kWh number."""

    name = "meterbox"
    subscriptions = ("meterbox/+/kwh",)

    def matches(self, topic: str) -> bool:
        return topic.startswith("meterbox/") and topic.endswith("/kwh")

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        device = topic.split("/")[1]
        if device == "broken":
            raise KeyError("oops")
        return [Reading(device, "main", received_at, energy_wh=float(payload) * 1000)]

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        return None


def test_third_party_decoder_uses_the_same_interface(state):
    registry = default_registry()
    with pytest.raises(DecodeError):
        registry.decode("meterbox/m1/kwh", b"1.5", received_at=1.0, state=state)
    registry.register(MeterBox())  # also drops the cached "no decoder" answer for the topic
    [reading] = registry.decode("meterbox/m1/kwh", b"1.5", received_at=7.0, state=state)
    assert reading == Reading("m1", "main", 7.0, energy_wh=1500.0)
    assert registry.subscriptions()[-1] == "meterbox/+/kwh"
    assert registry.names[-1] == "meterbox"


def test_a_decoder_crash_becomes_invalid_payload(state):
    registry = DecoderRegistry([MeterBox()])
    with pytest.raises(DecodeError) as info:
        registry.decode("meterbox/broken/kwh", b"1", received_at=1.0, state=state)
    assert info.value.reason == "invalid_payload"
    assert isinstance(info.value.__cause__, KeyError)


def test_duplicate_and_reserved_names_are_refused():
    registry = DecoderRegistry([MeterBox()])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(MeterBox())
    auto = MeterBox()
    auto.name = "auto"  # type: ignore[misc]
    with pytest.raises(ValueError):
        registry.register(auto)


@pytest.mark.parametrize(
    ("payload", "source", "device", "topic"),
    [
        (b'{"src":"dev1","method":"NotifyStatus","params":{}}', "auto", None, "dev1/events/rpc"),
        (b'{"src":"dev1","method":"NotifyStatus","params":{}}', "auto", "pfx", "pfx/events/rpc"),
        (
            b'{"hourly_energy_usage":1,"id":"pm","timestamp":3600}',
            "auto",
            None,
            "/system/pm/status",
        ),
        (b'{"ENERGY":{"Total":1}}', "auto", "pow", "tele/pow/SENSOR"),
        (b'{"StatusSNS":{"ENERGY":{}}}', "tasmota", "pow", "stat/pow/STATUS8"),
        (b'{"power":1,"linkquality":9}', "auto", "plug", "zigbee2mqtt/plug"),
        (
            b'{"id":"shellyplug-s-C18B12","model":"SHPLG-S","mac":"A","fw_ver":"v1"}',
            "auto",
            None,
            "shellies/announce",
        ),
        (b"shellyplus1-a 1 1700000000.1 2|x.c:1 hi", "auto", None, "shellyplus1-a/debug/log"),
    ],
)
def test_guess_topic(registry, payload, source, device, topic):
    assert registry.guess_topic(payload, source=source, device=device) == topic


@pytest.mark.parametrize(
    ("payload", "device", "hint"),
    [
        (b"true", None, "--topic"),
        (b"52.37", "dev", "--topic"),
        (b'{"ENERGY":{"Total":1}}', None, "--device"),
        (b'{"power":1,"linkquality":9}', None, "--device"),
        (b'{"method":"NotifyStatus","params":{}}', None, "--device"),
        (b'{"hourly_energy_usage":1,"timestamp":3600}', None, "--device"),
    ],
)
def test_guess_topic_says_what_is_missing(registry, payload, device, hint):
    with pytest.raises(DecodeError) as info:
        registry.guess_topic(payload, device=device)
    assert info.value.reason == "missing_topic"
    assert hint in str(info.value)
