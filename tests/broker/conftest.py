"""Fixtures for the embedded broker tests: the broker on its own event-loop thread, real paho
clients and raw MQTT sockets, all on free loopback ports. Every wait is bounded."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kilowatch.broker.embedded import BrokerStats, EmbeddedBroker
from kilowatch.mqtt.packets import (
    FrameReader,
    PacketType,
    Will,
    encode_ack,
    encode_connect,
    encode_length,
    encode_publish,
    encode_string,
)

WAIT_S = 10.0


class BrokerThread:
    """An :class:`EmbeddedBroker` running in a private event loop on a daemon thread."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("port", 0)
        self.options = options
        self.broker: EmbeddedBroker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with EmbeddedBroker(**self.options) as broker:
                self.broker = broker
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:
            self._error = err
            self._ready.set()

    def start(self) -> BrokerThread:
        self._thread.start()
        assert self._ready.wait(WAIT_S), "broker did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "broker did not stop"
        if self._error is not None:
            raise self._error

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def call(self, fn: Callable[[EmbeddedBroker], Any]) -> Any:
        """Run ``fn(broker)`` on the broker's loop and return its result."""
        assert self.loop is not None and self.broker is not None
        future: Future[Any] = Future()
        broker = self.broker

        def run() -> None:
            try:
                future.set_result(fn(broker))
            except BaseException as err:
                future.set_exception(err)

        self.loop.call_soon_threadsafe(run)
        return future.result(WAIT_S)

    def stats(self) -> BrokerStats:
        return self.call(lambda b: b.stats)  # type: ignore[no-any-return]

    def wait_for(self, predicate: Callable[[EmbeddedBroker], bool]) -> None:
        """Poll ``predicate(broker)`` on the broker's loop until it holds (bounded)."""
        pause = threading.Event()
        deadline = time.monotonic() + WAIT_S
        while not self.call(predicate):
            assert time.monotonic() < deadline, "broker state never matched"
            pause.wait(0.01)

    def wait_stats(self, predicate: Callable[[BrokerStats], bool]) -> BrokerStats:
        """Poll the counters until ``predicate`` holds (bounded)."""
        pause = threading.Event()
        deadline = time.monotonic() + WAIT_S
        stats = self.stats()
        while not predicate(stats):
            assert time.monotonic() < deadline, f"broker stats never matched: {stats}"
            pause.wait(0.01)
            stats = self.stats()
        return stats


@pytest.fixture
def start_broker() -> Iterator[Callable[..., BrokerThread]]:
    """``start_broker(**options)``: an embedded broker on a free port, stopped after the test."""
    started: list[BrokerThread] = []

    def start(**options: Any) -> BrokerThread:
        broker = BrokerThread(**options).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(start_broker: Callable[..., BrokerThread]) -> BrokerThread:
    """An embedded broker with default options on a free port."""
    return start_broker()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Client:
    """A real paho-mqtt client (CallbackAPIVersion.VERSION2) with bounded, blocking helpers."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 60,
        protocol: int = mqtt.MQTTv311,
        tls_ca: str | None = None,
    ) -> None:
        self.port = port
        self.keepalive = keepalive
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # MQTT 5 has clean start instead, given at connect (paho refuses clean_session)
            clean_session=None if protocol == mqtt.MQTTv5 else clean_session,
            protocol=protocol,
        )
        self.paho.reconnect_delay_set(60, 120)  # tests decide when to reconnect
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            self.paho.will_set(will[0], will[1], will[2], will[3])
        if tls_ca is not None:
            self.paho.tls_set(ca_certs=tls_ca)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connacks: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.reasons: queue.Queue[Any] = queue.Queue()  # paho's ReasonCode of each CONNACK
        self.disconnected = threading.Event()
        self._subacks: dict[int, queue.Queue[list[int]]] = {}
        self._lock = threading.Lock()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.reasons.put(rc)
        self.connacks.put((rc.value, bool(flags.session_present)))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnected.set()

    def _sub_queue(self, mid: int) -> queue.Queue[list[int]]:
        with self._lock:
            return self._subacks.setdefault(mid, queue.Queue())

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._sub_queue(mid).put([c.value for c in codes])

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._sub_queue(mid).put([])

    def connect(self) -> tuple[int, bool]:
        """Connect and return ``(reason code value, session present)`` from the CONNACK."""
        self.disconnected.clear()
        self.paho.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        self.paho.loop_start()
        return self.connacks.get(timeout=WAIT_S)

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and return the granted QoS (or 128 on failure)."""
        rc, mid = self.paho.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._sub_queue(mid).get(timeout=WAIT_S)[0]

    def unsubscribe(self, topic: str) -> None:
        rc, mid = self.paho.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self._sub_queue(mid).get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS > 0, wait until the broker acknowledged it."""
        info = self.paho.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), f"broker did not acknowledge {topic}"

    def expect(self, count: int = 1) -> list[Received]:
        """The next ``count`` messages (fails after a bounded wait)."""
        return [self.messages.get(timeout=WAIT_S) for _ in range(count)]

    def expect_until(self, marker_topic: str) -> list[Received]:
        """Every message up to (not including) one on ``marker_topic``.

        Publishing a marker after something that must *not* arrive proves its absence without a
        sleep: per-subscriber ordering means it would have arrived before the marker.
        """
        got: list[Received] = []
        while True:
            msg = self.messages.get(timeout=WAIT_S)
            if msg.topic == marker_topic:
                return got
            got.append(msg)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """``clients(port, client_id, **options)``: a paho client, closed after the test."""
    made: list[Client] = []

    def make(port: int, client_id: str = "", **options: Any) -> Client:
        client = Client(port, client_id, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class RawClient:
    """A bare TCP socket speaking MQTT by hand, for what paho will not send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.reader = FrameReader(1 << 28)
        self._frames: list[tuple[int, bytes]] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(
        self,
        client_id: str,
        *,
        clean_session: bool = True,
        keepalive: int = 60,
        will: Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        protocol_name: str = "MQTT",
        protocol_level: int = 4,
    ) -> tuple[bool, int]:
        """Send CONNECT; return ``(session present, return code)`` from the CONNACK."""
        self.send(
            encode_connect(
                client_id,
                clean_session=clean_session,
                keepalive=keepalive,
                will=will,
                username=username,
                password=password,
                protocol_name=protocol_name,
                protocol_level=protocol_level,
            )
        )
        first, body = self.read()
        assert first >> 4 == PacketType.CONNACK, first
        return bool(body[0]), body[1]

    def read(self) -> tuple[int, bytes]:
        """The next packet as ``(first byte, body)``; fails if the broker closes the socket."""
        while not self._frames:
            data = self.sock.recv(65536)
            assert data, "broker closed the connection"
            self._frames.extend(self.reader.feed(data))
        return self._frames.pop(0)

    def closed_by_broker(self) -> bool:
        """Whether the broker closes this socket (reads to EOF, bounded by the socket timeout)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def subscribe(self, topic_filter: str, qos: int, packet_id: int = 1) -> list[int]:
        body = packet_id.to_bytes(2, "big") + encode_string(topic_filter) + bytes((qos,))
        self.send(bytes((0x82,)) + encode_length(len(body)) + body)
        first, reply = self.read()
        assert first >> 4 == PacketType.SUBACK
        return list(reply[2:])

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0, **kw: Any
    ) -> None:
        self.send(encode_publish(topic, payload, qos=qos, packet_id=packet_id, **kw))

    def ack(self, kind: PacketType, packet_id: int) -> None:
        self.send(encode_ack(kind, packet_id))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    """``raw(port)`` opens a raw MQTT socket; all are closed after the test."""
    made: list[RawClient] = []

    def make(port: int) -> RawClient:
        client = RawClient(port)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
