"""Throughput of the embedded broker against a real mosquitto, measured in the same run.

One paho publisher sends N QoS 1 messages (a Shelly NotifyStatus-sized payload) to one paho
subscriber (QoS 1 subscription) through (a) kilowatch's embedded broker and (b) mosquitto
(kilowatch.testing.MosquittoServer). Broker, publisher and subscriber are three processes, so
publisher and subscriber do not share a GIL and neither shares one with the embedded broker. The
rate is messages received by the subscriber per second, from starting the publisher to the last
message. A second figure per broker is its own ingest rate: a raw-socket publisher sends the same
N QoS 1 messages back to back, timed to the last PUBACK, with no paho client setting the pace.
The last line printed is one JSON object with every figure.

    PYTHONPATH=src python bench/broker.py --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from kilowatch.mqtt.packets import FrameReader, encode_connect, encode_publish  # noqa: E402
from kilowatch.testing import MosquittoServer, free_port, wait_for_port  # noqa: E402

WAIT_S = 300.0
# paho's default window is 20 in-flight QoS 1 messages; both brokers get the same larger one.
PUBLISHER_INFLIGHT = 100


def _payload(size: int) -> bytes:
    frame = {
        "src": "shellypmminig3-ecda3bc4ddb0",
        "dst": "shellypmminig3-ecda3bc4ddb0/events",
        "method": "NotifyStatus",
        "params": {"ts": 1752840144.0, "pm1:0": {"id": 0, "apower": 4.4, "voltage": 229.8}},
    }
    raw = json.dumps(frame).encode()
    return raw + b" " * max(0, size - len(raw))


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle's algorithm on: small packets then wait for delayed ACKs and the figure
    # measures TCP timers, not the broker.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def publish(port: int, messages: int, payload_size: int) -> None:
    """Publisher-process mode: send ``messages`` QoS 1 messages and wait for every PUBACK."""
    payload = _payload(payload_size)
    # paho rescans every queued message on each PUBACK, so queueing all N at once is quadratic;
    # never hand it more than its in-flight window.
    window = threading.BoundedSemaphore(PUBLISHER_INFLIGHT)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{port}")
    pub.max_inflight_messages_set(PUBLISHER_INFLIGHT)
    pub.on_publish = lambda *args: window.release()
    pub.on_socket_open = _no_delay
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for i in range(messages):
        if not window.acquire(timeout=WAIT_S):
            raise SystemExit("the broker stopped acknowledging")
        pub.publish(f"bench/{i % 10}", payload, qos=1)
    for _ in range(PUBLISHER_INFLIGHT):
        window.acquire(timeout=WAIT_S)
    pub.disconnect()
    pub.loop_stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, messages: int, payload_size: int, broker_pid: int) -> dict[str, Any]:
    """Receive ``messages`` QoS 1 messages published by a child process through ``port``.

    Besides the rate, the broker process's CPU time per message is recorded: unlike the rate it
    hardly depends on how busy the machine is.
    """
    cpu_before = _cpu_seconds(broker_pid)
    received = 0
    first_at = 0.0
    last_at = 0.0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal received, first_at, last_at
        last_at = time.perf_counter()
        if not received:
            first_at = last_at
        received += 1
        if received >= messages:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{port}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.on_socket_open = _no_delay
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/#", 1)
    sub.loop_start()
    if not subscribed.wait(30):
        raise SystemExit(f"could not subscribe on the broker on port {port}")
    argv = [sys.executable, __file__, "--publish", str(port), str(messages), str(payload_size)]
    publisher = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(SRC)})
    start = time.perf_counter()
    done.wait(WAIT_S)
    publisher.wait(WAIT_S)
    sub.disconnect()
    sub.loop_stop()
    elapsed = (last_at - start) if received else WAIT_S
    cpu = _cpu_seconds(broker_pid) - cpu_before
    return {
        "received": received,
        "lost": messages - received,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(received / elapsed, 1),
        "broker_cpu_us_per_msg": round(cpu / max(received, 1) * 1e6, 1),
    }


def raw_ingest(port: int, messages: int, payload_size: int) -> float:
    """Messages/s a broker accepts from a raw-socket QoS 1 publisher (no subscriber): the broker's
    own ingest rate, with no paho client setting the pace. Time runs to the last PUBACK."""
    payload = _payload(payload_size)
    packets = b"".join(
        encode_publish("bench/raw", payload, qos=1, packet_id=i % 65535 + 1)
        for i in range(messages)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode_connect(f"bench-raw-{port}"))
        reader = FrameReader(1 << 20)
        if not reader.feed(sock.recv(4)):  # CONNACK is 4 bytes; loopback delivers it whole
            raise SystemExit("no CONNACK from the broker")
        start = time.perf_counter()
        # send in a thread so neither side's socket buffer can deadlock the other
        sender = threading.Thread(target=sock.sendall, args=(packets,))
        sender.start()
        acked = 0
        while acked < messages:
            data = sock.recv(1 << 16)
            if not data:
                raise SystemExit("the broker closed the raw publisher's connection")
            acked += len(reader.feed(data))
        elapsed = time.perf_counter() - start
        sender.join()
    return round(messages / elapsed, 1)


@contextlib.contextmanager
def embedded_broker() -> Iterator[tuple[int, int]]:
    """The embedded broker in a child process, as mosquitto runs: ``(port, pid)``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, __file__, "--serve-embedded", str(port)], env=env)
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def mosquitto_broker() -> Iterator[tuple[int, int]]:
    """A mosquitto on a free port, configured by kilowatch.testing: ``(port, pid)``."""
    with MosquittoServer() as server:
        assert server.proc is not None
        yield server.port, server.proc.pid


def run(name: str, broker: Any, messages: int, payload_size: int) -> dict[str, Any]:
    """Both measurements against one broker."""
    with broker() as (port, pid):
        figures = measure(port, messages, payload_size, pid)
        figures["raw_ingest_msg_per_s"] = raw_ingest(port, messages, payload_size)
    print(f"{name:<16} {figures['msg_per_s']:>9.0f} msg/s  {figures}")
    return figures


def serve_embedded(port: int) -> None:
    """Child-process mode: run the embedded broker until terminated."""
    import signal

    from kilowatch.broker.embedded import EmbeddedBroker

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with EmbeddedBroker("127.0.0.1", port):
            await stop.wait()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per broker")
    parser.add_argument("--payload-size", type=int, default=300, help="bytes per message")
    parser.add_argument("--serve-embedded", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--publish", type=int, nargs=3, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_embedded:
        serve_embedded(args.serve_embedded)
        return
    if args.publish:
        publish(*args.publish)
        return
    embedded = run("embedded broker:", embedded_broker, args.messages, args.payload_size)
    mosquitto = run("mosquitto:", mosquitto_broker, args.messages, args.payload_size)
    ratio = embedded["msg_per_s"] / mosquitto["msg_per_s"] if mosquitto["msg_per_s"] else 0.0
    print(f"ratio embedded/mosquitto: {ratio:.2f}")
    print(
        json.dumps(
            {
                "messages": args.messages,
                "payload_bytes": len(_payload(args.payload_size)),
                "qos": 1,
                "embedded_msg_per_s": embedded["msg_per_s"],
                "embedded_lost": embedded["lost"],
                "embedded_cpu_us_per_msg": embedded["broker_cpu_us_per_msg"],
                "mosquitto_msg_per_s": mosquitto["msg_per_s"],
                "mosquitto_lost": mosquitto["lost"],
                "mosquitto_cpu_us_per_msg": mosquitto["broker_cpu_us_per_msg"],
                "embedded_raw_ingest_msg_per_s": embedded["raw_ingest_msg_per_s"],
                "mosquitto_raw_ingest_msg_per_s": mosquitto["raw_ingest_msg_per_s"],
                "ratio": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
