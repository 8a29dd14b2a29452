"""The client side of the MQTT codec: what a client sends round-trips through the parsers the
broker uses, and what a broker sends through the parsers a client uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    encode_packet,
    encode_suback,
    encode_subscribe,
    encode_unsubscribe,
    parse_connack,
    parse_connect,
    parse_packet_id,
    parse_suback,
    parse_subscribe,
    parse_unsubscribe,
)


def one_frame(packet: bytes) -> tuple[int, bytes]:
    """The single frame ``packet`` is, checked the way the broker checks a client's packets."""
    frames = FrameReader(1 << 20).feed(packet)
    assert len(frames) == 1
    return frames[0]


_packet_id = st.integers(1, 65535)
# Any UTF-8 without U+0000 (§1.5.3), long enough to need a multi-byte remaining length.
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
