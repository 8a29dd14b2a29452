"""The simulator's MQTT client against a scripted broker on a real loopback socket: the edges a
well-behaved broker never shows (refusals, packets split anywhere, malformed answers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from kilowatch.mqtt import ProtocolError
from kilowatch.mqtt.packets import (
    ConnectReturnCode,
    FrameReader,
    PacketType,
    Will,
    encode_ack,
    encode_connack,
    encode_publish,
    encode_suback,
    parse_connect,
    parse_publish,
    parse_subscribe,
    parse_unsubscribe,
)
from shellysim.errors import MqttError
from shellysim.mqttwire import MqttConnection

WAIT_S = 10.0
Frame = tuple[int, bytes]


class Peer:
    """The broker's end of one connection: reads whole frames, writes raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._frames = FrameReader(1 << 20)
        self._pending: list[Frame] = []

    async def frame(self) -> Frame:
        async with asyncio.timeout(WAIT_S):
            while not self._pending:
                data = await self.reader.read(4096)
                assert data, "the client closed the connection"
                self._pending += self._frames.feed(data)
        return self._pending.pop(0)

    async def send(self, data: bytes, *, chunk: int | None = None) -> None:
        step = chunk or len(data)
        for i in range(0, len(data), step):
            self.writer.write(data[i : i + step])
            await self.writer.drain()


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def scripted_broker(script: Script) -> AsyncIterator[int]:
    """A one-connection broker on a free loopback port that plays ``script``."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(Peer(reader, writer))
            if not done.done():
                done.set_result(None)
        except Exception as err:
            if not done.done():
                done.set_exception(err)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        async with asyncio.timeout(WAIT_S):
            await done  # the script's own assertions fail the test


def ignore(topic: str, payload: bytes, qos: int, retain: bool) -> None:
    pass


async def test_refused_connack_names_the_reason() -> None:
    async def script(peer: Peer) -> None:
        await peer.frame()
        await peer.send(encode_connack(False, ConnectReturnCode.BAD_USERNAME_OR_PASSWORD))

    async with scripted_broker(script) as port:
        with pytest.raises(MqttError, match="refused dev-1: bad user name or password"):
            await MqttConnection.connect("127.0.0.1", port, client_id="dev-1", on_message=ignore)


async def test_a_malformed_answer_to_connect_is_an_mqtt_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.frame()
        await peer.send(encode_publish("t", b"not a CONNACK"))

    async with scripted_broker(script) as port:
        with pytest.raises(MqttError, match="expected CONNACK") as info:
            await MqttConnection.connect("127.0.0.1", port, client_id="dev-1", on_message=ignore)
    assert isinstance(info.value.__cause__, ProtocolError)


async def test_connect_frames_split_anywhere_and_early_messages_are_delivered() -> None:
    got: list[tuple[str, bytes, int, bool]] = []
    acked: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def script(peer: Peer) -> None:
        first, body = await peer.frame()
        connect = parse_connect(body)
        assert first >> 4 == PacketType.CONNECT
        assert (connect.client_id, connect.keepalive) == ("dev-1", 30)
        assert (connect.username, connect.password) == ("u", b"pw")
        assert connect.will == Will("dev-1/online", b"false", 0, True)
        # CONNACK and a retained QoS 1 message in one stream, one byte at a time
        early = encode_publish("dev-1/rpc", b"x" * 300, qos=1, retain=True, packet_id=9)
        await peer.send(encode_connack(False, ConnectReturnCode.ACCEPTED) + early, chunk=1)
        first, body = await peer.frame()
        assert first >> 4 == PacketType.PUBACK
        acked.set_result(int.from_bytes(body, "big"))

    async with scripted_broker(script) as port:
        conn = await MqttConnection.connect(
            "127.0.0.1",
            port,
            client_id="dev-1",
            username="u",
            password="pw",
            will=Will("dev-1/online", b"false", 0, True),
            keepalive=30,
            on_message=lambda *msg: got.append(msg),
        )
        await conn.run()  # returns when the scripted broker hangs up
    assert got == [("dev-1/rpc", b"x" * 300, 1, True)]
    assert acked.result() == 9
    assert not conn.is_open


async def test_password_without_user_name_is_not_sent() -> None:
    async def script(peer: Peer) -> None:
        connect = parse_connect((await peer.frame())[1])
        assert (connect.username, connect.password) == (None, None)
        await peer.send(encode_connack(False, ConnectReturnCode.ACCEPTED))

    async with scripted_broker(script) as port:
        conn = await MqttConnection.connect(
            "127.0.0.1", port, client_id="d", password="pw", on_message=ignore
        )
        await conn.disconnect()


async def test_publish_subscribe_unsubscribe_and_disconnect() -> None:
    async def script(peer: Peer) -> None:
        await peer.frame()
        await peer.send(encode_connack(False, ConnectReturnCode.ACCEPTED))
        first, body = await peer.frame()
        assert first == PacketType.SUBSCRIBE << 4 | 2
        packet_id, filters = parse_subscribe(body)
        assert filters == [("a/#", 1), ("b", 0)]
        await peer.send(encode_suback(packet_id, [1, 0x80]))
        first, body = await peer.frame()
        msg = parse_publish(first, body)
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("a/b", b"on", 1, True)
        await peer.send(encode_ack(PacketType.PUBACK, msg.packet_id))
        first, body = await peer.frame()
        assert first == PacketType.UNSUBSCRIBE << 4 | 2
        packet_id, unsub = parse_unsubscribe(body)
        assert unsub == ["a/#"]
        await peer.send(encode_ack(PacketType.UNSUBACK, packet_id))
        assert await peer.frame() == (PacketType.DISCONNECT << 4, b"")

    async with scripted_broker(script) as port:
        conn = await MqttConnection.connect("127.0.0.1", port, client_id="d", on_message=ignore)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(conn.run())
            assert await conn.subscribe([("a/#", 1), ("b", 0)]) == [1, 0x80]
            acked = conn.publish("a/b", b"on", qos=1, retain=True)
            assert acked is not None and conn.inflight == 1
            await asyncio.wait_for(acked, WAIT_S)
            assert (conn.published, conn.acked, conn.inflight) == (1, 1, 0)
            await conn.unsubscribe(["a/#"])
            await conn.disconnect()


async def test_a_malformed_packet_while_running_closes_and_fails_waiters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.frame()
        await peer.send(encode_connack(False, ConnectReturnCode.ACCEPTED))
        await peer.frame()  # the QoS 1 publish
        await peer.send(b"\x32\x03\x00\x05a")  # PUBLISH whose topic runs past its end
        await peer.reader.read()  # until the client hangs up

    async with scripted_broker(script) as port:
        conn = await MqttConnection.connect("127.0.0.1", port, client_id="d", on_message=ignore)
        pending = conn.publish("t", b"x", qos=1)
        assert pending is not None
        await asyncio.wait_for(conn.run(), WAIT_S)  # returns; never raises
    assert not conn.is_open
    with pytest.raises(ConnectionResetError):
        await pending
    assert "PUBLISH ends inside its topic" in caplog.text
