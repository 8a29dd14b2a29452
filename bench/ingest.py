"""Ingest benchmark: kilowatch end to end versus a bare paho-mqtt subscriber, through mosquitto.

    PYTHONPATH=src python bench/ingest.py [--messages 100000] [--devices 200]
                                          [--stores sqlite,redis]

For each consumer, in the same run and each on a fresh mosquitto (configured so it cannot drop:
``kilowatch.testing.MosquittoServer``):

- ``bare``: a paho-mqtt 2.x subscriber that only counts messages (QoS 1, persistent session,
  paho's own network thread, automatic PUBACK) — the fastest Python consumer;
- ``bare_asyncio``: the same, with paho driven by the asyncio loop instead of its thread;
- ``aiomqtt``: the same with aiomqtt, if installed (``pip install .[bench]``; skipped otherwise);
- ``kilowatch_sqlite`` / ``kilowatch_redis``: ``kilowatch.service.server.serve`` against
  mosquitto, storing into a fresh SQLite file / a fresh redis-server.

A separate publisher process publishes N Shelly ``NotifyStatus`` frames (``pm1:0``, many devices,
counters rising) at QoS 1 as fast as mosquitto takes them. A consumer's rate is N divided by the
time from the first publish until the last message was counted (bare) or *stored*: until the batch
holding the last message is committed; afterwards the energy in the store is checked against the
truth. Loss is reported as a figure. The last line of output is one JSON object of every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

START_TS = 1_767_225_600  # 2026-01-01T00:00:00Z: all readings fall on one UTC day or two
STEP_S = 10
"""Seconds between two readings of one device."""
STEP_WH = 0.5
"""Energy per step (180 W): every message moves its device's counter."""
PUBLISH_WINDOW = 20_000
"""Unacknowledged publishes at most (MQTT packet ids are 16 bits)."""
IDLE_TIMEOUT_S = 30.0
"""A consumer that receives nothing for this long after the publisher finished has lost messages."""
LOCAL_ZONE = "Europe/Berlin"
"""The site zone whose local days commits maintain (as `kilowatch serve` does for its site)."""


# -- the messages ---------------------------------------------------------------------------------


def device_id(i: int) -> str:
    return f"shellypmminig3-bench{i:08x}"


def messages(n: int, devices: int) -> list[tuple[str, bytes]]:
    """N NotifyStatus frames round-robin over ``devices``, each with its device's rising counter."""
    out = []
    for k in range(n):
        d, step = k % devices, k // devices
        dev = device_id(d)
        frame = {
            "src": dev,
            "dst": f"{dev}/events",
            "method": "NotifyStatus",
            "params": {
                "ts": START_TS + step * STEP_S + d % STEP_S,
                "pm1:0": {
                    "id": 0,
                    "apower": 180.0,
                    "current": 0.78,
                    "voltage": 230.1,
                    "aenergy": {"total": round(1000.0 + d + step * STEP_WH, 3)},
                },
            },
        }
        out.append((f"{dev}/events/rpc", json.dumps(frame, separators=(",", ":")).encode()))
    return out


def true_energy_wh(n: int, devices: int) -> float:
    """What the ledger must find: each device's last counter minus its first."""
    total = 0.0
    for d in range(devices):
        steps = len(range(d, n, devices))
        total += max(steps - 1, 0) * STEP_WH
    return total


# -- roles (each runs in its own process) ---------------------------------------------------------


def role_publish(port: int, n: int, devices: int) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    payloads = messages(n, devices)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(
        0
    )  # 0 = unlimited; paho rescans its queue on every PUBACK otherwise
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.time()
    infos: list[Any] = []
    for k, (topic, payload) in enumerate(payloads):
        if k >= PUBLISH_WINDOW:  # packet ids wrap at 65535: never reuse one still in flight
            infos[k - PUBLISH_WINDOW].wait_for_publish(timeout=IDLE_TIMEOUT_S * 4)
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(timeout=IDLE_TIMEOUT_S * 4)
    t1 = time.time()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"t_first_publish": t0, "t_all_published": t1}), flush=True)


def role_bare(port: int, n: int, *, drain: bool = False) -> None:
    """Count messages with paho's network thread, QoS 1, persistent session, auto-ack.

    ``drain``: subscribe, disconnect, wait for "go" on stdin (the broker queues everything for the
    session meanwhile), then reconnect and count: the subscriber's capacity, publisher excluded.
    """
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done, subscribed = threading.Event(), threading.Event()
    state = {"count": 0, "t_last": 0.0, "cpu0": 0.0, "t_start": 0.0}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe("+/events/rpc", qos=1)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        state["count"] += 1
        if state["count"] >= n:
            state["t_last"] = time.time()
            done.set()

    def connect() -> Any:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False
        )
        client.on_connect = on_connect
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client

    client = connect()
    subscribed.wait(IDLE_TIMEOUT_S)
    if drain:
        client.disconnect()
        client.loop_stop()
        print("ready", flush=True)
        sys.stdin.readline()
        state["cpu0"], state["t_start"] = time.process_time(), time.time()
        client = connect()
    else:
        state["cpu0"] = time.process_time()
        print("ready", flush=True)
    _wait_or_idle(done, lambda: state["count"])
    client.disconnect()
    client.loop_stop()
    state["cpu_s"] = time.process_time() - state["cpu0"]
    state["received"] = state.pop("count")
    state["t_last"] = state["t_last"] or time.time()
    print(json.dumps(state))


def role_bare_asyncio(port: int, n: int) -> None:
    """The same counting subscriber, with paho driven by the asyncio loop (no network thread)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        subscribed: asyncio.Future[None] = loop.create_future()
        state = {"count": 0, "t_last": 0.0, "cpu0": 0.0}
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-bare-asyncio", clean_session=False
        )

        def on_message(c: Any, u: Any, msg: Any) -> None:
            state["count"] += 1
            if state["count"] >= n and not done.done():
                state["t_last"] = time.time()
                done.set_result(None)

        def on_subscribe(*args: Any) -> None:
            if not subscribed.done():
                subscribed.set_result(None)

        client.on_connect = lambda c, u, f, r, p: c.subscribe("+/events/rpc", qos=1)
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.on_socket_open = lambda c, u, sock: loop.add_reader(sock, c.loop_read)
        client.on_socket_close = lambda c, u, sock: _forget(loop.remove_reader(sock))
        client.on_socket_register_write = lambda c, u, sock: loop.add_writer(sock, c.loop_write)
        client.on_socket_unregister_write = lambda c, u, sock: _forget(loop.remove_writer(sock))
        client.connect("127.0.0.1", port)

        async def misc() -> None:
            while client.loop_misc() == paho.MQTT_ERR_SUCCESS:
                await asyncio.sleep(1)

        async with asyncio.TaskGroup() as tg:
            misc_task = tg.create_task(misc())
            await subscribed
            state["cpu0"] = time.process_time()
            print("ready", flush=True)
            last, since = -1.0, time.monotonic()
            while not done.done():
                await asyncio.wait({done}, timeout=0.5)
                if state["count"] != last:
                    last, since = state["count"], time.monotonic()
                elif state["count"] and time.monotonic() - since > IDLE_TIMEOUT_S:
                    break
            misc_task.cancel()
        client.disconnect()
        return {
            "received": state["count"],
            "t_last": state["t_last"] or time.time(),
            "cpu_s": time.process_time() - state["cpu0"],
        }

    print(json.dumps(asyncio.run(main())))


def _forget(_: object) -> None:
    """Drop a return value (paho's socket callbacks must return None)."""


def role_aiomqtt(port: int, n: int) -> None:
    import aiomqtt

    async def main() -> dict[str, Any]:
        count, t_last, cpu0 = 0, 0.0, 0.0
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="bench-aiomqtt", clean_session=False
        ) as client:
            await client.subscribe("+/events/rpc", qos=1)
            cpu0 = time.process_time()
            print("ready", flush=True)
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S * 4):
                    async for _msg in client.messages:
                        count += 1
                        if count >= n:
                            t_last = time.time()
                            break
            except TimeoutError:
                t_last = time.time()
        return {"received": count, "t_last": t_last, "cpu_s": time.process_time() - cpu0}

    print(json.dumps(asyncio.run(main())))


def _wait_or_idle(done: Any, count: Any) -> None:
    last, since = -1, time.monotonic()
    while not done.wait(0.5):
        c = count()
        if c != last:
            last, since = c, time.monotonic()
        elif time.monotonic() - since > IDLE_TIMEOUT_S and c > 0:
            return


def role_kilowatch(port: int, n: int, devices: int, store_url: str, *, drain: bool = False) -> None:
    """Run kilowatch's serve() against the broker; report when the last message is stored.

    ``drain``: start once to create the session, stop, wait for "go" on stdin, start again.
    """
    from kilowatch.query.energy import EnergyQuery
    from kilowatch.service.config import load_settings
    from kilowatch.service.server import serve
    from kilowatch.store import open_store

    settings = load_settings(
        {
            "broker": f"mqtt://127.0.0.1:{port}",
            "store": store_url,
            "mqtt_client_id": "bench-kilowatch",
            "log_level": "WARNING",
        },
        env={},
    )
    result: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        # as under `kilowatch serve` with its web app: commits also keep the site zone's local days
        async with open_store(store_url) as store:
            await store.use_local_zone(LOCAL_ZONE, wait=True)

        async def watch(stats: Any) -> None:
            last, since = -1, time.monotonic()
            while stats.committed < n:
                await asyncio.sleep(0.002)
                if stats.committed != last:
                    last, since = stats.committed, time.monotonic()
                elif stats.committed and time.monotonic() - since > IDLE_TIMEOUT_S:
                    break
            result["t_last"] = time.time()
            result["cpu_s"] = time.process_time() - result["cpu0"]
            result["received"] = stats.committed
            result["batches"] = stats.batches
            result["dead_letters"] = sum(stats.dead_letters.values())
            stop.set()

        watcher: list[asyncio.Task[None]] = []

        def ready(running: Any) -> None:
            result["cpu0"] = time.process_time()
            print("ready", flush=True)
            watcher.append(asyncio.get_running_loop().create_task(watch(running.stats)))

        def drained(_: list[Any]) -> Any:
            def on_ready(running: Any) -> None:
                watcher.append(asyncio.get_running_loop().create_task(watch(running.stats)))

            return on_ready

        if drain:
            first_stop = asyncio.Event()
            await serve(settings, first_stop, on_ready=lambda r: first_stop.set(), web=None)
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            result["t_start"] = time.time()
            result["cpu0"] = time.process_time()
            stats: list[Any] = []
            await serve(settings, stop, on_ready=drained(stats), web=None)
        else:
            await serve(settings, stop, on_ready=ready, web=None)
        await asyncio.gather(*watcher)
        day = datetime.fromtimestamp(START_TS, UTC)
        query = EnergyQuery(
            by="day", tz="UTC", start=day - timedelta(days=1), end=day + timedelta(days=3),
            group="total",
        )  # fmt: skip
        async with open_store(store_url) as store:
            rows = await store.energy(query)
        result["stored_energy_wh"] = round(sum(r.energy_wh for r in rows), 3)

    asyncio.run(main())
    result.pop("cpu0", None)
    print(json.dumps(result))


# -- orchestration --------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env=env,
    )


def _last_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench role failed (exit {proc.returncode}): {out[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_consumer(
    name: str, role_args: list[str], n: int, devices: int, *, drain: bool = False
) -> dict[str, Any]:
    from kilowatch.testing import MosquittoServer

    with MosquittoServer() as broker:
        extra = ["--drain"] if drain else []
        consumer = _spawn(
            "--role", *role_args, *extra, "--port", str(broker.port), "--messages", str(n)
        )
        assert consumer.stdout is not None
        line = consumer.stdout.readline()
        if line.strip() != "ready":
            consumer.kill()
            raise SystemExit(f"{name}: consumer did not start: {line!r}")
        try:
            publisher = _spawn(
                "--role", "publish", "--port", str(broker.port), "--messages", str(n),
                "--devices", str(devices),
            )  # fmt: skip
            pub = _last_json(publisher, timeout=600)
            if drain:
                assert consumer.stdin is not None
                consumer.stdin.write("go\n")
                consumer.stdin.flush()
            got = _last_json(consumer, timeout=600)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()
    elapsed = got["t_last"] - (got["t_start"] if drain else pub["t_first_publish"])
    received = int(got["received"])
    figures = {
        "received": received,
        "lost": n - received,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(received / elapsed, 1) if elapsed > 0 else 0.0,
        "publish_msg_per_s": round(n / (pub["t_all_published"] - pub["t_first_publish"]), 1),
    }
    figures["cpu_us_per_msg"] = round(got["cpu_s"] / max(received, 1) * 1e6, 1)
    for key in ("batches", "dead_letters", "stored_energy_wh"):
        if key in got:
            figures[key] = got[key]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite,redis")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument(
        "--drain",
        action="store_true",
        help="measure consumer capacity: publish everything while the consumer is away, then "
        "time how fast it drains its session (bare paho and kilowatch only)",
    )
    args = parser.parse_args()
    n, devices = args.messages, args.devices

    if args.role == "publish":
        role_publish(args.port, n, devices)
    elif args.role == "bare":
        role_bare(args.port, n, drain=args.drain)
    elif args.role == "bare-asyncio":
        role_bare_asyncio(args.port, n)
    elif args.role == "aiomqtt":
        role_aiomqtt(args.port, n)
    elif args.role == "kilowatch":
        role_kilowatch(args.port, n, devices, args.store, drain=args.drain)
    else:
        orchestrate(n, devices, args.stores, drain=args.drain)


def orchestrate(n: int, devices: int, stores: str, *, drain: bool = False) -> None:
    """Run every consumer in turn and print the figures; the last line is one JSON object."""
    mode = "drain" if drain else "live"
    results: dict[str, Any] = {"mode": mode, "messages": n, "devices": devices}
    truth = true_energy_wh(n, devices)
    results["true_energy_wh"] = truth
    print(f"{mode}: {n} NotifyStatus messages from {devices} devices through mosquitto")
    results["bare"] = run_consumer("bare", ["bare"], n, devices, drain=drain)
    print(f"bare paho subscriber (network thread): {results['bare']}")
    if not drain:
        results["bare_asyncio"] = run_consumer("bare-asyncio", ["bare-asyncio"], n, devices)
        print(f"bare paho subscriber (driven by asyncio): {results['bare_asyncio']}")
        try:
            import aiomqtt  # noqa: F401
        except ImportError:
            print("aiomqtt not installed: skipping the aiomqtt baseline")
        else:
            results["aiomqtt"] = run_consumer("aiomqtt", ["aiomqtt"], n, devices)
            print(f"bare aiomqtt subscriber: {results['aiomqtt']}")
    bare_rate = results["bare"]["msg_per_s"]
    bare_cpu = results["bare"]["cpu_us_per_msg"]
    with tempfile.TemporaryDirectory(prefix="kilowatch-bench-") as tmp:
        for store in stores.split(","):
            if store == "sqlite":
                role = ["kilowatch", "--store", f"sqlite:///{tmp}/bench.db"]
                figures = run_consumer("kilowatch-sqlite", role, n, devices, drain=drain)
            elif store == "redis":
                from kilowatch.testing import RedisServer

                with RedisServer() as redis:
                    role = ["kilowatch", "--store", redis.url]
                    figures = run_consumer("kilowatch-redis", role, n, devices, drain=drain)
            else:
                raise SystemExit(f"unknown store {store!r}")
            figures["energy_error_wh"] = round(figures.get("stored_energy_wh", 0.0) - truth, 3)
            results[f"kilowatch_{store}"] = figures
    for name, figures in results.items():
        if isinstance(figures, dict) and name != "bare":
            figures["ratio_to_bare"] = round(figures["msg_per_s"] / bare_rate, 3)
            figures["cpu_ratio_to_bare"] = round(bare_cpu / figures["cpu_us_per_msg"], 3)
            if name.startswith("kilowatch_"):
                print(f"kilowatch into {name.split('_')[1]}: {figures}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
