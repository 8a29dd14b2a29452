"""The intake keeps an idle connection alive: mosquitto sees a PINGREQ within the keep-alive.

MQTT 3.1.1 §3.1.2.10: a broker may drop a client that sent nothing for 1.5× its keep-alive. The
mosquitto here only checks every 5 s, so whether it actually drops a late client depends on the
phase of that check (the idle test in test_mqtt_intake_loop.py failed in 2 of 5 suite runs);
the broker's debug log shows each PINGREQ, so the deadline itself is checked here, every time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from svchelpers import TIMEOUT_S, unique

from kilowatch.intake.client import MqttIntake, MqttOptions
from kilowatch.testing import MosquittoServer

KEEPALIVE_S = 4
LIMIT_S = 1.5 * KEEPALIVE_S
"""Longest silence the broker has to accept (§3.1.2.10)."""


class ChattyBroker(MosquittoServer):
    """A broker of its own that logs every packet to a file (the shared one logs errors only;
    mosquitto buffers its stdout, but flushes a log file line by line)."""

    def __init__(self, log: Path) -> None:
        super().__init__(extra_config=f"log_dest file {log}\nlog_type debug\n")
        self.log = log


@pytest.fixture
def chatty_mosquitto(tmp_path: Path) -> Iterator[ChattyBroker]:
    with ChattyBroker(tmp_path / "broker.log") as server:
        yield server


def _pingreqs(broker: ChattyBroker, client_id: str) -> int:
    text = broker.log.read_text(errors="replace") if broker.log.exists() else ""
    return text.count(f"Received PINGREQ from {client_id}\n")


async def _next_pingreq(broker: ChattyBroker, client_id: str, seen: int) -> None:
    """Wait for ping number ``seen + 1`` in the broker's log; fail after LIMIT_S."""
    start = time.monotonic()
    while _pingreqs(broker, client_id) <= seen:
        elapsed = time.monotonic() - start
        assert elapsed < LIMIT_S, f"no PINGREQ within {LIMIT_S}s: the broker may drop us"
        await asyncio.sleep(0.02)


async def _hog_the_loop(block_s: float) -> None:
    """A loaded machine, in-process: the loop is blocked half of the time."""
    while True:
        time.sleep(block_s)  # noqa: ASYNC251 -- blocking the loop is the point
        await asyncio.sleep(block_s)


async def _expect_pings(broker: ChattyBroker, *, pings: int, hog_s: float = 0.0) -> None:
    client_id = unique("kw-ka-")
    options = MqttOptions(
        host="127.0.0.1", port=broker.port, client_id=client_id, keepalive=KEEPALIVE_S
    )
    topic = f"{unique('dev')}/events/rpc"
    async with MqttIntake(options, [topic]) as intake, asyncio.TaskGroup() as tg:
        runner = tg.create_task(intake.run())
        async with asyncio.timeout(TIMEOUT_S):
            await intake.connected.wait()
        generation = intake._generation
        hog = tg.create_task(_hog_the_loop(hog_s)) if hog_s else None
        # Connected means SUBACK read, so our SUBSCRIBE was the last packet the broker got from us:
        # the clock for the first PINGREQ starts no later than now.
        for seen in range(pings):
            await _next_pingreq(broker, client_id, seen)
        if hog is not None:
            hog.cancel()
        assert intake.connected.is_set()
        assert intake._generation == generation, "the connection was dropped and made again"
        runner.cancel()


async def test_first_pingreq_comes_within_the_keepalive(
    chatty_mosquitto: ChattyBroker,
) -> None:
    # The intake used to wait out the whole connect timeout (10 s) before its keep-alive tick
    # started: the first PINGREQ came ~11 s after connecting, whatever the keep-alive.
    await _expect_pings(chatty_mosquitto, pings=1)


async def test_pingreqs_keep_coming_while_the_loop_is_starved(
    chatty_mosquitto: ChattyBroker,
) -> None:
    await _expect_pings(chatty_mosquitto, pings=2, hog_s=0.2)
