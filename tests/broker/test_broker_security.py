"""Embedded broker: CONNACK return codes, passwords, TLS, binding rules, oversized and malformed
packets (which must cost only the offending connection)."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest

from kilowatch.broker.embedded import EmbeddedBroker, server_tls_context
from kilowatch.broker.passwords import scrypt_hash
from kilowatch.errors import BrokerError
from kilowatch.mqtt.packets import (
    PacketType,
    Will,
    encode_connect,
    encode_length,
    encode_publish,
    encode_string,
)
from kilowatch.testing.tls import self_signed_cert

if TYPE_CHECKING:  # helpers live in conftest.py (importlib mode: not importable at run time)
    from conftest import BrokerThread, Client, RawClient


def test_connack_return_codes(broker: BrokerThread, raw: Callable[[int], RawClient]) -> None:
    # a real MQTT 5 CONNECT (with its properties length); more in test_broker_mqtt5.py
    assert raw(broker.port).connect("v5", protocol_level=5) == (False, 1)
    assert raw(broker.port).connect("odd", protocol_name="MQIsdp", protocol_level=4) == (False, 1)
    assert raw(broker.port).connect("v31", protocol_name="MQIsdp", protocol_level=3) == (False, 0)
    assert raw(broker.port).connect("", clean_session=False) == (False, 2)
    assert raw(broker.port).connect("", protocol_name="MQIsdp", protocol_level=3) == (False, 2)
    assert raw(broker.port).connect("", clean_session=True) == (False, 0)


def test_refused_client_is_disconnected(
    broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    client = raw(broker.port)
    assert client.connect("v6", protocol_level=6) == (False, 1)
    assert client.closed_by_broker()


def test_empty_client_id_gets_one_assigned(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    anon = [clients(broker.port, "") for _ in range(2)]
    for client in anon:
        assert client.connect() == (0, False)
        client.subscribe("anon", 1)
    anon[0].publish("anon", b"both get it")
    assert [c.expect(1)[0].payload for c in anon] == [b"both get it", b"both get it"]
    assert broker.stats().sessions == 2


def test_mqtt31_client(broker: BrokerThread, clients: Callable[..., Client]) -> None:
    client = clients(broker.port, "old-client", protocol=mqtt.MQTTv31)
    assert client.connect() == (0, False)
    client.subscribe("v31", 1)
    client.publish("v31", b"ok")
    assert client.expect(1)[0].payload == b"ok"


def test_users_dict(
    start_broker: Callable[..., BrokerThread],
    clients: Callable[..., Client],
    raw: Callable[[int], RawClient],
) -> None:
    broker = start_broker(users={"meter": "s3cret"})
    assert raw(broker.port).connect("a", username="meter", password=b"wrong") == (False, 4)
    assert raw(broker.port).connect("b", username="nobody", password=b"s3cret") == (False, 4)
    assert raw(broker.port).connect("c", username="meter") == (False, 4)
    assert raw(broker.port).connect("d") == (False, 5)  # anonymous: not authorised
    good = clients(broker.port, "good", username="meter", password="s3cret")
    assert good.connect() == (0, False)
    good.subscribe("t", 1)
    good.publish("t", b"authenticated")
    assert good.expect(1)[0].payload == b"authenticated"


def test_password_file(
    start_broker: Callable[..., BrokerThread], raw: Callable[[int], RawClient], tmp_path: Path
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(
        f"# kilowatch broker users\n\ninstaller:{scrypt_hash('pa:ss word')}\n"
        f"viewer:{scrypt_hash('other', log2_n=10)}\n"
    )
    broker = start_broker(password_file=passwd)
    assert raw(broker.port).connect("x", username="installer", password=b"pa:ss word") == (False, 0)
    assert raw(broker.port).connect("y", username="installer", password=b"pa:ss") == (False, 4)
    assert raw(broker.port).connect("z", username="viewer", password=b"other") == (False, 0)
    # a remembered successful check still refuses a wrong password
    assert raw(broker.port).connect("w", username="installer", password=b"nope") == (False, 4)
    assert raw(broker.port).connect("v", username="installer", password=b"pa:ss word") == (False, 0)


def test_mosquitto_password_file(
    start_broker: Callable[..., BrokerThread],
    clients: Callable[..., Client],
    raw: Callable[[int], RawClient],
) -> None:
    """A password file written by mosquitto_passwd ($7$ and $6$ lines) works unchanged."""
    broker = start_broker(password_file=Path(__file__).with_name("mosquitto-passwd.txt"))
    assert raw(broker.port).connect("a", username="meter", password=b"s3cret") == (False, 0)
    assert raw(broker.port).connect("b", username="legacy", password=b"old pass") == (False, 0)
    assert raw(broker.port).connect("c", username="legacy", password=b"old") == (False, 4)
    assert raw(broker.port).connect("d") == (False, 5)
    device = clients(broker.port, "dev", username="installer", password="pa:ss wörd")
    assert device.connect() == (0, False)


def test_bad_password_file_is_a_clear_error(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:plaintext\n")
    with pytest.raises(BrokerError, match=r"passwd:1: not a 'user:hash' line \(unknown hash"):
        EmbeddedBroker(port=0, password_file=passwd)
    with pytest.raises(BrokerError, match="cannot read the broker password file"):
        EmbeddedBroker(port=0, password_file=tmp_path / "missing")


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.20", "broker.home.arpa"])
def test_binding_beyond_loopback_needs_credentials(host: str) -> None:
    # Refused by the constructor: nothing listens, not even for a moment.
    with pytest.raises(BrokerError) as err:
        EmbeddedBroker(host, 0)
    assert str(err.value) == (
        f"the embedded broker would listen on {host or '0.0.0.0'}, which other machines can "
        "reach, without credentials; give it users with --mqtt-password-file FILE (lines made by "
        "mosquitto_passwd) or --mqtt-user and --mqtt-password, or bind it to 127.0.0.1 with "
        "--mqtt-host"
    )


def test_binding_beyond_loopback_with_credentials_is_allowed(tmp_path: Path) -> None:
    assert EmbeddedBroker("0.0.0.0", 0, users={"meter": "s3cret"}).auth.enabled
    passwd = Path(__file__).with_name("mosquitto-passwd.txt")
    assert EmbeddedBroker("192.168.1.20", 0, password_file=passwd).auth.knows("meter")
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert not EmbeddedBroker(loopback, 0).auth.enabled


async def test_port_in_use_is_a_clear_error() -> None:
    async with EmbeddedBroker("127.0.0.1", 0) as first:
        port = first.port
        assert port != 0
        with pytest.raises(BrokerError) as err:
            async with EmbeddedBroker("127.0.0.1", port):
                pass
    assert str(err.value) == (
        f"port {port} is in use; pass --broker mqtt://localhost:{port} to use the broker that is "
        "running there, or --mqtt-port to pick another"
    )


def test_tls_listener(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client], tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    broker = start_broker(ssl_context=context)
    assert broker.call(lambda b: b.url) == f"mqtts://127.0.0.1:{broker.port}"
    client = clients(broker.port, "tls", tls_ca=str(cert))
    assert client.connect() == (0, False)
    client.subscribe("tls/#", 1)
    client.publish("tls/x", b"encrypted")
    assert client.expect(1)[0].payload == b"encrypted"


def test_tls_listener_beside_plain_mqtt(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client], tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    broker = start_broker(ssl_context=server_tls_context(cert, key), tls_port=0)
    port, tls_port = broker.call(lambda b: (b.port, b.tls_port))
    assert tls_port not in (None, 0, port)
    assert broker.call(lambda b: (b.url, b.tls_url)) == (
        f"mqtt://127.0.0.1:{port}",
        f"mqtts://127.0.0.1:{tls_port}",
    )
    plain = clients(port, "plain")
    assert plain.connect() == (0, False)
    plain.subscribe("both/#", 1)
    device = clients(tls_port, "over-tls", tls_ca=str(cert))
    assert device.connect() == (0, False)
    device.publish("both/x", b"from TLS to plain")
    assert plain.expect(1)[0].payload == b"from TLS to plain"


async def test_tls_port_in_use_names_its_flag(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    context = server_tls_context(cert, key)
    async with EmbeddedBroker("127.0.0.1", 0, ssl_context=context) as first:
        busy = first.port
        assert first.tls_port == busy and first.tls_url == f"mqtts://127.0.0.1:{busy}"
        with pytest.raises(BrokerError) as err:
            async with EmbeddedBroker("127.0.0.1", 0, ssl_context=context, tls_port=busy):
                pass
    assert str(err.value) == (
        f"port {busy} is in use; pass --broker mqtts://localhost:{busy} to use the broker that is "
        "running there, or --mqtt-tls-port to pick another"
    )


def test_tls_port_needs_a_context() -> None:
    with pytest.raises(BrokerError, match="tls_port needs an ssl_context"):
        EmbeddedBroker(port=0, tls_port=0)
    with pytest.raises(BrokerError, match="invalid broker port 70000"):
        EmbeddedBroker(port=0, tls_port=70000)


def _healthy(port: int, clients: Callable[..., Client], name: str) -> None:
    client = clients(port, f"healthy-{name}")
    assert client.connect() == (0, False)
    client.subscribe(f"ok/{name}", 1)
    client.publish(f"ok/{name}", b"still working")
    assert client.expect(1)[0].payload == b"still working"


def test_oversized_packet_closes_only_that_client(
    start_broker: Callable[..., BrokerThread],
    clients: Callable[..., Client],
    raw: Callable[[int], RawClient],
) -> None:
    broker = start_broker(max_packet_size=1024)
    watcher = clients(broker.port, "big-watcher")
    watcher.connect()
    watcher.subscribe("big/#", 1)
    big = raw(broker.port)
    big.connect("big")
    big.publish("big/ok", b"x" * 900, qos=0)
    # only the header is sent: the broker must refuse from the announced length alone
    big.send(encode_publish("big/huge", b"y" * 2000)[:10])
    assert big.closed_by_broker()
    assert [m.payload for m in watcher.expect(1)] == [b"x" * 900]
    assert broker.stats().protocol_errors == 1
    _healthy(broker.port, clients, "big")


def _subscribe_packet(first: int, topic_filter: str, options: int) -> bytes:
    body = b"\x00\x01" + encode_string(topic_filter) + bytes((options,))
    return bytes((first,)) + encode_length(len(body)) + body


MALFORMED: dict[str, bytes] = {
    "garbage": b"\xff\xff\xff\xff\xff\xff",
    "remaining length over 4 bytes": b"\x30\xff\xff\xff\xff\x01",
    "wildcard in topic name": encode_publish("a/+/b", b"x"),
    "invalid utf-8 topic": b"\x30\x05\x00\x02\xc3\x28x",
    "nul in topic": encode_publish("a\x00b", b"x"),
    "publish qos 3": b"\x36\x05\x00\x01a\x00\x01",
    "packet id 0": encode_publish("a", b"x", qos=1, packet_id=0),
    "topic longer than packet": b"\x30\x03\x00\x09a",
    "subscribe wrong flags": _subscribe_packet(0x80, "a", 1),
    "subscribe qos 3": _subscribe_packet(0x82, "a", 3),
    "second connect": b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
    "connack from client": b"\x20\x02\x00\x00",
    "puback of wrong length": b"\x40\x03\x00\x01\x00",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_packet_closes_only_that_client(
    name: str,
    broker: BrokerThread,
    clients: Callable[..., Client],
    raw: Callable[[int], RawClient],
) -> None:
    watcher = clients(broker.port, "mal-watcher")
    watcher.connect()
    watcher.subscribe("mal/#", 1)
    bad = raw(broker.port)
    bad.connect("bad", will=None)
    bad.send(MALFORMED[name])
    assert bad.closed_by_broker()
    assert broker.stats().protocol_errors == 1
    _healthy(broker.port, clients, "mal")


@pytest.mark.parametrize(
    "data",
    [
        encode_publish("a", b"x"),  # anything before CONNECT
        b"\x10\x05\x00\x04MQT",  # CONNECT whose protocol name is cut short
        b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00",  # reserved CONNECT flag
        encode_connect("w", will=Will("a/#", b"x", 0, False)),  # wildcard in the will topic
    ],
)
def test_malformed_first_packet(
    data: bytes,
    broker: BrokerThread,
    clients: Callable[..., Client],
    raw: Callable[[int], RawClient],
) -> None:
    bad = raw(broker.port)
    bad.send(data)
    assert bad.closed_by_broker()
    _healthy(broker.port, clients, "first")


def test_invalid_filter_is_refused_in_suback(
    broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    client = raw(broker.port)
    client.connect("filters")
    assert client.subscribe("a/#/b", 1) == [0x80]
    assert client.subscribe("a/b+", 1, packet_id=2) == [0x80]
    assert client.subscribe("a/+/#", 1, packet_id=3) == [1]
    client.publish("a/x/y", b"fine", qos=0)
    first, _ = client.read()
    assert first >> 4 == PacketType.PUBLISH


def test_mutated_packets_never_hurt_the_broker(
    broker: BrokerThread,
    clients: Callable[..., Client],
    raw: Callable[[int], RawClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(20261127)
    valid = [
        encode_publish("fuzz/a", b"payload", qos=1, packet_id=3),
        encode_publish("fuzz/b", b"", qos=2, packet_id=9, retain=True),
        _subscribe_packet(0x82, "fuzz/+/#", 1),
        b"\xa2\x07\x00\x05\x00\x03a/b",  # UNSUBSCRIBE
        b"\x62\x02\x00\x09",  # PUBREL
        b"\xc0\x00",  # PINGREQ
    ]
    watcher = clients(broker.port, "fuzz-watcher")
    watcher.connect()
    watcher.subscribe("#", 1)
    for i in range(60):
        packet = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        client = raw(broker.port)
        client.connect(f"fuzz-{i}", will=Will("fuzz/will", b"bye", 0, False))
        client.send(bytes(packet) + rng.randbytes(rng.randint(0, 8)))
        client.close()
    _healthy(broker.port, clients, "fuzz")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
