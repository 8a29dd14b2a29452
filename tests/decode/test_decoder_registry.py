"""The registry: choosing decoders by topic, third-party decoders, errors, subscriptions."""

from __future__ import annotations

import pytest

from kilowatch.decode import DecoderOptions, DecoderRegistry, DecoderState, default_registry
from kilowatch.errors import ConfigError, DecodeError
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
    assert registry.names == (
        "hourly",
        "shelly-http",
        "shelly-gen1",
        "tasmota",
        "zigbee2mqtt",
        "shelly",
    )


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


SENSOR = b'{"ENERGY":{"Total":1.5,"Power":40}}'
RPC = (
    b'{"src":"shellypmminig3-ecda3bc4ddb0","method":"NotifyStatus",'
    b'"params":{"ts":5,"pm1:0":{"apower":1}}}'
)


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("home/kitchen/tele/SENSOR", "home/kitchen"),  # FullTopic home/%topic%/%prefix%/
        ("tele/site/kitchen/SENSOR", "site/kitchen"),  # FullTopic %prefix%/site/%topic%/
        ("tasmota/kitchen/tele/SENSOR", "tasmota/kitchen"),
        ("tele/kitchen/SENSOR", "kitchen"),  # the configured default still reads as before
    ],
)
def test_a_named_source_reads_custom_tasmota_layouts(registry, state, topic, device):
    [reading] = registry.decode(topic, SENSOR, received_at=1.0, state=state, source="tasmota")
    assert (reading.device, reading.channel, reading.energy_wh) == (device, "ENERGY", 1500.0)


def test_custom_tasmota_layout_is_unknown_to_auto_detection(registry, state):
    with pytest.raises(DecodeError) as info:
        registry.decode("home/kitchen/tele/SENSOR", SENSOR, received_at=1.0, state=state)
    assert info.value.reason == "unknown_topic"
    assert "--source" in str(info.value)  # the message says how to read a custom layout


@pytest.mark.parametrize(
    ("topic", "source"),
    [
        ("home/kitchen/tele/RESULT", "tasmota"),  # not a leaf kilowatch reads
        ("home/kitchen/SENSOR", "tasmota"),  # no tele level
        ("tele/SENSOR", "tasmota"),  # no device level
        ("home//tele/SENSOR", "tasmota"),
        ("home/boiler/relay/0/power", "shelly-gen1"),  # Gen1's shellies/ root is fixed
        ("plug", "zigbee2mqtt"),  # no friendly name
        ("tele/pow/LWT", "shelly"),
    ],
)
def test_a_named_source_still_refuses_topics_it_cannot_read(registry, state, topic, source):
    with pytest.raises(DecodeError) as info:
        registry.decode(topic, b"{}", received_at=1.0, state=state, source=source)
    assert info.value.reason == "unknown_topic"


def test_a_named_source_reads_other_custom_layouts(registry, state):
    # a Gen2+ topic_prefix that another decoder's layout would take in auto-detection
    for prefix in ("site7/pm/boiler", "shellies/boiler", "zigbee2mqtt/boiler"):
        [reading] = registry.decode(
            f"{prefix}/events/rpc", RPC, received_at=1.0, state=state, source="shelly"
        )
        assert (reading.device, reading.power_w) == ("shellypmminig3-ecda3bc4ddb0", 1.0)
    assert registry.decode("shellies/boiler/events/rpc", RPC, received_at=1.0, state=state) == []
    # Zigbee2MQTT under a base topic that is not configured: the first level is the base
    [reading] = registry.decode(
        "z2m/living room plug", b'{"energy":2}', received_at=1.0, state=state, source="zigbee2mqtt"
    )
    assert (reading.device, reading.energy_wh) == ("living room plug", 2000.0)
    # the hourly script publishes on a configurable topic: the device is the payload's id
    interval, _ = registry.decode(
        "site7/hourly",
        b'{"hourly_energy_usage":1,"id":"pm","timestamp":3600}',
        received_at=1.0,
        state=state,
        source="hourly",
    )
    assert (interval.device, interval.start) == ("pm", 3600)


def test_routes_name_the_source_of_a_topic_layout():
    registry = default_registry(
        DecoderOptions(topic_sources=(("home/+/tele/+", "tasmota"), ("shellies/gen2/#", "shelly")))
    )
    assert registry.subscriptions()[:2] == ["home/+/tele/+", "shellies/gen2/#"]
    state = DecoderState()
    [reading] = registry.decode("home/kitchen/tele/SENSOR", SENSOR, received_at=1.0, state=state)
    assert reading.device == "home/kitchen"
    assert registry.decoder_for("home/kitchen/tele/SENSOR").name == "tasmota"
    # a routed topic belongs to its source: Gen1 no longer takes shellies/gen2/...
    [reading] = registry.decode("shellies/gen2/x/events/rpc", RPC, received_at=1.0, state=state)
    assert reading.power_w == 1.0
    with pytest.raises(DecodeError) as info:
        registry.decode("shellies/gen2/relay/0/power", b"1", received_at=1.0, state=state)
    assert info.value.reason == "unknown_topic"
    assert "routed to shelly" in str(info.value)
    # topics no route matches are auto-detected as before
    assert registry.decoder_for("shellies/plug/relay/0/power").name == "shelly-gen1"
    assert registry.decoder_for("tele/pow/SENSOR").name == "tasmota"


@pytest.mark.parametrize(
    ("route", "hint"),
    [
        (("home/#/x", "tasmota"), "'#' only the last"),
        (("home/a+", "tasmota"), "whole levels"),
        (("", "tasmota"), "not an MQTT topic filter"),
        (("home/#", "tasmota32"), "names no decoder"),
    ],
)
def test_bad_routes_are_config_errors(route, hint):
    with pytest.raises(ConfigError, match=hint):
        default_registry(DecoderOptions(topic_sources=(route,)))


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("+/+", "a/", True),
        ("+", "$SYS", False),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
    ],
)
def test_route_filters_follow_mqtt_matching(topic_filter, topic, matches):
    from kilowatch.decode.registry import _filter_levels, _filter_matches

    assert _filter_matches(_filter_levels(topic_filter), topic) is matches


def test_a_third_party_decoder_can_read_any_layout_too(state):
    class AnyMeterBox(MeterBox):
        name = "anymeterbox"

        def matches_any_layout(self, topic: str) -> bool:
            return topic.endswith("/kwh")

    registry = DecoderRegistry([MeterBox(), AnyMeterBox()])
    assert registry.decode("site/m1/kwh", b"1", received_at=1.0, state=state, source="anymeterbox")
    with pytest.raises(DecodeError):  # MeterBox reads its configured layout only
        registry.decode("site/m1/kwh", b"1", received_at=1.0, state=state, source="meterbox")


def test_a_recursion_error_in_a_third_party_decoder_is_too_deeply_nested(state):
    class Recursive(MeterBox):
        def decode(self, topic, payload, *, received_at, state):
            raise RecursionError("maximum recursion depth exceeded")

    registry = DecoderRegistry([Recursive()])
    with pytest.raises(DecodeError) as info:
        registry.decode("meterbox/m1/kwh", b"1", received_at=1.0, state=state)
    assert info.value.reason == "too_deeply_nested"
