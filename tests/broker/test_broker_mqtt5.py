"""Embedded broker: an MQTT 5 client gets a clear refusal (CONNACK 1, then the connection closes),
whatever its CONNECT holds; the CONNECTs these tests send are real MQTT 5 ones (mosquitto, which
speaks 5.0, accepts them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest

from kilowatch.mqtt.packets import PacketType, Will, encode_connect, encode_string
from kilowatch.testing import MosquittoServer

if TYPE_CHECKING:  # helpers live in conftest.py (importlib mode: not importable at run time)
    from conftest import BrokerThread, Client, RawClient

# MQTT 5.0 §3.1.2.11: Session Expiry Interval (0x11, one hour), Receive Maximum (0x21, 20), a User
# Property (0x26); §3.1.3.2: Will Delay Interval (0x18, 30 s).
PROPERTIES = (
    b"\x11" + (3600).to_bytes(4, "big")
    + b"\x21" + (20).to_bytes(2, "big")
    + b"\x26" + encode_string("site") + encode_string("home")
)  # fmt: skip
WILL_PROPERTIES = b"\x18" + (30).to_bytes(4, "big")
# The 3.1.1 CONNACK: return code 1, unacceptable protocol version (MQTT 3.1.1 §3.2.2.3).
REFUSED = (0x20, b"\x00\x01")


def mqtt5_connect(kind: str, client_id: str) -> bytes:
    """A real MQTT 5 CONNECT, built by the codec."""
    if kind == "bare":
        return encode_connect(client_id, protocol_level=5)
    if kind == "properties":
        return encode_connect(client_id, protocol_level=5, properties=PROPERTIES)
    if kind == "empty client id":
        return encode_connect("", protocol_level=5, properties=PROPERTIES)
    assert kind == "will and credentials"
    return encode_connect(
        client_id, clean_session=False, keepalive=30, will=Will("v5/will", b"gone", 1, True),
        username="meter", password=b"s3cret", protocol_level=5, properties=PROPERTIES,
        will_properties=WILL_PROPERTIES,
    )  # fmt: skip


KINDS = ["bare", "empty client id", "properties", "will and credentials"]


@pytest.mark.parametrize("kind", KINDS)
def test_mqtt5_connect_gets_connack_1_and_is_closed(
    kind: str, broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    client = raw(broker.port)
    client.send(mqtt5_connect(kind, "v5"))
    assert client.read() == REFUSED
    assert client.closed_by_broker()
    stats = broker.stats()
    assert (stats.protocol_errors, stats.sessions, stats.messages_in) == (0, 0, 0)  # no will


def test_mqtt5_connect_in_pieces_and_with_packets_behind_it(
    broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    client = raw(broker.port)
    packet = mqtt5_connect("will and credentials", "v5-pieces")
    for i in range(len(packet)):
        client.send(packet[i : i + 1])
    client.send(b"\xc0\x00")  # a PINGREQ right behind it is never answered
    assert client.read() == REFUSED
    assert client.closed_by_broker()


def test_paho_mqtt5_client_is_told_its_version_is_unsupported(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    client = clients(broker.port, "paho-v5", protocol=mqtt.MQTTv5)
    assert client.connect() == (0x84, False)
    reason = client.reasons.get_nowait()
    assert reason.is_failure and reason.getName() == "Unsupported protocol version"
    assert client.disconnected.wait(10)
    assert broker.stats().sessions == 0


def test_mqtt311_and_31_clients_still_connect(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv31):
        client = clients(broker.port, f"after-v5-{protocol}", protocol=protocol)
        assert client.connect() == (0, False)


@pytest.mark.parametrize("kind", KINDS)
def test_the_mqtt5_connects_are_real_ones(
    kind: str, mosquitto: MosquittoServer, raw: Callable[[int], RawClient]
) -> None:
    """mosquitto speaks MQTT 5 and accepts these CONNECTs: its CONNACK has the 5.0 layout (flags,
    reason code 0 "success", properties: MQTT 5.0 §3.2.2)."""
    client = raw(mosquitto.port)
    client.send(mqtt5_connect(kind, f"kw-v5-check-{kind.replace(' ', '-')}"))
    first, body = client.read()
    assert first == PacketType.CONNACK << 4
    assert body[1] == 0x00 and len(body) >= 3


def test_a_level_5_connect_in_the_311_layout_is_no_mqtt5_connect(
    mosquitto: MosquittoServer, raw: Callable[[int], RawClient]
) -> None:
    """What the old test sent: mosquitto reads its client id length as the property length and
    drops the connection without a CONNACK."""
    client = raw(mosquitto.port)
    body = encode_string("MQTT") + b"\x05\x02\x00\x3c" + encode_string("v5")
    client.send(bytes((0x10, len(body))) + body)
    assert client.closed_by_broker()


def test_level_5_in_the_311_layout_gets_connack_1_too(
    broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    """The level is checked before anything after it is read."""
    client = raw(broker.port)
    body = encode_string("MQTT") + b"\x05\x02\x00\x3c" + encode_string("v5")
    client.send(bytes((0x10, len(body))) + body)
    assert client.read() == REFUSED
    assert client.closed_by_broker()
