"""One client connection of the embedded broker, as an asyncio protocol.

Packets are handled synchronously as bytes arrive (no task per packet); replies and forwarded
messages are collected per connection and written once per event-loop iteration, so a burst of
PUBLISHes costs one ``write`` per peer rather than one per packet. Only CONNECT leaves the fast
path, because checking a password hash runs on a thread: reading pauses until the client is
accepted or refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from enum import Enum
from time import monotonic
from typing import Any, Protocol

from kilowatch.broker.embedded.acl import UserAcl
from kilowatch.broker.embedded.session import BrokerCounters, Session
from kilowatch.errors import ProtocolError
from kilowatch.mqtt.packets import (
    MQTT5_LEVEL,
    PINGRESP,
    PROTOCOLS,
    SUBACK_FAILURE,
    Connect,
    ConnectReturnCode,
    FrameReader,
    PacketType,
    Will,
    check_flags,
    encode_ack,
    encode_connack,
    encode_suback,
    parse_connect,
    parse_connect_protocol,
    parse_packet_id,
    parse_publish,
    parse_subscribe,
    parse_unsubscribe,
)
from kilowatch.mqtt.topics import check_topic_name, is_valid_filter

log = logging.getLogger("kilowatch.broker")

_PUBACK = PacketType.PUBACK << 4
_PUBACK_HEADER = bytes((_PUBACK, 2))
# Transport write-buffer size above which a subscriber counts as slow and its messages queue
# instead.
WRITE_HIGH_WATER = 1024 * 1024


class State(Enum):
    """Life cycle of a connection."""

    NEW = "new"  # TCP (and TLS) up, waiting for CONNECT
    CONNECTING = "connecting"  # CONNECT received, credentials being checked
    CONNECTED = "connected"
    CLOSED = "closed"


class Hub(Protocol):
    """What a connection needs of its broker
    (:class:`~kilowatch.broker.embedded.server.EmbeddedBroker`): declared here so that the
    connection does not import the server that creates it."""

    max_packet_size: int
    counters: BrokerCounters

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def want_flush(self, conn: Connection) -> None: ...
    def connection_opened(self, conn: Connection) -> None: ...
    def connection_closed(self, conn: Connection, *, publish_will: bool) -> None: ...
    def new_client_id(self) -> str: ...
    async def check_credentials(
        self, username: str | None, password: bytes | None
    ) -> ConnectReturnCode: ...
    def user_acl(self, username: str | None) -> UserAcl | None: ...
    def attach(self, conn: Connection, *, clean: bool) -> None: ...
    def subscribe(self, session: Session, topic_filter: str, qos: int) -> None: ...
    def unsubscribe(self, session: Session, topic_filter: str) -> None: ...
    def send_retained(self, session: Session, topic_filter: str, qos: int) -> None: ...
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


class Connection(asyncio.Protocol):
    """The MQTT side of one TCP connection. Created by the broker's listener."""

    def __init__(self, broker: Hub) -> None:
        self.broker = broker
        self.state = State.NEW
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(broker.max_packet_size)
        self.session: Session | None = None
        self.will: Will | None = None
        self.acl: UserAcl | None = None  # None: this client may publish and subscribe anywhere
        self.username: str | None = None
        self.keepalive = 0
        self.client_id = ""
        self.peer = "?"
        self.paused = False
        now = monotonic()
        self.opened_at = now
        self.last_seen = now
        self._out: list[bytes] = []
        self._backlog: list[tuple[int, bytes]] = []

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.broker.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self.last_seen = monotonic()
        try:
            frames = self.reader.feed(data)
        except ProtocolError as err:
            self.protocol_error(err)
            return
        if self.state is State.CONNECTING:
            self._backlog.extend(frames)
            return
        self._process(frames)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost publishes the will

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            self.close("connection lost" if exc is None else f"connection lost: {exc}", will=True)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.session is not None and self.session.conn is self:
            self.session.drain()

    # --- output -----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for this loop iteration's batched write."""
        if not self._out:
            self.broker.want_flush(self)
        self._out.append(data)

    def write_parts(self, parts: tuple[bytes, ...]) -> None:
        """Queue several byte strings that form one packet."""
        if not self._out:
            self.broker.want_flush(self)
        self._out.extend(parts)

    def flush(self) -> None:
        """Hand everything queued to the transport in one write."""
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        session = self.session
        if session is not None and session.queue and self.state is State.CONNECTED:
            session.drain()  # the next batch of a long queue, written next iteration

    # --- closing ----------------------------------------------------------------------------------

    def close(self, reason: str, *, will: bool) -> None:
        """Close the connection once; publish the will if ``will`` (any end but DISCONNECT)."""
        if self.state is State.CLOSED:
            return
        was_connected = self.state is State.CONNECTED
        self.state = State.CLOSED
        self.flush()
        if self.transport is not None:
            self.transport.close()
        log.debug("client %r (%s) closed: %s", self.client_id, self.peer, reason)
        self.broker.connection_closed(self, publish_will=will and was_connected)

    def protocol_error(self, err: ProtocolError) -> None:
        """The client broke the protocol: count, log (not per message), close with its will."""
        self.broker.counters.protocol_errors += 1
        log.info("client %r (%s) disconnected: %s", self.client_id, self.peer, err)
        self.close(f"protocol error: {err.reason}", will=True)

    # --- input ------------------------------------------------------------------------------------

    def _process(self, frames: list[tuple[int, bytes]]) -> None:
        for index, (first, body) in enumerate(frames):
            if self.state is State.CLOSED:
                return
            if self.state is State.CONNECTING:
                self._backlog.extend(frames[index:])
                return
            try:
                self._handle(first, body)
            except ProtocolError as err:
                self.protocol_error(err)
                return
            except Exception:  # a bug must cost one connection, never the broker
                log.exception("client %r (%s): internal error; closing", self.client_id, self.peer)
                self.close("internal error", will=True)
                return

    def _handle(self, first: int, body: bytes) -> None:
        session = self.session
        if session is not None:  # the hot paths first, without the generic checks
            if first >> 4 == PacketType.PUBLISH:
                self._on_publish(session, first, body)
                return
            if first == _PUBACK and len(body) == 2:
                session.acknowledged(int.from_bytes(body, "big"))
                return
        kind = check_flags(first)
        if self.state is State.NEW:
            if kind != PacketType.CONNECT:
                raise ProtocolError("malformed", "first packet is not CONNECT")  # §3.1.0-1
            if not self._protocol_accepted(body):
                return
            self._begin_connect(parse_connect(body))
            return
        assert session is not None
        if kind == PacketType.PUBACK:
            session.acknowledged(parse_packet_id(body))
        elif kind == PacketType.PUBREL:
            packet_id = parse_packet_id(body)
            session.inbound_qos2.discard(packet_id)
            self.write(encode_ack(PacketType.PUBCOMP, packet_id))
        elif kind == PacketType.PUBREC:
            session.received(parse_packet_id(body))
        elif kind == PacketType.PUBCOMP:
            session.completed(parse_packet_id(body))
        elif kind == PacketType.SUBSCRIBE:
            self._on_subscribe(session, body)
        elif kind == PacketType.UNSUBSCRIBE:
            packet_id, filters = parse_unsubscribe(body)
            for topic_filter in filters:
                self.broker.unsubscribe(session, topic_filter)
            self.write(encode_ack(PacketType.UNSUBACK, packet_id))
        elif kind == PacketType.PINGREQ:
            self.write(PINGRESP)
        elif kind == PacketType.DISCONNECT:
            self.will = None  # §3.14.4: a clean DISCONNECT discards the will
            self.close("disconnected", will=False)
        else:
            raise ProtocolError("malformed", "second CONNECT")  # §3.1.0-2

    def _on_publish(self, session: Session, first: int, body: bytes) -> None:
        if (first >> 1) & 3 == 3:
            raise ProtocolError("malformed", "PUBLISH with QoS 3")
        packet = parse_publish(first, body)
        check_topic_name(packet.topic)
        acl = self.acl
        if acl is not None and not acl.may_publish(packet.topic):
            self._deny_publish(packet.topic)
            return
        qos = packet.qos
        if qos == 2:
            # Deliver on the first PUBLISH, remember the id until PUBREL: a resent PUBLISH with the
            # same id (DUP) is acknowledged again but not delivered twice (§4.3.3, method B).
            if packet.packet_id not in session.inbound_qos2:
                session.inbound_qos2.add(packet.packet_id)
                self.broker.publish(packet.topic, packet.payload, qos, packet.retain)
            self.write(encode_ack(PacketType.PUBREC, packet.packet_id))
            return
        self.broker.publish(packet.topic, packet.payload, qos, packet.retain)
        if qos:
            # The PUBACK carries the PUBLISH's own packet id bytes (§3.4).
            start = 2 + (body[0] << 8 | body[1])
            self.write(_PUBACK_HEADER + body[start : start + 2])

    def _deny_publish(self, topic: str) -> None:
        """A PUBLISH outside the sender's ACL: close the connection (its will goes), as
        mosquitto 2.0 does; MQTT 3.1.1 §3.3.5 allows this or acknowledging and dropping."""
        self.broker.counters.publishes_denied += 1
        log.info(
            "client %r (%s, user %r) disconnected: not allowed to publish on %r",
            self.client_id, self.peer, self.username, topic,
        )  # fmt: skip
        self.close(f"publish on {topic!r} denied", will=True)

    def _on_subscribe(self, session: Session, body: bytes) -> None:
        packet_id, requests = parse_subscribe(body)
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        acl = self.acl
        for topic_filter, qos in requests:
            if not is_valid_filter(topic_filter):
                codes.append(SUBACK_FAILURE)
                continue
            if acl is not None and not acl.may_subscribe(topic_filter):
                log.debug(
                    "client %r (user %r): subscription to %r denied",
                    self.client_id, self.username, topic_filter,
                )  # fmt: skip
                codes.append(SUBACK_FAILURE)
                continue
            self.broker.subscribe(session, topic_filter, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        self.write(encode_suback(packet_id, codes))
        for topic_filter, qos in granted:
            self.broker.send_retained(session, topic_filter, qos)

    # --- CONNECT ----------------------------------------------------------------------------------

    def _protocol_accepted(self, body: bytes) -> bool:
        """Refuse a CONNECT of another protocol or level (MQTT 5 above all) before parsing on.

        MQTT 3.1.1 §3.1.2.2 [MQTT-3.1.2-2]: a server that does not support the requested level
        answers CONNACK 0x01 (unacceptable protocol version) and disconnects. The CONNACK has the
        3.1.1 layout (two bytes, no properties): this broker speaks only 3.1.1, as mosquitto did
        before 1.6, and MQTT 5 clients read it as a refusal of their version (paho-mqtt reports
        reason 0x84, "Unsupported protocol version"). The 0x84 CONNACK with properties of MQTT 5.0
        §3.1.2.2 is what a server that speaks 5.0 may send; either way the server then closes the
        connection (MQTT 5.0 §3.2.2.2, §4.13).
        """
        name, level = parse_connect_protocol(body)
        if PROTOCOLS.get(name) == level:
            return True
        hint = "; set the client to MQTT 3.1.1" if level == MQTT5_LEVEL else ""
        log.info(
            "client (%s) refused: CONNECT for protocol %r level %d; the embedded broker speaks "
            "MQTT 3.1.1 and 3.1 only%s",
            self.peer, name, level, hint,
        )  # fmt: skip
        self.write(encode_connack(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION))
        self.close(f"refused: protocol {name!r} level {level}", will=False)
        return False

    def _begin_connect(self, packet: Connect) -> None:
        self.client_id = packet.client_id
        if packet.will is not None:
            check_topic_name(packet.will.topic)  # §3.1.3.2: a will topic is a topic name
        if not packet.client_id:
            # §3.1.3-7/8: an empty id is only allowed with a clean session; MQTT 3.1 required 1-23
            # chars.
            if not packet.clean_session or packet.protocol_level == 3:
                self._refuse(ConnectReturnCode.IDENTIFIER_REJECTED)
                return
            self.client_id = self.broker.new_client_id()
        self.state = State.CONNECTING
        assert self.transport is not None
        self.transport.pause_reading()
        self.broker.spawn(self._finish_connect(packet))

    async def _finish_connect(self, packet: Connect) -> None:
        try:
            code = await self.broker.check_credentials(packet.username, packet.password)
            if self.state is not State.CONNECTING:
                return  # the client went away while its password was checked
            acl = self.broker.user_acl(packet.username)
            will = packet.will
            if code is ConnectReturnCode.ACCEPTED and acl and will:
                # A will outside the user's topics could never be published: refuse it now.
                code = code if acl.may_publish(will.topic) else ConnectReturnCode.NOT_AUTHORIZED
            if code is not ConnectReturnCode.ACCEPTED:
                self._refuse(code)
                return
            self.acl = acl
            self.username = packet.username
            self.keepalive = packet.keepalive
            self.will = packet.will
            self.state = State.CONNECTED
            self.last_seen = monotonic()
            self.broker.attach(self, clean=packet.clean_session)
            assert self.transport is not None
            self.transport.resume_reading()
            backlog, self._backlog = self._backlog, []
            self._process(backlog)
        except Exception:
            log.exception("client %r (%s): error while connecting", self.client_id, self.peer)
            self.close("internal error", will=False)

    def _refuse(self, code: ConnectReturnCode) -> None:
        log.info("client %r (%s) refused: %s", self.client_id, self.peer, code.name.lower())
        self.write(encode_connack(False, code))
        self.close(f"refused: {code.name.lower()}", will=False)
