"""Messages and sessions: what the broker keeps for a client, connected or not (MQTT 3.1.1 §4.1).

A session owns the client's subscriptions, its QoS 1/2 messages in flight (sent, not yet
acknowledged), the queue of messages waiting to be sent, and the QoS 2 packet ids it has received
but not released. Messages leave a session strictly in the order they entered it (§4.6): once
anything waits in the queue, every later message queues behind it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

from kilowatch.mqtt.packets import PacketType, encode_ack, encode_length, encode_string


class Outlet(Protocol):
    """What a session needs of the connection it is attached to
    (:class:`~kilowatch.broker.embedded.connection.Connection`): declared here so that the
    session does not import the connection, which imports it."""

    paused: bool

    def write(self, data: bytes) -> None: ...
    def write_parts(self, parts: tuple[bytes, ...]) -> None: ...
    def close(self, reason: str, *, will: bool) -> None: ...


log = logging.getLogger("kilowatch.broker")

# A session that keeps dropping messages logs at most this often (seconds), with the running count.
DROP_LOG_INTERVAL_S = 60.0
_PUBLISH = PacketType.PUBLISH << 4
# Queued messages moved to a connection's output per write (see Session.drain).
DRAIN_BATCH = 512


class Message:
    """An application message as the broker forwards it; the encoded parts are built once, lazily.

    The same object is queued to every subscriber, so a message costs its payload once in memory.
    """

    __slots__ = ("_length", "_packet0", "_topic_field", "payload", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self._topic_field: bytes | None = None
        self._length: bytes | None = None
        self._packet0: bytes | None = None

    def packet_qos0(self) -> bytes:
        """The whole QoS 0 PUBLISH packet, identical for every subscriber."""
        packet = self._packet0
        if packet is None:
            field = encode_string(self.topic)
            packet = self._packet0 = (
                bytes((_PUBLISH | self.retain,))
                + encode_length(len(field) + len(self.payload))
                + field
                + self.payload
            )
        return packet

    def parts(self, packet_id: int, qos: int, dup: bool) -> tuple[bytes, bytes, bytes, bytes]:
        """A QoS 1 or 2 PUBLISH as four byte strings to be written back to back."""
        field = self._topic_field
        if field is None:
            field = self._topic_field = encode_string(self.topic)
            self._length = encode_length(len(field) + 2 + len(self.payload))
        assert self._length is not None
        first = _PUBLISH | dup << 3 | qos << 1 | self.retain
        return (
            bytes((first,)) + self._length,
            field,
            packet_id.to_bytes(2, "big"),
            self.payload,
        )


class BrokerCounters:
    """Running totals the broker and its sessions update in place (see ``EmbeddedBroker.stats``)."""

    __slots__ = (
        "connections_total",
        "messages_dropped",
        "messages_in",
        "messages_out",
        "protocol_errors",
        "publishes_denied",
        "sessions_expired",
    )

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.messages_dropped = 0
        self.connections_total = 0
        self.protocol_errors = 0
        self.publishes_denied = 0
        self.sessions_expired = 0


class Session:
    """The state of one client id. ``conn`` is the live connection, or ``None`` while offline."""

    __slots__ = (
        "_last_drop_log",
        "_next_id",
        "clean",
        "client_id",
        "conn",
        "counters",
        "dropped",
        "inbound_qos2",
        "inflight",
        "max_inflight",
        "max_queued",
        "offline_since",
        "qos2_ids",
        "queue",
        "released",
        "subscriptions",
    )

    def __init__(
        self,
        client_id: str,
        *,
        clean: bool,
        max_inflight: int,
        max_queued: int,
        counters: BrokerCounters,
    ) -> None:
        self.client_id = client_id
        self.clean = clean
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.counters = counters
        self.conn: Outlet | None = None
        # When the last connection of a persistent session ended (the broker's clock), for expiry;
        # None while connected.
        self.offline_since: float | None = None
        self.subscriptions: dict[str, int] = {}
        # packet id -> message sent and not yet acknowledged (PUBACK, or PUBREC for QoS 2), in send
        # order (dicts keep insertion order), for redelivery with DUP.
        self.inflight: dict[int, Message] = {}
        # Which in-flight ids were sent at QoS 2 (a set, so QoS 1 deliveries pay nothing for it).
        self.qos2_ids: set[int] = set()
        # QoS 2 ids whose PUBREC came and PUBREL went, awaiting PUBCOMP (§4.3.3), in order.
        self.released: dict[int, None] = {}
        self.queue: deque[tuple[Message, int]] = deque()
        self.inbound_qos2: set[int] = set()
        self.dropped = 0
        self._next_id = 1
        self._last_drop_log = -DROP_LOG_INTERVAL_S

    def deliver(self, message: Message, qos: int) -> None:
        """Send ``message`` at ``qos`` now if the window allows, else queue it (bounded)."""
        conn = self.conn
        if conn is None:
            if qos:  # §3.1.2.4: QoS 1/2 messages are kept for an offline persistent session
                self._enqueue(message, qos)
            return
        if (
            self.queue
            or conn.paused
            or (qos and len(self.inflight) + len(self.released) >= self.max_inflight)
        ):
            self._enqueue(message, qos)
            return
        self._send(conn, message, qos)

    def _send(self, conn: Outlet, message: Message, qos: int) -> None:
        self.counters.messages_out += 1
        if not qos:
            conn.write(message.packet_qos0())
            return
        packet_id = self._allocate_id()
        self.inflight[packet_id] = message
        if qos == 2:
            self.qos2_ids.add(packet_id)
        conn.write_parts(message.parts(packet_id, qos, False))

    def _window_full(self) -> bool:
        return len(self.inflight) + len(self.released) >= self.max_inflight

    def _allocate_id(self) -> int:
        packet_id = self._next_id
        inflight = self.inflight
        released = self.released
        # max_inflight < 65535 bounds both, so a free id exists
        while packet_id in inflight or packet_id in released:
            packet_id = packet_id % 65535 + 1
        self._next_id = packet_id % 65535 + 1
        return packet_id

    def _enqueue(self, message: Message, qos: int) -> None:
        queue = self.queue
        if len(queue) >= self.max_queued:
            # Keep the newest messages: for cumulative meters the latest reading is worth the most.
            queue.popleft()
            self.dropped += 1
            self.counters.messages_dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
                self._last_drop_log = now
                log.warning(
                    "client %r: queue full (%d messages), dropped the oldest; %d dropped so far",
                    self.client_id,
                    self.max_queued,
                    self.dropped,
                )
        queue.append((message, qos))

    def drain(self) -> None:
        """Send queued messages while the connection is writable and the in-flight window allows.

        At most ``DRAIN_BATCH`` per call: the connection drains again after each write, so a long
        queue goes out in steps that let the transport push back (pause_writing) and let other
        clients be served, instead of as one huge write.
        """
        conn = self.conn
        queue = self.queue
        budget = DRAIN_BATCH
        while queue and budget and conn is not None and not conn.paused:
            message, qos = queue[0]
            if qos and self._window_full():
                return
            queue.popleft()
            self._send(conn, message, qos)
            budget -= 1

    def acknowledged(self, packet_id: int) -> None:
        """A PUBACK arrived: the message left our hands; the window may take the next one."""
        if packet_id in self.qos2_ids:
            return  # a QoS 2 message is acknowledged by PUBREC, not PUBACK
        if self.inflight.pop(packet_id, None) is not None and self.queue:
            self.drain()

    def received(self, packet_id: int) -> None:
        """A PUBREC arrived for a QoS 2 message: answer PUBREL (again if PUBREC repeats)."""
        if packet_id in self.qos2_ids:
            self.qos2_ids.discard(packet_id)
            del self.inflight[packet_id]
            self.released[packet_id] = None
        elif packet_id not in self.released:
            return  # not ours: nothing to release
        if self.conn is not None:
            self.conn.write(encode_ack(PacketType.PUBREL, packet_id))

    def completed(self, packet_id: int) -> None:
        """A PUBCOMP arrived: the QoS 2 exchange is over; the window may take the next one."""
        if self.released.pop(packet_id, 0) is None and self.queue:
            self.drain()

    def resume(self, conn: Outlet) -> None:
        """Attach a new connection: resend PUBRELs, then unacknowledged PUBLISHes with DUP (§4.4),
        then the queue."""
        self.conn = conn
        self.offline_since = None
        for packet_id in self.released:
            conn.write(encode_ack(PacketType.PUBREL, packet_id))
        for packet_id, message in self.inflight.items():
            self.counters.messages_out += 1
            qos = 2 if packet_id in self.qos2_ids else 1
            conn.write_parts(message.parts(packet_id, qos, True))
        self.drain()
