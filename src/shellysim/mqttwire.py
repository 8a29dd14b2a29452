"""A small asyncio MQTT 3.1.1 client, enough for hundreds of simulated devices in one process.

One connection is one :class:`MqttConnection`: CONNECT with will, user/pass and TLS; QoS 0/1
PUBLISH with PUBACK tracking; SUBSCRIBE/UNSUBSCRIBE; incoming QoS 0/1 PUBLISH (acknowledged);
keepalive with PINGREQ. It has no threads: a fleet of 500 devices is 500 sockets on one event loop.
Reconnecting is the caller's job (the device decides when it is allowed to be online).
Packets are framed, parsed and built by kilowatch's MQTT codec (:mod:`kilowatch.mqtt.packets`),
the same one the embedded broker uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from kilowatch.mqtt import ProtocolError
from kilowatch.mqtt.packets import (
    MAX_REMAINING_LENGTH,
    ConnectReturnCode,
    FrameReader,
    PacketType,
    Will,
    encode_ack,
    encode_connect,
    encode_packet,
    encode_publish,
    encode_subscribe,
    encode_unsubscribe,
    parse_connack,
    parse_packet_id,
    parse_publish,
    parse_suback,
)
from shellysim.errors import MqttError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_CHUNK = 65536
# §2.2.3: the largest packet MQTT can express (type byte, four length bytes, body); the
# firmware's own receive limit is not documented, so the simulator accepts any.
MAX_PACKET_SIZE = 1 + 4 + MAX_REMAINING_LENGTH

_CONNACK_REASONS: dict[int, str] = {
    ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION: "unacceptable protocol version",
    ConnectReturnCode.IDENTIFIER_REJECTED: "client identifier rejected",
    ConnectReturnCode.SERVER_UNAVAILABLE: "server unavailable",
    ConnectReturnCode.BAD_USERNAME_OR_PASSWORD: "bad user name or password",
    ConnectReturnCode.NOT_AUTHORIZED: "not authorised",
}

MessageHandler = Callable[[str, bytes, int, bool], None]
"""``(topic, payload, qos, retain)`` of an incoming PUBLISH."""


class MqttConnection:
    """One MQTT 3.1.1 clean session: :meth:`connect`, :meth:`run`, then disconnect or abort."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        keepalive: int,
        on_message: MessageHandler,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._keepalive = keepalive
        self._on_message = on_message
        self._frames = FrameReader(MAX_PACKET_SIZE)
        self._early: list[tuple[int, bytes]] = []  # frames that arrived with the CONNACK
        self._next_id = 0
        self._inflight: dict[int, asyncio.Future[None]] = {}
        self._acks: dict[int, asyncio.Future[list[int]]] = {}
        self.closed = asyncio.Event()
        self.published = 0
        self.acked = 0

    # ------------------------------------------------------------------ connecting

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        keepalive: int = 60,
        tls: ssl.SSLContext | None = None,
        on_message: MessageHandler,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> MqttConnection:
        """Open the socket, send CONNECT, wait for CONNACK (raises :class:`MqttError`).

        A password is sent only with a user name (MQTT 3.1.1 §3.1.2.9).
        """
        packet = encode_connect(
            client_id,
            keepalive=keepalive,
            will=will,
            username=username,
            password=password.encode() if username is not None and password is not None else None,
        )
        conn: MqttConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None
                )
                conn = cls(reader, writer, keepalive=keepalive, on_message=on_message)
                writer.write(packet)
                code = await conn._connack()
        except (OSError, ssl.SSLError, TimeoutError, ProtocolError) as err:
            if conn is not None:
                conn._writer.close()
            raise MqttError(f"MQTT connect to {host}:{port} failed: {err!r}") from err
        if code != ConnectReturnCode.ACCEPTED:
            conn._writer.close()
            reason = _CONNACK_REASONS.get(code, f"CONNACK code {code}")
            raise MqttError(f"MQTT broker {host}:{port} refused {client_id}: {reason}")
        return conn

    async def _connack(self) -> int:
        """The return code of the CONNACK that must be the broker's first packet."""
        frames: list[tuple[int, bytes]] = []
        while not frames:
            frames = await self._read_frames()
        (first, body), *self._early = frames
        if first >> 4 != PacketType.CONNACK:
            raise ProtocolError("malformed", f"expected CONNACK, got packet type {first >> 4}")
        return parse_connack(body)[1]

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Read packets and keep the session alive until it closes (returns; never raises)."""
        try:
            async with asyncio.TaskGroup() as tg:
                pinger = tg.create_task(self._pinger())
                try:
                    await self._read_loop()
                finally:
                    pinger.cancel()
        except* ProtocolError as group:
            # a broker that breaks the protocol loses the connection, as a client would
            log.warning("closing MQTT connection to %s: %s", self._peer(), group.exceptions[0])
        except* (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            self._teardown()

    async def _read_frames(self) -> list[tuple[int, bytes]]:
        """The frames completed by the next bytes from the socket (maybe none)."""
        data = await self._reader.read(READ_CHUNK)
        if not data:
            raise ConnectionResetError("the MQTT broker closed the connection")
        return self._frames.feed(data)

    async def _read_loop(self) -> None:
        frames, self._early = self._early, []
        while True:
            for first, body in frames:
                self._dispatch(first, body)
            frames = await self._read_frames()

    def _dispatch(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PacketType.PUBLISH:
            msg = parse_publish(first, body)
            if msg.qos:
                self._write(encode_ack(PacketType.PUBACK, msg.packet_id))
            self._on_message(msg.topic, msg.payload, msg.qos, msg.retain)
        elif kind == PacketType.PUBACK:
            fut = self._inflight.pop(parse_packet_id(body), None)
            if fut is not None and not fut.done():
                self.acked += 1
                fut.set_result(None)
        elif kind == PacketType.SUBACK:
            packet_id, codes = parse_suback(body)
            self._resolve_ack(packet_id, codes)
        elif kind == PacketType.UNSUBACK:
            self._resolve_ack(parse_packet_id(body), [])

    def _resolve_ack(self, packet_id: int, codes: list[int]) -> None:
        ack = self._acks.pop(packet_id, None)
        if ack is not None and not ack.done():
            ack.set_result(codes)

    async def _pinger(self) -> None:
        interval = max(1.0, self._keepalive / 2)
        ping = encode_packet(PacketType.PINGREQ)
        while True:
            await asyncio.sleep(interval)
            self._write(ping)

    def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("MQTT connection is closed")
        self._writer.write(data)

    def _pid(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _peer(self) -> str:
        peer = self._writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "the broker"

    def _teardown(self) -> None:
        futures: list[asyncio.Future[None] | asyncio.Future[list[int]]] = [
            *self._inflight.values(),
            *self._acks.values(),
        ]
        for fut in futures:
            if not fut.done():
                fut.set_exception(ConnectionResetError("MQTT connection lost"))
                fut.exception()  # mark retrieved: nobody may be waiting for a QoS 1 ack
        self._inflight.clear()
        self._acks.clear()
        self._writer.close()
        self.closed.set()

    # ------------------------------------------------------------------ API

    @property
    def is_open(self) -> bool:
        """Whether the socket is still usable."""
        return not self.closed.is_set() and not self._writer.is_closing()

    @property
    def inflight(self) -> int:
        """QoS 1 publishes not yet acknowledged."""
        return len(self._inflight)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[None] | None:
        """Queue a PUBLISH; for QoS 1 returns a future that resolves on PUBACK."""
        fut: asyncio.Future[None] | None = None
        packet_id = 0
        if qos:
            packet_id = self._pid()
            fut = asyncio.get_running_loop().create_future()
            self._inflight[packet_id] = fut
        self._write(encode_publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id))
        self.published += 1
        return fut

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS per topic (0x80 = refused)."""
        packet_id = self._pid()
        fut = self._expect_ack(packet_id)
        self._write(encode_subscribe(packet_id, topics))
        async with asyncio.timeout(timeout):
            return await fut

    async def unsubscribe(self, topics: list[str], timeout: float = 10.0) -> None:
        """UNSUBSCRIBE and wait for UNSUBACK."""
        packet_id = self._pid()
        fut = self._expect_ack(packet_id)
        self._write(encode_unsubscribe(packet_id, topics))
        async with asyncio.timeout(timeout):
            await fut

    def _expect_ack(self, packet_id: int) -> asyncio.Future[list[int]]:
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._acks[packet_id] = fut
        return fut

    async def disconnect(self) -> None:
        """Clean close: DISCONNECT, so the broker discards the will."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._write(encode_packet(PacketType.DISCONNECT))
            await self._writer.drain()
        self._writer.close()
        self.closed.set()

    def abort(self) -> None:
        """Drop the socket without DISCONNECT (power loss, reboot): the broker fires the will."""
        transport = self._writer.transport
        transport.abort()
        self.closed.set()


__all__ = ["MessageHandler", "MqttConnection", "Will"]
