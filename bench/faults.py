"""Fault bench: a simulated fleet through kilowatch while mosquitto, Redis, SQLite or kilowatch
itself fail, and what the store holds afterwards against the simulator's exact truth (issue 9).

    PYTHONPATH=src python bench/faults.py                        # every fault, ~10 min on 2 cores
    PYTHONPATH=src python bench/faults.py --faults kill,sqlite-full --devices 20
    PYTHONPATH=src python bench/faults.py --quick                # a shorter smoke run

Each fault gets its own short run: a fresh mosquitto (persistence on), a fresh store, kilowatch
``serve`` (in this process, or as a ``kilowatch serve`` subprocess where the fault is a kill -9),
and a simulated fleet on an accelerated clock (Shelly Gen2/Gen3 of five models incl. a Pro 3EM,
plus a Gen1 plug and a Tasmota plug that kilowatch stamps on receipt). The fleet starts an hour
before day 1, the fault strikes during day 1, and the run goes on to the first midnight after the
fault has cleared, plus half an hour. Then kilowatch is given time to catch up (until the store
and the intake stop changing), is stopped, and the store is read:

- per Gen2 channel and whole UTC day the truth covers: |stored − truth| in Wh, worst of all
  device-days (goal ≤ 1 Wh);
- per Gen1/Tasmota plug (their slots are real time, so no day compares): the stored total against
  the rise of the counters they published (first to last, as a bench subscriber saw them);
- whether kilowatch kept running (its health as sampled during the run) or exited, and how.

The last line of output is one JSON object of every figure. bench/README.md has the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

from kilowatch.query.energy import EnergyQuery  # noqa: E402
from kilowatch.service import server as server_module  # noqa: E402
from kilowatch.service.config import Settings, load_settings  # noqa: E402
from kilowatch.service.server import Running, serve  # noqa: E402
from kilowatch.store import Store, open_store  # noqa: E402
from kilowatch.store.redis import RedisStore  # noqa: E402
from kilowatch.store.sqlite import SqliteStore  # noqa: E402
from kilowatch.testing import (  # noqa: E402
    MosquittoServer,
    RedisClusterServer,
    RedisServer,
    free_port,
)
from kilowatch.testing.faultproxy import FaultProxy  # noqa: E402
from kilowatch.testing.truth import (  # noqa: E402
    Truth,
    differences,
    read_truth,
    stored_days,
    truth_days,
)

DAY1 = datetime(2026, 3, 10, tzinfo=UTC)
"""The first compared day (fixed, so runs are reproducible: loads and MACs are seeded)."""
LEAD_S = 3600.0
"""The fleet starts an hour before day 1: each channel's first reading, its baseline, is earlier."""
TAIL_S = 1800.0
"""The fleet runs this long past the last compared midnight (its slot report closes the day)."""
FAULT_AT_H = 3.0
"""Hours into day 1 when the fault strikes (faults with several steps: one every STEP_H)."""
STEP_H = 1.0
MODELS = ("pm1", "switch", "plug", "3em", "em")
VENDORS = ("gen1", "tasmota")
GOAL_WH = 1.0
CONFIRM_SPEED = 20.0
"""At the end the clock slows to 20x for a few seconds: Gen1 (every 30 s) and Tasmota (every 60 s)
readings then arrive over 1 s apart, on time by rule 12 (docs/energy-accounting.md), so a rise
that was held because readings came faster than that is confirmed."""
QUIET_S = 3.0
"""kilowatch has caught up when the store and its intake have not changed for this long..."""
CATCH_UP_TIMEOUT_S = 180.0
"""... or, at the latest, after this long."""
COMMIT_STALL_S = 5.0
"""kilowatch's ``commit_stall_s`` here (default 30): health turns degraded within short faults."""
HEALTH_EVERY_S = 0.5
READY_TIMEOUT_S = 60.0
CUT_AFTER_BYTES = 1500
"""The proxy cuts the connection after this many more client bytes: inside a commit's EVALSHA."""
LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Timing:
    """Real-time lengths of the faults (``--quick`` shortens them) and the clock's speed."""

    speed: float = 1800.0
    pause_s: float = 60.0
    """Redis stopped (SIGSTOP) this long."""
    stall_s: float = 30.0
    """The proxies hold every byte this long (kilowatch's socket timeout is 30 s)."""
    full_s: float = 20.0
    """SQLite stays full this long after the first write failed."""
    redis_down_s: float = 10.0
    """Redis is down this long between the kill and the start: longer than redis-py's own
    retries, so the pipeline's retries and kilowatch's health are what is tried."""
    broker_down_s: float = 3.0
    """mosquitto is down this long between its stop and its start."""
    kilowatch_down_s: float = 3.0
    """kilowatch stays dead this long after each kill -9 (then ~2 s to start)."""
    kills: int = 3
    """kill -9 that many times (one every STEP_H hours of simulated time)."""
    confirm_s: float = 8.0
    """The last real seconds at CONFIRM_SPEED (see there)."""


QUICK = Timing(
    speed=7200.0, pause_s=6.0, stall_s=4.0, full_s=8.0, redis_down_s=3.0, broker_down_s=1.0,
    kilowatch_down_s=1.0, kills=1, confirm_s=6.0,
)  # fmt: skip


# -- servers ---------------------------------------------------------------------------------------


class PersistentMosquitto(MosquittoServer):
    """mosquitto with persistence on, its file in the server's temp dir: a restart keeps
    kilowatch's session and the QoS 1 messages queued for it."""

    def __init__(self) -> None:
        super().__init__()
        self.db = self.dir / "mosquitto.db"
        self.extra_config = (
            f"persistence true\npersistence_location {self.dir}/\npersistence_file {self.db.name}\n"
        )

    def restart(self, down_s: float) -> float:
        """Stop (SIGTERM: mosquitto writes its database), stay down ``down_s``, start again;
        returns the size of the database written at the stop."""
        self.stop()
        size = self.db.stat().st_size if self.db.exists() else 0
        time.sleep(down_s)
        self.start()
        return size


class DurableRedis(RedisServer):
    """redis-server with ``appendonly yes`` and ``appendfsync always`` (docs/storage.md,
    "Durability": what a commit kilowatch saw succeed survives a crash)."""

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [
            binary, "--port", str(self.port), "--bind", LOCAL, "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
        ]  # fmt: skip
        self._spawn(argv, self.port)

    def crash_and_restart(self, down_s: float) -> None:
        """SIGKILL (no shutdown, nothing saved but the AOF), ``down_s`` down, start again."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        time.sleep(down_s)
        self.start()


# -- kilowatch, in this process or as a subprocess ----------------------------------------------


@dataclass
class Health:
    """What kilowatch's health said during a run."""

    seen: dict[str, int] = field(default_factory=dict)
    """status → how many samples said so (``down``: nothing answered)."""
    reasons: list[str] = field(default_factory=list)
    """The distinct reasons given while degraded (at most five)."""

    def add(self, status: str, reasons: list[str]) -> None:
        self.seen[status] = self.seen.get(status, 0) + 1
        for reason in reasons:
            text = _no_digits(reason)
            if len(self.reasons) < 5 and all(_no_digits(r) != text for r in self.reasons):
                self.reasons.append(reason)


def _no_digits(text: str) -> str:
    return "".join("#" if c.isdigit() else c for c in text)


class InProcess:
    """``serve()`` on this event loop; ``store_factory`` replaces the store it opens (a Redis
    Cluster behind fault proxies needs ``client_options``: serve() only takes a URL)."""

    mode = "in-process"

    def __init__(self, settings: Settings, store_factory: Callable[[str], Store] | None) -> None:
        self.settings = settings
        self.store_factory = store_factory
        self.running: Running | None = None
        self.exit_message: str | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, tg: asyncio.TaskGroup) -> None:
        ready = asyncio.Event()

        def on_ready(running: Running) -> None:
            self.running = running
            ready.set()

        # serve() opens its store by URL, through this module global, once at its start
        names = vars(server_module)
        original = names["open_store"]
        if self.store_factory is not None:
            names["open_store"] = self.store_factory
        try:
            self._task = tg.create_task(self._serve(on_ready))
            await _until(lambda: ready.is_set() or self._task_done(), READY_TIMEOUT_S)
        finally:
            names["open_store"] = original
        if not ready.is_set():
            raise RuntimeError(f"kilowatch did not start: {self.exit_message}")

    async def _serve(self, on_ready: Callable[[Running], None]) -> None:
        try:
            await serve(self.settings, self._stop, on_ready=on_ready, web=None)
        except Exception as err:  # how it ended is one of the figures
            self.exit_message = f"{type(err).__name__}: {err}"

    def _task_done(self) -> bool:
        return self._task is not None and self._task.done()

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def abandon(self) -> None:
        """Nothing to do: the run's task group cancels serve() when the run fails."""

    async def health(self) -> tuple[str, list[str]]:
        if self.running is None or not self.alive():
            return "down", []
        h = self.running.health()
        return h.status, list(h.reasons)

    def activity(self) -> tuple[Any, ...]:
        """Changes while the intake receives or holds uncommitted batches."""
        if self.running is None:
            return ()
        stats = self.running.stats
        return (stats.received, stats.committed, len(stats.in_flight))

    def idle(self) -> bool:
        return self.running is None or not self.running.stats.in_flight

    def figures(self) -> dict[str, Any]:
        if self.running is None:
            return {}
        s = self.running.stats
        return {
            "received": s.received,
            "committed": s.committed,
            "batches": s.batches,
            "commit_failures": s.commit_failures,
            "dead_letters": sum(s.dead_letters.values()),
            "last_commit_error": s.last_error,
        }

    async def stop(self) -> str:
        """Stop gracefully; how it ended."""
        self._stop.set()
        if self._task is not None:
            await _until(self._task_done, self.settings.stop_timeout_s + 30)
        if self.exit_message:
            return f"exited: {self.exit_message}"
        return "stopped cleanly" if self._task_done() else "did not stop"


class Subprocess:
    """``kilowatch serve`` as a child process (the web app on a free port for its health)."""

    mode = "subprocess"

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.http_port = free_port()
        self.log_path = tmp / "kilowatch-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exit_codes: list[int] = []
        config = tmp / "empty.toml"
        config.write_text("")
        self.argv = [
            sys.executable, "-m", "kilowatch", "serve",
            "--broker", settings.broker, "--store", settings.store_url,
            "--data-dir", str(settings.data_dir), "--mqtt-client-id", settings.mqtt_client_id,
            "--http-port", str(self.http_port), "--tz", "UTC", "--log-level", "INFO",
            "--config", str(config),
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KILOWATCH_")}
        self.env["PYTHONPATH"] = str(SRC)
        self.env["KILOWATCH_COMMIT_STALL_S"] = str(settings.commit_stall_s)

    async def start(self, tg: asyncio.TaskGroup | None = None) -> None:
        self.starts += 1
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.to_thread(
                subprocess.Popen, self.argv, stdout=out, stderr=out, env=self.env
            )
        ok = await _until(
            lambda: self._ready_lines() >= self.starts or not self.alive(), READY_TIMEOUT_S
        )
        if not ok or not self.alive():
            raise RuntimeError(f"kilowatch serve did not start:\n{self.log_tail()}")

    def _ready_lines(self) -> int:
        return self.log_path.read_text(errors="replace").count("kilowatch ready")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def abandon(self) -> None:
        """Kill it if it still runs (the run failed before stopping it)."""
        if self.alive():
            self.kill9()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.exit_codes.append(self.proc.wait())

    async def terminate(self) -> tuple[int, str]:
        """SIGTERM (a graceful stop, as ``systemctl restart`` or a liveness probe sends it):
        its exit code and its last log line."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, 60)
        self.exit_codes.append(code)
        return code, self.log_tail(1)

    async def health(self) -> tuple[str, list[str]]:
        if not self.alive():
            return "down", []
        return await asyncio.to_thread(self._get_health)

    def _get_health(self) -> tuple[str, list[str]]:
        url = f"http://{LOCAL}:{self.http_port}/api/v1/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as err:  # 503: degraded or store unreachable
            body = json.loads(err.read() or b"{}")
        except OSError:
            return "down", []
        status = str(body.get("status", "?"))
        return status, [str(r) for r in body.get("reasons", [])]

    def activity(self) -> tuple[Any, ...]:
        return (self.log_path.stat().st_size,) if self.alive() else ()

    def idle(self) -> bool:
        return True

    def figures(self) -> dict[str, Any]:
        text = self.log_path.read_text(errors="replace")
        return {
            "starts": self.starts,
            "commit_failures": text.count("store commit failed"),
            "kill_exit_codes": self.exit_codes,
        }

    async def stop(self) -> str:
        if self.proc is None:
            return "never started"
        if not self.alive():
            return f"had exited with code {self.proc.returncode}: {self.log_tail(1)}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "did not stop within 60 s of SIGTERM: killed"
        return "stopped cleanly (exit 0)" if code == 0 else f"exit {code}: {self.log_tail(2)}"


Kilowatch = InProcess | Subprocess


async def _until(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Wait until ``predicate()`` holds (``True``) or ``timeout`` seconds passed (``False``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


# -- the counters the receipt-stamped plugs published ------------------------------------------


class CounterWatch:
    """A bench subscriber (paho, its own thread) that keeps the first and the last counter each
    Gen1 and Tasmota plug published, in Wh as kilowatch decodes them."""

    TOPICS = (("shellies/+/relay/0/energy", 1), ("tele/+/SENSOR", 1))

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.count = 0
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-faults-watch-{uuid.uuid4().hex[:6]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(list(self.TOPICS))
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)
        self._client.connect(LOCAL, port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        if parts[0] == "shellies":
            wh = int(msg.payload) / 60  # Watt-minutes
        else:
            wh = float(json.loads(msg.payload)["ENERGY"]["Total"]) * 1000  # kWh
        with self._lock:
            self.count += 1
            self.first.setdefault(parts[1], wh)
            self.last[parts[1]] = wh

    def rises(self) -> dict[str, float]:
        with self._lock:
            return {d: self.last[d] - self.first[d] for d in self.first}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One fault's run: its servers, its kilowatch, its fleet, and the figures it gathers."""

    name: str
    timing: Timing
    tmp: Path
    broker: PersistentMosquitto
    read_url: str
    """Where the bench reads the store (the servers themselves, never through a proxy)."""
    kilowatch: Kilowatch
    fleet: Any = None
    redis: DurableRedis | None = None
    proxies: list[FaultProxy] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    health: Health = field(default_factory=Health)

    def at(self, hours: float) -> float:
        """Simulated unix time ``hours`` into day 1."""
        return DAY1.timestamp() + hours * 3600


FaultFn = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    name: str
    store: str
    """``sqlite``, ``redis`` (AOF, fsync always), ``redis-proxy`` (the same through a fault
    proxy), ``cluster`` (three masters) or ``cluster-proxy`` (a fault proxy in front of each)."""
    mode: str
    """``in-process`` or ``subprocess``."""
    what: str
    act: FaultFn
    default: bool = True
    """Part of the default run (else only when named in ``--faults``)."""


# -- the faults ------------------------------------------------------------------------------------


async def restart_mosquitto(run: Run) -> None:
    await run.fleet.wait_until(run.at(FAULT_AT_H))
    t0 = time.monotonic()
    size = await asyncio.to_thread(run.broker.restart, run.timing.broker_down_s)
    run.notes["mosquitto_down_s"] = round(time.monotonic() - t0, 2)
    run.notes["persistence_file_bytes"] = size


async def restart_redis(run: Run) -> None:
    assert run.redis is not None
    await run.fleet.wait_until(run.at(FAULT_AT_H))
    t0 = time.monotonic()
    await asyncio.to_thread(run.redis.crash_and_restart, run.timing.redis_down_s)
    run.notes["aof_bytes"] = sum(f.stat().st_size for f in run.redis.dir.rglob("*.aof"))
    run.notes["redis_down_s"] = round(time.monotonic() - t0, 2)


async def pause_redis(run: Run) -> None:
    assert run.redis is not None and run.redis.proc is not None
    await run.fleet.wait_until(run.at(FAULT_AT_H))
    pid = run.redis.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(run.timing.pause_s)
        run.notes["health_at_end_of_pause"] = (await run.kilowatch.health())[0]
    finally:
        os.kill(pid, signal.SIGCONT)
    run.notes["paused_s"] = run.timing.pause_s


async def kill_kilowatch(run: Run) -> None:
    k = run.kilowatch
    assert isinstance(k, Subprocess)
    downs = []
    for i in range(run.timing.kills):
        await run.fleet.wait_until(run.at(FAULT_AT_H + i * STEP_H))
        k.kill9()
        t0 = time.monotonic()
        await asyncio.sleep(run.timing.kilowatch_down_s)
        await k.start()
        downs.append(round(time.monotonic() - t0, 2))
    run.notes["down_until_ready_s"] = downs


async def kill_during_stall(run: Run) -> None:
    """kill -9 while a commit is held in a stalled network, see :func:`_restart_during_stall`."""
    await _restart_during_stall(run, graceful=False)


async def stop_during_stall(run: Run) -> None:
    """A graceful stop (SIGTERM) while a commit is held, see :func:`_restart_during_stall`."""
    await _restart_during_stall(run, graceful=True)


async def _restart_during_stall(run: Run, *, graceful: bool) -> None:
    """The proxy stalls kilowatch's open connections to Redis, as a network that stops moving
    would (its TCP segments wait in a retransmission queue); once a commit is held, kilowatch
    is stopped and started again, and its new connections pass; when the stall ends, the old
    process's commit reaches Redis, after the new process committed the redelivered messages.

    A commit is held as soon as the stall begins, and after an idle moment the first one holds
    the first message of the fleet's next tick: the first device's. So the stall starts while
    that device draws power (its message then carries energy)."""
    k = run.kilowatch
    assert isinstance(k, Subprocess)
    proxy = run.proxies[0]
    first = run.fleet.devices[0].meters()[0]
    await run.fleet.wait_until(run.at(FAULT_AT_H))
    while first.sample().power_w < 100:
        await run.fleet.wait_until(run.fleet.clock.now() + 300)
    proxy.stall(run.timing.stall_s, new_connections=False)
    t0 = time.monotonic()
    run.notes["commit_held"] = await _until(lambda: proxy.held > 0, 20)
    if graceful:
        code, last = await k.terminate()
        run.notes["stop_exit"] = f"exit {code}: {last}"
    else:
        k.kill9()
    await asyncio.sleep(run.timing.kilowatch_down_s)
    await k.start()
    await asyncio.sleep(max(0.0, run.timing.stall_s - (time.monotonic() - t0)))
    await proxy.settled()
    run.notes["stalled_s"] = round(time.monotonic() - t0, 1)


async def fill_sqlite(run: Run) -> None:
    """SQLite refuses to grow past ``max_page_count``: writes fail with "database or disk is
    full" as on a full disk. The pragma belongs to a connection (it is not stored in the file),
    so it is set on kilowatch's own writer connection, through its job queue."""
    k = run.kilowatch
    assert isinstance(k, InProcess) and k.running is not None
    store = k.running.store
    assert isinstance(store, SqliteStore)
    await run.fleet.wait_until(run.at(FAULT_AT_H))
    stats = k.running.stats

    def pragma(value: int | None) -> Callable[[Any], int]:
        sql = "PRAGMA max_page_count" + ("" if value is None else f" = {value}")
        return lambda conn: int(conn.execute(sql).fetchone()[0])

    limit = await store._writer.run(pragma(None))
    failures = stats.commit_failures
    run.notes["max_page_count_set_to"] = await store._writer.run(pragma(1))  # clamped: page_count
    run.notes["writes_failed"] = await _until(lambda: stats.commit_failures > failures, 60)
    await asyncio.sleep(run.timing.full_s)
    run.notes["health_while_full"] = await run.kilowatch.health()
    run.notes["last_error_while_full"] = stats.last_error
    batches = stats.batches
    await store._writer.run(pragma(limit))
    t0 = time.monotonic()
    run.notes["resumed"] = await _until(lambda: stats.batches > batches, 60)
    run.notes["resumed_after_s"] = round(time.monotonic() - t0, 2)


async def proxy_faults(run: Run) -> None:
    """On every proxy (one per Redis node): the reply to the next EVALSHA lost after it ran;
    the connection cut after CUT_AFTER_BYTES more bytes; everything stalled for a while."""

    def drop(p: FaultProxy) -> None:
        p.drop_reply("EVALSHA")

    def cut(p: FaultProxy) -> None:
        p.cut_after(CUT_AFTER_BYTES)

    def stall(p: FaultProxy) -> None:
        p.stall(run.timing.stall_s)

    steps = [("drop_evalsha_reply", drop), ("cut_mid_stream", cut), ("stall", stall)]
    for i, (name, arm) in enumerate(steps):
        await run.fleet.wait_until(run.at(FAULT_AT_H + i * STEP_H))
        before = [p.fired for p in run.proxies]
        for proxy in run.proxies:
            arm(proxy)
        if name == "stall":
            await asyncio.sleep(run.timing.stall_s)
            for proxy in run.proxies:
                await proxy.settled()
            fired = len(run.proxies)
        else:
            await _until(_fired_everywhere(run.proxies, before), 60)
            fired = sum(p.fired - n for p, n in zip(run.proxies, before, strict=True))
            for proxy in run.proxies:
                proxy.heal()
        run.notes[f"{name}_fired"] = fired


def _fired_everywhere(proxies: list[FaultProxy], before: list[int]) -> Callable[[], bool]:
    """Whether every proxy fired since ``before`` (their counts then)."""
    return lambda: all(p.fired > n for p, n in zip(proxies, before, strict=True))


FAULTS = {
    f.name: f
    for f in (
        Fault("mosquitto", "sqlite", "in-process", "restart mosquitto (persistence on)",
              restart_mosquitto),
        Fault("redis-restart", "redis", "in-process",
              "kill -9 redis-server (appendonly yes, appendfsync always) and start it again",
              restart_redis),
        Fault("redis-pause", "redis", "in-process", "SIGSTOP redis-server, then SIGCONT",
              pause_redis),
        Fault("kill", "sqlite", "subprocess", "kill -9 kilowatch serve and start it again",
              kill_kilowatch),
        Fault("sqlite-full", "sqlite", "in-process",
              "fill SQLite (max_page_count) until writes fail, then free it", fill_sqlite),
        Fault("redis-proxy", "redis-proxy", "in-process",
              "proxy to redis-server: EVALSHA reply lost, cut mid-stream, stall", proxy_faults),
        Fault("cluster-proxy", "cluster-proxy", "in-process",
              "proxies to a 3-node Redis Cluster: EVALSHA replies lost, cuts, stall",
              proxy_faults),
        Fault("kill-late", "redis-proxy", "subprocess",
              "kill -9 kilowatch while a proxy stalls its commit to Redis, start it again",
              kill_during_stall),
        # not in the default run:
        Fault("stop-late", "redis-proxy", "subprocess",
              "SIGTERM kilowatch while a proxy stalls its commit to Redis, start it again",
              stop_during_stall, default=False),
        Fault("kill-redis", "redis", "subprocess",
              "kill -9 kilowatch serve (Redis) and start it again", kill_kilowatch,
              default=False),
        Fault("kill-cluster", "cluster", "subprocess",
              "kill -9 kilowatch serve (Redis Cluster) and start it again", kill_kilowatch,
              default=False),
    )
}  # fmt: skip


# -- running one fault -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def backend(
    fault: Fault, tmp: Path
) -> AsyncIterator[tuple[str, str, Callable[[str], Store] | None, Any]]:
    """The store of one run: ``(url kilowatch writes to, url the bench reads, store factory,
    handle)``; the handle is the DurableRedis or the list of proxies."""
    if fault.store == "sqlite":
        url = f"sqlite:///{tmp / 'kilowatch.db'}"
        yield url, url, None, None
    elif fault.store == "redis":
        with DurableRedis() as redis:
            yield redis.url, redis.url, None, redis
    elif fault.store == "redis-proxy":
        with DurableRedis() as redis:
            async with FaultProxy((LOCAL, redis.port)) as proxy:
                yield f"redis://{LOCAL}:{proxy.port}/0", redis.url, None, [proxy]
    elif fault.store == "cluster":
        with RedisClusterServer() as cluster:
            yield cluster.url, cluster.url, None, None
    else:
        with RedisClusterServer() as cluster:
            ports = [n.port for n in cluster.nodes]
            async with contextlib.AsyncExitStack() as stack:
                proxies = [await stack.enter_async_context(FaultProxy((LOCAL, p))) for p in ports]
                remap = {(LOCAL, p): x.address for p, x in zip(ports, proxies, strict=True)}
                url = "redis://" + ",".join(f"{LOCAL}:{x.port}" for x in proxies) + "/0"

                def factory(store_url: str) -> Store:
                    # a node announces its own port: address_remap sends redis-py to its proxy
                    options = {"address_remap": lambda a: remap.get(a, a)}
                    return RedisStore(store_url, client_options=options)

                yield url, cluster.url, factory, proxies


def settings_for(broker: MosquittoServer, store_url: str, tmp: Path) -> Settings:
    config = tmp / "empty.toml"
    config.write_text("")
    return load_settings(
        {
            "broker": broker.url,
            "store": store_url,
            "data_dir": str(tmp),
            "mqtt_client_id": f"kilowatch-faults-{uuid.uuid4().hex[:8]}",
            "tz": "UTC",
            "commit_stall_s": COMMIT_STALL_S,
            "log_level": "INFO",
        },
        config_file=config,
        env={},
    )


async def run_fault(
    fault: Fault, devices: int, timing: Timing, seed: int, keep: bool
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"kilowatch-faults-{fault.name}-"))
    handler = _log_to(tmp / "kilowatch.log")
    t0 = time.monotonic()
    try:
        with PersistentMosquitto() as broker:
            async with backend(fault, tmp) as (store_url, read_url, factory, handle):
                settings = settings_for(broker, store_url, tmp)
                kilowatch: Kilowatch = (
                    Subprocess(settings, tmp)
                    if fault.mode == "subprocess"
                    else InProcess(settings, factory)
                )
                run = Run(fault.name, timing, tmp, broker, read_url, kilowatch)
                run.redis = handle if isinstance(handle, DurableRedis) else None
                run.proxies = handle if isinstance(handle, list) else []
                figures = await _drive(run, fault, devices, seed)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    figures["seconds"] = round(time.monotonic() - t0, 1)
    if keep:
        figures["artefacts"] = str(tmp)
    return figures


def _log_to(path: Path) -> logging.Handler:
    """kilowatch's logs of an in-process run go to a file (they are many while a store fails)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


async def _drive(run: Run, fault: Fault, devices: int, seed: int) -> dict[str, Any]:
    from shellysim import Fleet

    watch = await asyncio.to_thread(CounterWatch, run.broker.port)
    truth_path = run.tmp / "truth.json"
    real_start = datetime.now(UTC)
    try:
        async with asyncio.TaskGroup() as tg:
            await run.kilowatch.start(tg)
            await asyncio.sleep(1.0)  # its SUBSCRIBE reaches mosquitto before the first publish
            sampler = tg.create_task(_sample_health(run))
            fleet = Fleet(
                devices=devices, models=MODELS, vendors=VENDORS, broker=run.broker.url,
                speed=run.timing.speed, start=DAY1.timestamp() - LEAD_S, seed=seed, http=False,
                engine=None, truth_path=truth_path,
            )  # fmt: skip
            async with fleet:
                run.fleet = fleet
                await fleet.wait_connected(timeout=30)
                await fault.act(run)
                end = _next_midnight(fleet.clock.now() + 3600)
                await fleet.wait_until(end + TAIL_S)
                fleet.clock.set_speed(CONFIRM_SPEED)
                await asyncio.sleep(run.timing.confirm_s)
                gen2 = tuple(d.id for d in fleet.devices)
                plugs = tuple(p.id for p in fleet.publishers)
            caught_up = await _catch_up(run)
            kept_running = run.kilowatch.alive()
            sampler.cancel()
            ended = await run.kilowatch.stop()
    finally:
        watch.close()
        run.kilowatch.abandon()
    figures: dict[str, Any] = {
        "fault": fault.what,
        "store": fault.store,
        "kilowatch": fault.mode,
        "kept_running": kept_running,
        "ended": ended,
        "caught_up": caught_up,
        "health_seen": run.health.seen,
        "degraded_reasons": run.health.reasons,
        **run.notes,
        **run.kilowatch.figures(),
    }
    days = (datetime.fromtimestamp(end, UTC) - DAY1).days
    figures.update(await _compare(run, truth_path, gen2, days))
    figures.update(await _compare_plugs(run, watch, plugs, real_start))
    return figures


def _next_midnight(ts: float) -> float:
    return (ts // 86_400 + 1) * 86_400


async def _sample_health(run: Run) -> None:
    while True:
        status, reasons = await run.kilowatch.health()
        run.health.add(status, reasons)
        await asyncio.sleep(HEALTH_EVERY_S)


async def _catch_up(run: Run) -> bool:
    """Wait until the store's totals and kilowatch's intake have not changed for QUIET_S and no
    batch is in flight (bounded by CATCH_UP_TIMEOUT_S); ``False`` if that never happened."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    last: tuple[Any, ...] = ()
    since = time.monotonic()
    async with open_store(run.read_url) as store:
        while time.monotonic() < deadline:
            now = (await _signature(store), run.kilowatch.activity())
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= QUIET_S and run.kilowatch.idle():
                return True
            await asyncio.sleep(0.25)
    return False


async def _signature(store: Store) -> tuple[Any, ...]:
    query = EnergyQuery(
        by="month", tz="UTC", start=DAY1 - timedelta(days=40),
        end=datetime.now(UTC) + timedelta(days=40), group="total",
    )  # fmt: skip
    return tuple((r.start, r.energy_wh, r.returned_energy_wh) for r in await store.energy(query))


async def _compare(run: Run, truth_path: Path, gen2: tuple[str, ...], days: int) -> dict[str, Any]:
    """Worst |stored − truth| over every Gen2 channel and whole day of the run; for a device-day
    over the goal, the 15-minute slots that differ most."""
    end = DAY1 + timedelta(days=days)
    truth = read_truth(truth_path)
    expected = truth_days({d: truth[d] for d in gen2 if d in truth}, DAY1, end)
    async with open_store(run.read_url) as store:
        stored = await stored_days(store, DAY1, end, devices=gen2)
        worst, where, bad = 0.0, "", list[str]()
        channels = set()
        for k in range(days):
            day = DAY1 + timedelta(days=k)
            for key, diff in differences(expected.get(day, {}), stored.get(day, {})).items():
                channels.add(key)
                for d, kind in zip(diff, ("import", "export"), strict=True):
                    if abs(d) > worst:
                        worst, where = abs(d), f"{key[0]} {key[1]} {day:%Y-%m-%d} {kind}"
                    if abs(d) > GOAL_WH and len(bad) < 10:
                        slots = await _slot_differences(store, truth, key, day)
                        bad.append(
                            f"{key[0]} {key[1]} {day:%Y-%m-%d} {kind}: stored − truth {d:+.3f} Wh;"
                            f" slots (UTC, stored − truth): {slots}"
                        )
    truth_wh = sum(v[0] + v[1] for c in expected.values() for v in c.values())
    return {
        "days": days,
        "channels": len(channels),
        "truth_wh": round(truth_wh, 3),
        "worst_wh": round(worst, 3),
        "worst_at": where,
        "over_goal": bad,
    }


async def _slot_differences(
    store: Store, truth: Truth, key: tuple[str, str], day: datetime, most: int = 4
) -> str:
    """The ``most`` slots of ``key`` on ``day`` whose import differs most from the truth."""
    device, channel = key
    query = EnergyQuery(
        by="15min", tz="UTC", start=day, end=day + timedelta(days=1), devices=(device,),
        channels=(channel,),
    )  # fmt: skip
    stored = {int(r.start.timestamp()): r.energy_wh for r in await store.energy(query)}
    slots = {int(t): v[0] for t, v in truth.get(device, {}).get(channel, {}).items()}
    diffs = [(stored.get(t, 0.0) - slots.get(t, 0.0), t) for t in set(stored) | set(slots)]
    diffs = [(d, t) for d, t in diffs if day.timestamp() <= t < day.timestamp() + 86_400]
    diffs.sort(key=lambda x: -abs(x[0]))
    return ", ".join(f"{datetime.fromtimestamp(t, UTC):%H:%M} {d:+.3f} Wh" for d, t in diffs[:most])


async def _compare_plugs(
    run: Run, watch: CounterWatch, plugs: tuple[str, ...], real_start: datetime
) -> dict[str, Any]:
    """Gen1 and Tasmota: the stored total against the counters' published rise."""
    day0 = real_start.replace(hour=0, minute=0, second=0, microsecond=0)
    query = EnergyQuery(
        by="day", tz="UTC", start=day0 - timedelta(days=1), end=day0 + timedelta(days=3),
        devices=plugs,
    )  # fmt: skip
    async with open_store(run.read_url) as store:
        rows = await store.energy(query)
    stored: dict[str, float] = {}
    for r in rows:
        stored[str(r.device)] = stored.get(str(r.device), 0.0) + r.energy_wh
    rises = watch.rises()
    errors = {p: round(stored.get(p, 0.0) - rises.get(p, 0.0), 3) for p in plugs}
    return {
        "plugs_rise_wh": {p: round(rises.get(p, 0.0), 3) for p in plugs},
        "plugs_stored_minus_rise_wh": errors,
        "plugs_worst_wh": max((abs(e) for e in errors.values()), default=0.0),
    }


# -- output ----------------------------------------------------------------------------------------


def report(name: str, f: dict[str, Any]) -> None:
    ok = f["worst_wh"] <= GOAL_WH and f["plugs_worst_wh"] <= GOAL_WH
    verdict = "within" if ok else "MISSED"
    health = ", ".join(f"{s} ×{n}" for s, n in f["health_seen"].items())
    print(f"{name}: {f['fault']} ({f['store']}, kilowatch {f['kilowatch']}, {f['seconds']} s)")
    print(
        f"  worst |stored − truth| per device-day: {f['worst_wh']:.3f} Wh over {f['channels']} "
        f"channels × {f['days']} day(s), {f['truth_wh']:.0f} Wh in all ({f['worst_at']}); "
        f"Gen1/Tasmota stored − counter rise: {f['plugs_stored_minus_rise_wh']} — goal ≤ "
        f"{GOAL_WH:g} Wh {verdict}"
    )
    print(
        f"  kilowatch: {'kept running' if f['kept_running'] else 'NOT running at the end'}, "
        f"{f['ended']}; health samples: {health}; caught up: {f['caught_up']}"
    )
    for reason in f["degraded_reasons"][:2]:
        print(f"  degraded: {reason}")
    extra = {k: v for k, v in f.items() if k not in _SHOWN}
    print(f"  {json.dumps(extra, default=str)}")
    for line in f["over_goal"][:10]:
        print(f"  over goal: {line}")


_SHOWN = {
    "fault", "store", "kilowatch", "seconds", "worst_wh", "channels", "days", "truth_wh",
    "worst_at", "plugs_stored_minus_rise_wh", "kept_running", "ended", "health_seen",
    "caught_up", "degraded_reasons", "over_goal",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--faults", default=",".join(n for n, f in FAULTS.items() if f.default),
        help="comma-separated, from: " + ", ".join(FAULTS) + " (default: all but the last three)",
    )  # fmt: skip
    parser.add_argument("--devices", type=int, default=None, help="Gen2 devices (default 20; 10 "
                        "with --quick), plus one Gen1 and one Tasmota plug")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="faster clock, short faults")
    parser.add_argument("--speed", type=float, help="simulated seconds per real second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep each run's logs and store")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.faults.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    timing = QUICK if args.quick else Timing()
    if args.speed:
        timing = dataclasses.replace(timing, speed=args.speed)
    devices = args.devices or (10 if args.quick else 20)
    return asyncio.run(_main(names, devices, timing, args.seed, args.keep, args.quick))


async def _main(
    names: list[str], devices: int, timing: Timing, seed: int, keep: bool, quick: bool
) -> int:
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    print(
        f"{devices} Gen2 devices ({', '.join(MODELS)}) + Gen1 + Tasmota at {timing.speed:g}x, "
        f"faults: {', '.join(names)}"
    )
    failed: dict[str, str] = {}
    for name in names:
        try:
            results[name] = await run_fault(FAULTS[name], devices, timing, seed, keep)
        except Exception as err:  # one broken run must not cost the other faults' figures
            failed[name] = f"{type(err).__name__}: {err}"
            print(f"{name}: the bench itself failed: {failed[name]}")
            continue
        report(name, results[name])
    worst = max((f["worst_wh"] for f in results.values()), default=0.0)
    plugs = max((f["plugs_worst_wh"] for f in results.values()), default=0.0)
    summary = {
        "devices": devices,
        "speed": timing.speed,
        "quick": quick,
        "goal_wh": GOAL_WH,
        "worst_wh": worst,
        "plugs_worst_wh": plugs,
        "all_kept_running": all(f["kept_running"] for f in results.values()),
        "seconds": round(time.monotonic() - t0, 1),
        "faults": results,
        "bench_failures": failed,
    }
    print(json.dumps(summary, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
