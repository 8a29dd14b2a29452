"""A small asyncio MQTT 3.1.1 client, enough for hundreds of simulated devices in one process.

One connection is one :class:`MqttConnection`: CONNECT with will, user/pass and TLS; QoS 0/1
PUBLISH with PUBACK tracking; SUBSCRIBE/UNSUBSCRIBE; incoming QoS 0/1 PUBLISH (acknowledged);
keepalive with PINGREQ. It has no threads: a fleet of 500 devices is 500 sockets on one event loop.
Reconnecting is the caller's job (the device decides when it is allowed to be online).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from shellysim.errors import MqttError

CONNECT_TIMEOUT_S = 10.0

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}

MessageHandler = Callable[[str, bytes, int, bool], None]
"""``(topic, payload, qos, retain)`` of an incoming PUBLISH."""


@dataclass(frozen=True, slots=True)
class Will:
    """Last will: published by the broker when the connection drops without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    length = len(body)
    out = bytearray([(ptype << 4) | flags])
    while True:
        byte = length % 128
        length //= 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(out) + body


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT wildcard matching (``+`` one level, ``#`` the rest)."""
    fparts = topic_filter.split("/")
    tparts = topic.split("/")
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts) or (f != "+" and f != tparts[i]):
            return False
    return len(fparts) == len(tparts)


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
        self._next_id = 0
        self._inflight: dict[int, asyncio.Future[None]] = {}
        self._acks: dict[int, asyncio.Future[bytes]] = {}
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
        """Open the socket, send CONNECT, wait for CONNACK (raises :class:`MqttError`)."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None
                )
                conn = cls(reader, writer, keepalive=keepalive, on_message=on_message)
                writer.write(conn._connect_packet(client_id, username, password, will))
                ptype, _, body = await conn._read_packet()
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as err:
            raise MqttError(f"MQTT connect to {host}:{port} failed: {err!r}") from err
        if ptype != CONNACK or len(body) < 2 or body[1] != 0:
            code = body[1] if len(body) > 1 else -1
            writer.close()
            reason = _CONNACK_REASONS.get(code, f"CONNACK code {code}")
            raise MqttError(f"MQTT broker {host}:{port} refused {client_id}: {reason}")
        return conn

    def _connect_packet(
        self, client_id: str, username: str | None, password: str | None, will: Will | None
    ) -> bytes:
        flags = 0x02  # clean session
        payload = _str(client_id)
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
            payload += _str(will.topic) + struct.pack("!H", len(will.payload)) + will.payload
        if username is not None:
            flags |= 0x80
            payload += _str(username)
            if password is not None:
                flags |= 0x40
                payload += _str(password)
        body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", self._keepalive) + payload
        return _packet(CONNECT, 0, body)

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
        except* (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        finally:
            self._teardown()

    async def _read_packet(self) -> tuple[int, int, bytes]:
        head = await self._reader.readexactly(1)
        mult, length = 1, 0
        while True:
            b = (await self._reader.readexactly(1))[0]
            length += (b & 0x7F) * mult
            if not b & 0x80:
                break
            mult *= 128
        body = await self._reader.readexactly(length) if length else b""
        return head[0] >> 4, head[0] & 0x0F, body

    async def _read_loop(self) -> None:
        while True:
            ptype, flags, body = await self._read_packet()
            if ptype == PUBLISH:
                self._incoming(flags, body)
            elif ptype == PUBACK:
                (pid,) = struct.unpack("!H", body[:2])
                fut = self._inflight.pop(pid, None)
                if fut is not None and not fut.done():
                    self.acked += 1
                    fut.set_result(None)
            elif ptype in (SUBACK, UNSUBACK):
                (pid,) = struct.unpack("!H", body[:2])
                ack = self._acks.pop(pid, None)
                if ack is not None and not ack.done():
                    ack.set_result(body[2:])

    def _incoming(self, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        (tlen,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + tlen].decode(errors="replace")
        pos = 2 + tlen
        if qos:
            (pid,) = struct.unpack("!H", body[pos : pos + 2])
            pos += 2
            self._write(_packet(PUBACK, 0, struct.pack("!H", pid)))
        self._on_message(topic, body[pos:], qos, bool(flags & 0x01))

    async def _pinger(self) -> None:
        interval = max(1.0, self._keepalive / 2)
        while True:
            await asyncio.sleep(interval)
            self._write(_packet(PINGREQ, 0, b""))

    def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("MQTT connection is closed")
        self._writer.write(data)

    def _pid(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _teardown(self) -> None:
        futures: list[asyncio.Future[None] | asyncio.Future[bytes]] = [
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
        flags = (qos << 1) | (1 if retain else 0)
        body = _str(topic)
        fut: asyncio.Future[None] | None = None
        if qos:
            pid = self._pid()
            body += struct.pack("!H", pid)
            fut = asyncio.get_running_loop().create_future()
            self._inflight[pid] = fut
        self._write(_packet(PUBLISH, flags, body + payload))
        self.published += 1
        return fut

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS per topic (0x80 = refused)."""
        pid = self._pid()
        body = struct.pack("!H", pid) + b"".join(_str(t) + bytes([q]) for t, q in topics)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        self._write(_packet(SUBSCRIBE, 0x02, body))
        async with asyncio.timeout(timeout):
            return list(await fut)

    async def unsubscribe(self, topics: list[str], timeout: float = 10.0) -> None:
        """UNSUBSCRIBE and wait for UNSUBACK."""
        pid = self._pid()
        body = struct.pack("!H", pid) + b"".join(_str(t) for t in topics)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        self._write(_packet(UNSUBSCRIBE, 0x02, body))
        async with asyncio.timeout(timeout):
            await fut

    async def disconnect(self) -> None:
        """Clean close: DISCONNECT, so the broker discards the will."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._write(_packet(DISCONNECT, 0, b""))
            await self._writer.drain()
        self._writer.close()
        self.closed.set()

    def abort(self) -> None:
        """Drop the socket without DISCONNECT (power loss, reboot): the broker fires the will."""
        transport = self._writer.transport
        transport.abort()
        self.closed.set()


__all__ = ["MessageHandler", "MqttConnection", "Will", "topic_matches"]
