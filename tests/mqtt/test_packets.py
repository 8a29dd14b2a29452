"""The MQTT codec: the frame reader, parsers that answer any bytes with packets or ProtocolError,
and round trips: what a client sends through the parsers the broker uses, and what a broker sends
through the parsers a client (the simulator's) uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilowatch.errors import PacketTooLargeError
from kilowatch.mqtt import ProtocolError
from kilowatch.mqtt.packets import (
    ConnectReturnCode,
    FrameReader,
    PacketType,
    Will,
    check_flags,
    encode_ack,
    encode_connack,
    encode_connect,
    encode_length,
    encode_packet,
    encode_publish,
    encode_string,
    encode_suback,
    encode_subscribe,
    encode_unsubscribe,
    parse_connack,
    parse_connect,
    parse_connect_protocol,
    parse_packet_id,
    parse_publish,
    parse_suback,
    parse_subscribe,
    parse_unsubscribe,
)


def one_frame(packet: bytes) -> tuple[int, bytes]:
    """The single frame ``packet`` is, checked the way the broker checks a client's packets."""
    frames = FrameReader(1 << 20).feed(packet)
    assert len(frames) == 1
    return frames[0]


def test_frame_reader_handles_any_split() -> None:
    packets = [encode_publish("t", b"p" * n, qos=1, packet_id=n + 1) for n in (0, 5, 200, 20_000)]
    stream = b"".join(packets)
    for chunk in (1, 2, 3, 127, 4096):
        reader = FrameReader(1 << 20)
        frames = []
        for i in range(0, len(stream), chunk):
            frames += reader.feed(stream[i : i + chunk])
        assert [parse_publish(first, body).payload for first, body in frames] == [
            b"p" * n for n in (0, 5, 200, 20_000)
        ]


def test_frame_reader_limits() -> None:
    with pytest.raises(PacketTooLargeError):
        FrameReader(100).feed(b"\x30\xe8\x07")  # announces 1000 bytes; nothing else needed
    with pytest.raises(ProtocolError):
        FrameReader(1 << 30).feed(b"\x30\x80\x80\x80\x80\x01")


_PARSERS = {
    PacketType.CONNECT: lambda first, body: parse_connect(body),
    PacketType.PUBLISH: parse_publish,
    PacketType.SUBSCRIBE: lambda first, body: parse_subscribe(body),
    PacketType.UNSUBSCRIBE: lambda first, body: parse_unsubscribe(body),
    PacketType.PUBACK: lambda first, body: parse_packet_id(body),
}


@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes, chunk: int) -> None:
    """Whatever a client sends, the codec answers with frames or ProtocolError, nothing else."""
    reader = FrameReader(200)
    try:
        for i in range(0, len(data), chunk):
            for first, body in reader.feed(data[i : i + chunk]):
                kind = check_flags(first)
                parser = _PARSERS.get(kind)
                if parser is not None:
                    parser(first, body)
    except ProtocolError:
        pass


# What a broker may send a client; the simulator's client parses these and nothing else.
_CLIENT_PARSERS = {
    PacketType.CONNACK: lambda first, body: parse_connack(body),
    PacketType.PUBLISH: parse_publish,
    PacketType.PUBACK: lambda first, body: parse_packet_id(body),
    PacketType.SUBACK: lambda first, body: parse_suback(body),
    PacketType.UNSUBACK: lambda first, body: parse_packet_id(body),
}


@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_bytes_from_a_broker_parse_or_raise_protocol_error(data: bytes, chunk: int) -> None:
    """Whatever a broker sends, a client's parsers answer with packets or ProtocolError."""
    reader = FrameReader(200)
    try:
        for i in range(0, len(data), chunk):
            for first, body in reader.feed(data[i : i + chunk]):
                parser = _CLIENT_PARSERS.get(first >> 4)
                if parser is not None:
                    parser(first, body)
    except ProtocolError:
        pass


_packet_id = st.integers(1, 65535)
# Any UTF-8 string without U+0000 (§1.5.3).
_name = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)


@given(_packet_id, st.lists(st.tuples(_name, st.integers(0, 2)), min_size=1, max_size=5))
def test_subscribe_round_trips(packet_id: int, filters: list[tuple[str, int]]) -> None:
    first, body = one_frame(encode_subscribe(packet_id, filters))
    assert check_flags(first) == PacketType.SUBSCRIBE
    assert parse_subscribe(body) == (packet_id, filters)


@given(_packet_id, st.lists(_name, min_size=1, max_size=5))
def test_unsubscribe_round_trips(packet_id: int, filters: list[str]) -> None:
    first, body = one_frame(encode_unsubscribe(packet_id, filters))
    assert check_flags(first) == PacketType.UNSUBSCRIBE
    assert parse_unsubscribe(body) == (packet_id, filters)


def test_long_subscribe_uses_a_multi_byte_length() -> None:
    packet = encode_subscribe(7, [("a/" * 100 + "#", 1)])
    assert packet[1] & 0x80
    _, body = one_frame(packet)
    assert parse_subscribe(body) == (7, [("a/" * 100 + "#", 1)])


@pytest.mark.parametrize("kind", [PacketType.PINGREQ, PacketType.DISCONNECT])
def test_bare_packets_pass_the_brokers_flag_check(kind: PacketType) -> None:
    first, body = one_frame(encode_packet(kind))
    assert check_flags(first) == kind
    assert body == b""


def test_bare_packet_refuses_a_packet_with_a_body() -> None:
    assert encode_packet(PacketType.PINGRESP) == b"\xd0\x00"
    with pytest.raises(ValueError, match="PUBLISH has a body"):
        encode_packet(PacketType.PUBLISH)


def test_connect_round_trips_with_will_and_credentials() -> None:
    will = Will("dev/online", b"false", 0, True)
    packet = encode_connect("dev", keepalive=60, will=will, username="u", password=b"p")
    first, body = one_frame(packet)
    assert check_flags(first) == PacketType.CONNECT
    connect = parse_connect(body)
    assert (connect.client_id, connect.keepalive, connect.clean_session) == ("dev", 60, True)
    assert (connect.will, connect.username, connect.password) == (will, "u", b"p")


# MQTT 5.0 §3.1.2.11.2: property 0x11, Session Expiry Interval, a four-byte integer (10 s here).
SESSION_EXPIRY_10 = b"\x11" + (10).to_bytes(4, "big")


def test_mqtt5_connect_has_the_mqtt5_layout() -> None:
    will = Will("dev/online", b"false", 1, False)
    packet = encode_connect(
        "dev", keepalive=10, will=will, username="u", password=b"p", protocol_level=5,
        properties=SESSION_EXPIRY_10,
    )  # fmt: skip
    first, body = one_frame(packet)
    assert check_flags(first) == PacketType.CONNECT
    # The variable header of the example in MQTT 5.0 §3.1.2: name, version 5, flags 0xCE (user,
    # password, will QoS 1, will, clean start), keepalive 10, properties of 5 bytes.
    assert body[:16] == b"\x00\x04MQTT\x05\xce\x00\x0a\x05" + SESSION_EXPIRY_10
    # §3.1.3: client id, will properties (none: length 0), will topic and payload, user, password.
    assert body[16:] == (
        b"\x00\x03dev" + b"\x00" + b"\x00\x0adev/online\x00\x05false" + b"\x00\x01u\x00\x01p"
    )
    assert parse_connect_protocol(body) == ("MQTT", 5)


def test_mqtt5_connect_properties_use_a_variable_byte_length() -> None:
    # A User Property (0x26: name, value) long enough for a two-byte property length.
    user_property = b"\x26" + encode_string("site") + encode_string("x" * 200)
    will_delay = b"\x18" + (30).to_bytes(4, "big")  # §3.1.3.2.2 Will Delay Interval
    packet = encode_connect(
        "long", will=Will("w", b"", 0, False), protocol_level=5, properties=user_property,
        will_properties=will_delay,
    )  # fmt: skip
    _, body = one_frame(packet)
    props_at = 10  # name (6), level, flags, keepalive (2)
    # 209 bytes of properties: a two-byte variable byte integer (§1.5.5)
    assert body[props_at : props_at + 2] == encode_length(len(user_property)) == b"\xd1\x01"
    rest = body[props_at + 2 + len(user_property) :]
    assert rest == b"\x00\x04long" + b"\x05" + will_delay + b"\x00\x01w\x00\x00"


def test_only_mqtt5_connect_has_properties() -> None:
    assert (
        encode_connect("a", protocol_level=5)
        == b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01a"
    )
    with pytest.raises(ValueError, match="only an MQTT 5"):
        encode_connect("a", properties=SESSION_EXPIRY_10)
    with pytest.raises(ValueError, match="only an MQTT 5"):
        encode_connect("a", will_properties=b"\x18\x00\x00\x00\x01")


@pytest.mark.parametrize(
    "packet",
    [
        encode_connect("v5", protocol_level=5, properties=SESSION_EXPIRY_10),
        encode_connect("v5", protocol_level=5),
        encode_connect("v6", protocol_level=6),
        encode_connect("odd", protocol_name="MQIsdp", protocol_level=4),
    ],
)
def test_parse_connect_reads_no_further_than_an_unsupported_protocol(packet: bytes) -> None:
    _, body = one_frame(packet)
    with pytest.raises(ProtocolError, match=r"not MQTT 3\.1\.1") as err:
        parse_connect(body)
    assert err.value.reason == "unsupported_protocol"


@pytest.mark.parametrize("code", list(ConnectReturnCode))
@pytest.mark.parametrize("session_present", [False, True])
def test_connack_round_trips(session_present: bool, code: ConnectReturnCode) -> None:
    first, body = one_frame(encode_connack(session_present, code))
    assert first >> 4 == PacketType.CONNACK
    assert parse_connack(body) == (session_present, code)


def test_suback_and_unsuback_round_trip() -> None:
    first, body = one_frame(encode_suback(513, [1, 0, 0x80]))
    assert first >> 4 == PacketType.SUBACK
    assert parse_suback(body) == (513, [1, 0, 0x80])
    first, body = one_frame(encode_ack(PacketType.UNSUBACK, 514))
    assert first >> 4 == PacketType.UNSUBACK
    assert parse_packet_id(body) == 514


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00\x00"])
def test_connack_of_the_wrong_size_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="CONNACK"):
        parse_connack(body)


@pytest.mark.parametrize("body", [b"", b"\x00\x01"])
def test_suback_without_a_code_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="SUBACK"):
        parse_suback(body)
