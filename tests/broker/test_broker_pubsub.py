"""Publish/subscribe through the embedded broker with real paho clients: QoS, wildcards, ``$``
topics, retained messages, unsubscribe, ordering, many clients."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from kilowatch.mqtt.packets import PacketType, parse_publish

if TYPE_CHECKING:  # helpers live in conftest.py (importlib mode: not importable at run time)
    from conftest import BrokerThread, Client, RawClient


def test_qos0_and_qos1_are_delivered_with_the_granted_qos(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    sub = clients(broker.port, "sub")
    assert sub.connect() == (0, False)
    assert sub.subscribe("home/+/power", 1) == 1
    assert sub.subscribe("home/low", 0) == 0
    pub = clients(broker.port, "pub")
    pub.connect()
    pub.publish("home/boiler/power", b"1500", qos=1)
    pub.publish("home/boiler/power", b"0", qos=0)
    pub.publish("home/low", b"x", qos=1)  # downgraded to the subscription's QoS 0
    got = sub.expect(3)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        ("home/boiler/power", b"1500", 1, False),
        ("home/boiler/power", b"0", 0, False),
        ("home/low", b"x", 0, False),
    ]
    stats = broker.wait_stats(lambda s: s.messages_out >= 3)
    assert (stats.messages_in, stats.messages_out, stats.clients_connected) == (3, 3, 2)


def test_qos2_subscription_gets_the_publishers_qos(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    sub = clients(broker.port, "sub2")
    sub.connect()
    assert sub.subscribe("q2/#", 2) == 2
    pub = clients(broker.port, "pub2")
    pub.connect()
    pub.publish("q2/a", b"exactly once", qos=2)
    pub.publish("q2/b", b"at least once", qos=1)
    pub.publish("q2/c", b"at most once", qos=0)
    # each message at the QoS it was published with; their order across QoS levels is not the
    # point (a QoS 2 message is released after its PUBREL, so a QoS 1 one may overtake it)
    assert sorted((m.payload, m.qos) for m in sub.expect(3)) == sorted(
        [
            (b"exactly once", 2),
            (b"at least once", 1),
            (b"at most once", 0),
        ]
    )


def test_wildcards_and_dollar_topics(broker: BrokerThread, clients: Callable[..., Client]) -> None:
    subs = {}
    for name, topic_filter in {
        "all": "#",
        "plus": "shellies/+/relay/0",
        "under": "shellies/#",
        "sys": "$SYS/#",
        "plus_sys": "+/broker",
        "exact": "shellies/a/relay/0",
        "empty_level": "a/+/c",
    }.items():
        subs[name] = clients(broker.port, f"wc-{name}")
        subs[name].connect()
        subs[name].subscribe(topic_filter, 1)
    pub = clients(broker.port, "wc-pub")
    pub.connect()
    for topic in ("shellies/a/relay/0", "shellies", "shellies/b/relay/0/energy", "$SYS/broker"):
        pub.publish(topic, topic.encode())
    pub.publish("a//c", b"empty level")
    pub.publish("end", b"")
    for sub in subs.values():
        sub.subscribe("end", 1)
    pub.publish("end", b"")

    def topics(name: str) -> list[str]:
        return [m.topic for m in subs[name].expect_until("end")]

    # "#" got the first "end" too; drop everything up to the second marker
    assert topics("all") == ["shellies/a/relay/0", "shellies", "shellies/b/relay/0/energy", "a//c"]
    assert topics("all") == []
    assert topics("plus") == ["shellies/a/relay/0"]
    assert topics("under") == ["shellies/a/relay/0", "shellies", "shellies/b/relay/0/energy"]
    assert topics("sys") == ["$SYS/broker"]
    assert topics("plus_sys") == []  # a leading wildcard never matches a "$" topic (§4.7.2)
    assert topics("exact") == ["shellies/a/relay/0"]
    assert topics("empty_level") == ["a//c"]


def test_overlapping_subscriptions_deliver_once_at_the_highest_qos(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    sub = clients(broker.port, "overlap")
    sub.connect()
    sub.subscribe("x/#", 0)
    sub.subscribe("x/+", 1)
    sub.subscribe("done", 0)
    pub = clients(broker.port, "overlap-pub")
    pub.connect()
    pub.publish("x/y", b"1", qos=1)
    pub.publish("done", b"")
    got = sub.expect_until("done")
    assert [(m.topic, m.qos) for m in got] == [("x/y", 1)]


def test_unsubscribe_stops_delivery(broker: BrokerThread, clients: Callable[..., Client]) -> None:
    sub = clients(broker.port, "unsub")
    sub.connect()
    sub.subscribe("a/b", 1)
    sub.subscribe("marker", 1)
    pub = clients(broker.port, "unsub-pub")
    pub.connect()
    pub.publish("a/b", b"before")
    sub.unsubscribe("a/b")
    pub.publish("a/b", b"after")
    pub.publish("marker", b"")
    assert [m.payload for m in sub.expect_until("marker")] == [b"before"]
    assert broker.stats().subscriptions == 1


def test_retained_messages_reach_new_subscribers_and_empty_payload_clears(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    pub = clients(broker.port, "ret-pub")
    pub.connect()
    pub.publish("dev/1/online", b"true", qos=1, retain=True)
    pub.publish("dev/2/online", b"false", qos=0, retain=True)
    pub.publish("dev/2/online", b"true", qos=1, retain=True)  # replaces the previous one

    live = clients(broker.port, "ret-live")
    live.connect()
    live.subscribe("dev/+/online", 1)
    got = sorted(live.expect(2), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.retain, m.qos) for m in got] == [
        ("dev/1/online", b"true", True, 1),
        ("dev/2/online", b"true", True, 1),
    ]
    # forwarded to an existing subscriber: RETAIN is cleared (§3.3.1.3)
    pub.publish("dev/1/online", b"false", qos=1, retain=True)
    (msg,) = live.expect(1)
    assert (msg.payload, msg.retain) == (b"false", False)

    pub.publish("dev/1/online", b"", qos=1, retain=True)  # clears the retained message
    (msg,) = live.expect(1)
    assert msg.payload == b""
    assert broker.stats().retained == 1

    late = clients(broker.port, "ret-late")
    late.connect()
    late.subscribe("dev/#", 1)
    late.subscribe("marker", 1)
    pub.publish("marker", b"")
    assert [(m.topic, m.payload) for m in late.expect_until("marker")] == [
        ("dev/2/online", b"true")
    ]


def test_retained_qos_is_capped_by_the_subscription(
    broker: BrokerThread, clients: Callable[..., Client]
) -> None:
    pub = clients(broker.port, "retq-pub")
    pub.connect()
    pub.publish("r/q", b"v", qos=1, retain=True)
    sub = clients(broker.port, "retq-sub")
    sub.connect()
    sub.subscribe("r/q", 0)
    (msg,) = sub.expect(1)
    assert (msg.qos, msg.retain) == (0, True)


def test_order_is_kept_per_subscriber_through_a_small_inflight_window(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    broker = start_broker(max_inflight_messages=3)
    sub = clients(broker.port, "order-sub")
    sub.connect()
    sub.subscribe("seq/#", 1)
    pub = clients(broker.port, "order-pub")
    # paho holds back QoS 1 messages beyond its own window but sends QoS 0 at once; unlimited keeps
    # the publisher's order so any reordering seen would be the broker's
    pub.paho.max_inflight_messages_set(0)
    pub.connect()
    n = 600
    for i in range(n):
        # mix QoS 0 and 1 so queued QoS 0 messages must wait behind QoS 1 ones
        pub.paho.publish(f"seq/{i % 3}", str(i), qos=i % 2)
    pub.publish("seq/end", b"end", qos=1)
    got = sub.expect(n + 1)
    assert [m.payload for m in got] == [str(i).encode() for i in range(n)] + [b"end"]


def test_hundreds_of_clients(
    broker: BrokerThread, clients: Callable[..., Client], raw: Callable[[int], RawClient]
) -> None:
    sub = clients(broker.port, "many-sub")
    sub.connect()
    sub.subscribe("meters/+/status", 1)
    devices = []
    for i in range(200):
        device = raw(broker.port)
        assert device.connect(f"meter-{i}") == (False, 0)
        devices.append(device)
    for i, device in enumerate(devices):
        device.publish(f"meters/{i}/status", str(i).encode(), qos=1, packet_id=1)
    for device in devices:
        first, body = device.read()
        assert (first >> 4, body) == (PacketType.PUBACK, b"\x00\x01")
    got = sub.expect(200)
    assert sorted(int(m.payload) for m in got) == list(range(200))
    assert broker.stats().clients_connected == 201


def test_slow_subscriber_is_queued_not_dropped_and_keeps_order(
    broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    slow = raw(broker.port)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.connect("slow")
    assert slow.subscribe("slow/#", 0) == [0]
    fast = raw(broker.port)
    fast.connect("fast")
    payload = b"p" * 4000
    n = 3000  # 12 MB: beyond the socket buffers and the broker's write buffer limit
    for i in range(n):
        fast.publish("slow/x", i.to_bytes(4, "big") + payload)
    # the slow reader's transport paused, so the rest waits in its session queue, in order
    broker.wait_stats(lambda s: s.messages_in == n and s.messages_queued > 0)
    got = [parse_publish(*slow.read()).payload[:4] for _ in range(n)]
    assert got == [i.to_bytes(4, "big") for i in range(n)]
    stats = broker.stats()
    assert (stats.messages_dropped, stats.messages_queued, stats.messages_out) == (0, 0, n)


def test_clean_sessions_leave_nothing_behind(
    broker: BrokerThread, raw: Callable[[int], RawClient]
) -> None:
    for i in range(50):
        client = raw(broker.port)
        client.connect(f"transient-{i}")
        assert client.subscribe(f"t/{i}/+", 1) == [1]
        if i % 2:
            client.send(bytes((PacketType.DISCONNECT << 4, 0)))
        client.close()
    stats = broker.wait_stats(lambda s: s.clients_connected == 0)
    assert (stats.sessions, stats.subscriptions, stats.connections_total) == (0, 0, 50)
    assert broker.call(lambda b: len(b.connections)) == 0
    assert broker.call(lambda b: b.tree.match("t/1/x")) == {}
    assert broker.call(lambda b: b.tree._root.children) == {}  # empty branches pruned
