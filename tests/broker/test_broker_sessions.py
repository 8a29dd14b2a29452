"""Sessions of the embedded broker: persistent queues, redelivery with DUP, takeover, wills,
keepalive, QoS 2 inbound, queue limits, shutdown."""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

import kilowatch.broker.embedded.server as server_module
from kilowatch.mqtt.packets import PacketType, Will, parse_publish

if TYPE_CHECKING:  # helpers live in conftest.py (importlib mode: not importable at run time)
    from conftest import BrokerThread, Client, RawClient


def test_persistent_session_queues_while_offline_in_order(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    sub = clients(broker.port, "intake", clean_session=False)
    assert sub.connect() == (0, False)
    sub.subscribe("meters/#", 1)
    sub.subscribe("meters/qos0", 0)
    sub.close()
    broker.wait_stats(lambda s: s.clients_connected == 0)

    pub = clients(broker.port, "meter")
    pub.connect()
    for i in range(1200):  # more than one drain batch (512)
        pub.publish(f"meters/{i % 4}", str(i).encode(), qos=1)
    pub.publish("meters/qos0", b"not queued for an offline client", qos=0)
    # QoS 0 has no acknowledgement: wait until the broker has handled it before reconnecting,
    # or it may arrive after the subscriber is back and be delivered live.
    broker.wait_stats(lambda s: s.messages_in == 1201)
    assert broker.stats().messages_queued == 1200

    again = clients(broker.port, "intake", clean_session=False)
    assert again.connect() == (0, True)  # session present
    got = again.expect(1200)
    assert [m.payload for m in got] == [str(i).encode() for i in range(1200)]
    # the subscriptions survived: new messages arrive without subscribing again
    pub.publish("meters/live", b"live", qos=1)
    assert again.expect(1)[0].payload == b"live"
    assert broker.stats().messages_queued == 0


def test_clean_session_discards_the_stored_session(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    sub = clients(broker.port, "forgetful", clean_session=False)
    sub.connect()
    sub.subscribe("f/#", 1)
    sub.close()
    broker.wait_stats(lambda s: s.clients_connected == 0)
    pub = clients(broker.port, "f-pub")
    pub.connect()
    pub.publish("f/1", b"queued")
    clean = clients(broker.port, "forgetful", clean_session=True)
    assert clean.connect() == (0, False)
    clean.subscribe("marker", 1)
    pub.publish("f/2", b"no longer subscribed")
    pub.publish("marker", b"")
    assert clean.expect_until("marker") == []
    assert broker.stats().subscriptions == 1


def test_unacknowledged_qos1_is_redelivered_with_dup_on_reconnect(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    sub = raw(broker.port)
    assert sub.connect("raw-sub", clean_session=False) == (False, 0)
    assert sub.subscribe("r/#", 1) == [1]
    pub = clients(broker.port, "r-pub")
    pub.connect()
    pub.publish("r/1", b"first", qos=1)
    pub.publish("r/2", b"second", qos=1)
    first, body = sub.read()
    one = parse_publish(first, body)
    first, body = sub.read()
    two = parse_publish(first, body)
    assert (one.payload, one.dup, two.payload) == (b"first", False, b"second")
    sub.ack(PacketType.PUBACK, one.packet_id)  # acknowledge only the first, then vanish
    sub.close()
    broker.wait_stats(lambda s: s.clients_connected == 1)
    pub.publish("r/3", b"third", qos=1)

    back = raw(broker.port)
    assert back.connect("raw-sub", clean_session=False) == (True, 0)
    first, body = back.read()
    again = parse_publish(first, body)
    assert (again.payload, again.dup, again.packet_id, again.qos) == (
        b"second",
        True,
        two.packet_id,
        1,
    )
    first, body = back.read()
    third = parse_publish(first, body)
    assert (third.payload, third.dup) == (b"third", False)


def test_queue_limit_drops_the_oldest_and_counts(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    broker = start_broker(max_queued_messages=10)
    sub = clients(broker.port, "limited", clean_session=False)
    sub.connect()
    sub.subscribe("l/#", 1)
    sub.close()
    broker.wait_stats(lambda s: s.clients_connected == 0)
    pub = clients(broker.port, "l-pub")
    pub.connect()
    for i in range(25):
        pub.publish("l/x", str(i).encode())
    stats = broker.stats()
    assert (stats.messages_dropped, stats.messages_queued) == (15, 10)
    back = clients(broker.port, "limited", clean_session=False)
    assert back.connect() == (0, True)
    assert [m.payload for m in back.expect(10)] == [str(i).encode() for i in range(15, 25)]


def test_takeover_disconnects_the_first_connection_and_sends_its_will(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    watcher = clients(broker.port, "watcher")
    watcher.connect()
    watcher.subscribe("dev/online", 1)
    first = raw(broker.port)
    first.connect("shelly-1", will=Will("dev/online", b"false", 1, False))
    second = clients(broker.port, "shelly-1")
    assert second.connect() == (0, False)
    assert first.closed_by_broker()
    assert watcher.expect(1)[0].payload == b"false"
    second.subscribe("still/works", 1)
    second.publish("still/works", b"yes")
    assert second.expect(1)[0].payload == b"yes"
    assert broker.stats().clients_connected == 2


def test_will_on_abnormal_close_but_not_on_disconnect(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    watcher = clients(broker.port, "will-watcher")
    watcher.connect()
    watcher.subscribe("w/#", 1)
    polite = clients(broker.port, "polite", will=("w/polite", b"gone", 1, False))
    polite.connect()
    polite.close()  # DISCONNECT: the will is discarded
    rude = raw(broker.port)
    rude.connect("rude", will=Will("w/rude", b"gone", 1, True))
    rude.close()  # TCP close without DISCONNECT
    got = watcher.expect(1)
    assert [(m.topic, m.payload) for m in got] == [("w/rude", b"gone")]
    watcher.publish("w/marker", b"")
    assert watcher.expect_until("w/marker") == []
    assert broker.stats().retained == 1  # the will was published with RETAIN


def test_keepalive_timeout_closes_the_client_and_sends_its_will(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    watcher = clients(broker.port, "ka-watcher")
    watcher.connect()
    watcher.subscribe("ka/#", 1)
    pinger = raw(broker.port)
    pinger.connect("pinger", keepalive=1)
    silent = raw(broker.port)
    connecting_at = time.monotonic()  # before CONNECT: the broker's clock starts later
    silent.connect("silent", keepalive=1, will=Will("ka/silent", b"timeout", 0, False))
    # The pinger keeps talking (same keepalive) until the silent client is dropped; a deadline
    # bounds the loop.
    deadline = connecting_at + 10
    while not select.select([silent.sock], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, "the silent client was never disconnected"
        pinger.send(bytes((PacketType.PINGREQ << 4, 0)))
        assert pinger.read() == (PacketType.PINGRESP << 4, b"")
    assert silent.closed_by_broker()
    assert time.monotonic() - connecting_at >= 1.5  # 1.5 × keepalive of silence is allowed
    assert watcher.expect(1)[0].payload == b"timeout"
    pinger.send(bytes((PacketType.PINGREQ << 4, 0)))
    assert pinger.read() == (PacketType.PINGRESP << 4, b"")


def test_qos2_inbound_is_delivered_once(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    sub = clients(broker.port, "q2-sub")
    sub.connect()
    sub.subscribe("q2/#", 1)
    pub = raw(broker.port)
    pub.connect("q2-pub")
    pub.publish("q2/x", b"once", qos=2, packet_id=7)
    assert pub.read() == (PacketType.PUBREC << 4, b"\x00\x07")
    pub.publish("q2/x", b"once", qos=2, packet_id=7, dup=True)  # PUBREC lost: the client resends
    assert pub.read() == (PacketType.PUBREC << 4, b"\x00\x07")
    pub.ack(PacketType.PUBREL, 7)
    assert pub.read() == (PacketType.PUBCOMP << 4, b"\x00\x07")
    pub.publish("q2/x", b"new message, same id", qos=2, packet_id=7)
    assert pub.read() == (PacketType.PUBREC << 4, b"\x00\x07")
    pub.ack(PacketType.PUBREL, 7)
    assert pub.read() == (PacketType.PUBCOMP << 4, b"\x00\x07")
    pub.publish("q2/marker", b"", qos=0)
    got = sub.expect_until("q2/marker")
    assert [(m.payload, m.qos) for m in got] == [(b"once", 1), (b"new message, same id", 1)]


def test_qos2_with_paho_end_to_end(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    broker = start_broker(max_inflight_messages=4)  # the QoS 2 window must also free up
    sub = clients(broker.port, "pq2-sub")
    sub.connect()
    assert sub.subscribe("pq2", 2) == 2
    pub = clients(broker.port, "pq2-pub")
    pub.connect()
    for i in range(40):
        pub.publish("pq2", str(i).encode(), qos=2)
    got = sub.expect(40)
    assert [(m.payload, m.qos) for m in got] == [(str(i).encode(), 2) for i in range(40)]
    sub.subscribe("pq2/marker", 0)
    pub.publish("pq2/marker", b"", qos=0)
    assert sub.expect_until("pq2/marker") == []  # nothing delivered twice
    stats = broker.wait_stats(lambda s: s.messages_out == 41)
    assert stats.messages_queued == 0
    # every exchange completes: nothing left waiting for PUBREC or PUBCOMP
    session = "pq2-sub"
    broker.wait_for(lambda b: not b.sessions[session].inflight and not b.sessions[session].released)


def test_qos2_outbound_survives_reconnects(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    sub = raw(broker.port)
    sub.connect("q2-raw", clean_session=False)
    assert sub.subscribe("x2", 2) == [2]
    pub = clients(broker.port, "x2-pub")
    pub.connect()
    pub.publish("x2", b"only once", qos=2)
    first = parse_publish(*sub.read())
    assert (first.payload, first.qos, first.dup) == (b"only once", 2, False)
    sub.close()  # gone before PUBREC: the PUBLISH is resent with DUP

    sub = raw(broker.port)
    assert sub.connect("q2-raw", clean_session=False) == (True, 0)
    again = parse_publish(*sub.read())
    assert (again.payload, again.qos, again.dup, again.packet_id) == (
        b"only once",
        2,
        True,
        first.packet_id,
    )
    sub.ack(PacketType.PUBREC, first.packet_id)
    assert sub.read() == (PacketType.PUBREL << 4 | 2, first.packet_id.to_bytes(2, "big"))
    sub.close()  # gone before PUBCOMP: the PUBREL is resent, the PUBLISH is not

    sub = raw(broker.port)
    assert sub.connect("q2-raw", clean_session=False) == (True, 0)
    assert sub.read() == (PacketType.PUBREL << 4 | 2, first.packet_id.to_bytes(2, "big"))
    sub.ack(PacketType.PUBCOMP, first.packet_id)
    pub.publish("x2", b"next", qos=1)
    following = parse_publish(*sub.read())
    assert (following.payload, following.qos, following.dup) == (b"next", 1, False)


def test_shutdown_closes_clients(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    broker = start_broker()
    client = clients(broker.port, "bye")
    client.connect()
    broker.stop()
    assert client.disconnected.wait(10)


def test_a_connection_without_connect_is_closed(
    broker: BrokerThread, raw: Callable[[int], RawClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "CONNECT_TIMEOUT_S", 0.5)
    idle = raw(broker.port)  # TCP only, never sends CONNECT
    assert idle.closed_by_broker()
    assert broker.stats().connections_total == 1


class FakeClock:
    """The broker's clock for session expiry, moved by the test (read on the broker's thread)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


HOUR = 3600.0


def _away(broker: BrokerThread, clients: Callable[..., Client], client_id: str) -> None:
    """A persistent session subscribed to ``exp/#``, then disconnected."""
    client = clients(broker.port, client_id, clean_session=False)
    assert client.connect() == (0, False)
    client.subscribe("exp/#", 1)
    client.close()
    broker.wait_for(lambda b: b.sessions[client_id].conn is None)


def test_offline_persistent_sessions_expire_with_their_queues(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    clock = FakeClock()
    broker = start_broker(session_expiry_s=HOUR, clock=clock)
    _away(broker, clients, "away")  # offline since 1000
    online = clients(broker.port, "online", clean_session=False)
    online.connect()
    clock.now = 2_000.0
    _away(broker, clients, "recent")  # offline since 2000
    pub = clients(broker.port, "exp-pub")
    pub.connect()
    for i in range(3):
        pub.publish(f"exp/{i}", b"queued")
    assert broker.stats().messages_queued == 6

    clock.now = 1_000.0 + HOUR - 1
    assert broker.call(lambda b: b.expire_sessions()) == 0
    clock.now = 1_000.0 + HOUR
    assert broker.call(lambda b: b.expire_sessions()) == 1
    stats = broker.stats()
    assert (stats.sessions_expired, stats.messages_queued) == (1, 3)
    assert broker.call(lambda b: sorted(b.sessions)) == ["exp-pub", "online", "recent"]
    clock.now = 1_000_000.0
    assert broker.call(lambda b: b.expire_sessions()) == 1  # "recent"; connected ones never

    back = clients(broker.port, "away", clean_session=False)
    assert back.connect() == (0, False)  # a fresh session: no subscriptions, nothing queued
    back.subscribe("marker", 1)
    pub.publish("exp/late", b"not subscribed any more")
    pub.publish("marker", b"")
    assert back.expect_until("marker") == []


def test_the_broker_expires_sessions_by_itself(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    clock = FakeClock()
    broker = start_broker(session_expiry_s=HOUR, clock=clock)
    _away(broker, clients, "forgotten")
    clock.now += HOUR + server_module.SESSION_EXPIRY_CHECK_S
    broker.wait_stats(lambda s: s.sessions_expired == 1 and s.sessions == 0)


def test_a_reconnect_restarts_the_expiry(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    clock = FakeClock()
    broker = start_broker(session_expiry_s=HOUR, clock=clock)
    _away(broker, clients, "returning")
    clock.now += HOUR - 1
    back = clients(broker.port, "returning", clean_session=False)
    assert back.connect() == (0, True)
    clock.now += 10 * HOUR  # connected: never expires
    assert broker.call(lambda b: b.expire_sessions()) == 0
    back.close()
    broker.wait_for(lambda b: b.sessions["returning"].conn is None)
    clock.now += HOUR - 1
    assert broker.call(lambda b: b.expire_sessions()) == 0
    clock.now += 1
    assert broker.call(lambda b: b.expire_sessions()) == 1


def test_sessions_never_expire_without_an_expiry(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    clock = FakeClock()
    broker = start_broker(session_expiry_s=None, clock=clock)
    _away(broker, clients, "kept")
    clock.now += 10 * 365 * 24 * HOUR
    assert broker.call(lambda b: b.expire_sessions()) == 0
    assert broker.stats().sessions == 1
