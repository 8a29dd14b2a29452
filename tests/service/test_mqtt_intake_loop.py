"""The MQTT intake driven by the asyncio loop: keep-alive, acks, a clean close, TLS."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from svchelpers import TIMEOUT_S, Publisher, forget_session, poll, unique

from kilowatch.broker.embedded import EmbeddedBroker
from kilowatch.intake.client import CONNECT_TIMEOUT_S, Delivery, MqttIntake, MqttOptions
from kilowatch.testing import MosquittoServer
from kilowatch.testing.tls import self_signed_cert


async def _take(intake: MqttIntake, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(got) < n:
            got.extend(await intake.next_batch(100))
    return got


async def test_keepalive_holds_an_idle_connection_and_acks_reach_the_broker(
    mosquitto: MosquittoServer,
) -> None:
    client_id = unique("kw-loop-")
    topic = f"{unique('dev')}/events/rpc"
    # keep-alive 4 s: the broker may drop a client silent for 6 s, so only our PINGREQs keep it.
    # (This reconnected in 2 of 5 suite runs while the intake sent its first PINGREQ only ~11 s
    # after connecting; test_mqtt_keepalive.py checks the PINGREQ deadline itself.)
    options = MqttOptions(host="127.0.0.1", port=mosquitto.port, client_id=client_id, keepalive=4)
    publisher = Publisher(mosquitto.port)
    try:
        async with MqttIntake(options, [topic]) as intake, asyncio.TaskGroup() as tg:
            runner = tg.create_task(intake.run())
            async with asyncio.timeout(TIMEOUT_S):
                await intake.connected.wait()
            generation = intake._generation
            await asyncio.sleep(7.5)  # the duration under test: longer than the broker's limit
            assert intake.connected.is_set()
            assert intake._generation == generation, "the broker dropped the idle connection"
            sent = [(topic, f'{{"n":{i}}}'.encode()) for i in range(50)]
            await asyncio.to_thread(publisher.publish_many, sent)
            batch = await _take(intake, 50)
            intake.ack(batch)
            assert intake.acked == 50
            runner.cancel()
        # every ack was written before DISCONNECT: a new connection gets nothing redelivered
        async with MqttIntake(options, [topic]) as again, asyncio.TaskGroup() as tg:
            runner = tg.create_task(again.run())
            async with asyncio.timeout(TIMEOUT_S):
                await again.connected.wait()
            await asyncio.to_thread(publisher.publish, topic, b'{"n":"last"}')
            first = await _take(again, 1)
            assert first[0].payload == b'{"n":"last"}', "an acked message came back"
            assert again.take_pending() == []
            runner.cancel()
    finally:
        publisher.close()
        forget_session(mosquitto.port, client_id)


async def test_a_refused_connection_is_reported_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A CONNACK refusal ends the attempt when it arrives, not when the connect timeout runs out."""
    caplog.set_level("WARNING", logger="kilowatch.mqtt")
    with MosquittoServer(users={"meter": "s3cret"}) as broker:
        options = MqttOptions(
            host="127.0.0.1", port=broker.port, client_id=unique("kw-no-"), user="meter",
            password="wrong",
        )  # fmt: skip
        async with MqttIntake(options, ["x/#"]) as intake, asyncio.TaskGroup() as tg:
            runner = tg.create_task(intake.run())
            started = time.monotonic()
            await poll(lambda: "refused the connection" in caplog.text, what="the refusal")
            # The old wait for CONNACK *and* a lost connection always ran its full 10 s.
            assert time.monotonic() - started < CONNECT_TIMEOUT_S / 2
            assert "Not authorized" in caplog.text
            assert not intake.connected.is_set()
            runner.cancel()


async def test_tls_burst_is_read_whole(tmp_path: Path) -> None:
    """Over TLS, bytes already decrypted are invisible to the selector: none may be left behind."""
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    topic = f"{unique('dev')}/events/rpc"
    async with EmbeddedBroker(port=0, ssl_context=server_ctx) as broker:
        options = MqttOptions(
            host="127.0.0.1", port=broker.port, client_id=unique("kw-tls-"), tls=True, ca=cert
        )
        async with MqttIntake(options, [topic]) as intake, asyncio.TaskGroup() as tg:
            runner = tg.create_task(intake.run())
            async with asyncio.timeout(TIMEOUT_S):
                await intake.connected.wait()
            publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub-"))
            publisher.tls_set(ca_certs=str(cert))
            publisher.max_inflight_messages_set(0)
            await asyncio.to_thread(publisher.connect, "127.0.0.1", broker.port)
            publisher.loop_start()
            try:
                infos = [
                    publisher.publish(topic, f'{{"n":{i}}}'.encode(), qos=1) for i in range(300)
                ]
                for info in infos:
                    await asyncio.to_thread(info.wait_for_publish, TIMEOUT_S)
                got = await _take(intake, 300)
            finally:
                publisher.disconnect()
                publisher.loop_stop()
            assert sorted(int(d.payload[5:-1]) for d in got) == list(range(300))
            intake.ack(got)
            runner.cancel()
