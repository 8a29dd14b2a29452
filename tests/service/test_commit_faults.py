"""Issue 9: one message, or a failing store, must never stall ingestion for good, nor hide it.

Real servers throughout: mosquitto, a real SQLite file or redis-server with real faults (a SQLite
file locked by another connection, a Redis out of memory, a Redis paused with SIGSTOP), the web
app on a real port, ``kilowatch serve`` as a subprocess for the signals.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from svchelpers import Publisher, ServeProcess, forget_session, poll, running_service, unique

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import Role
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import Settings
from kilowatch.service.server import Running
from kilowatch.store import Store, open_store
from kilowatch.testing import MosquittoServer, RedisServer
from kilowatch.web.app import start_web

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
STOP_BOUND_S = 10.0
"""A stop must end within this even while the store fails (the issue saw more than 40 s)."""


def frame(device: str, method: str, ts: float, params: dict[str, Any]) -> tuple[str, Any]:
    body = {"src": device, "dst": f"{device}/events", "method": method,
            "params": {"ts": ts, **params}}  # fmt: skip
    return f"{device}/events/rpc", body


def stream(device: str, n: int, *, first: int = 0) -> list[tuple[str, Any]]:
    """A PM Mini G3 at 60 W reporting every minute: 1 Wh per message after the first."""
    meter = [(k, {"pm1:0": {"id": 0, "apower": 60.0, "aenergy": {"total": 100.0 + k}}})
             for k in range(first, first + n)]  # fmt: skip
    return [frame(device, "NotifyStatus", T0 + 60 * k, params) for k, params in meter]


def deep_event(device: str, levels: int = 253) -> tuple[str, Any]:
    """The issue's message: a NotifyEvent whose event data nests ``levels`` deep."""
    data: dict[str, Any] = {}
    for _ in range(levels):
        data = {"a": data}
    event = {"component": "script:1", "id": 1, "event": "deep", "data": data, "ts": T0 + 90}
    return frame(device, "NotifyEvent", T0 + 90, {"events": [event]})


async def stored_wh(store: Store | str, device: str) -> float:
    query = EnergyQuery(
        by="day", tz="UTC", start=datetime(2025, 12, 31, tzinfo=UTC),
        end=datetime(2026, 1, 3, tzinfo=UTC), devices=(device,), group="device",
    )  # fmt: skip
    if isinstance(store, str):
        async with open_store(store) as s:
            return sum(r.energy_wh for r in await s.energy(query))
    return sum(r.energy_wh for r in await store.energy(query))


class Web:
    """Starts the web app with the service (as ``kilowatch serve`` does) and talks to it."""

    def __init__(self) -> None:
        self.port = 0
        self.token = ""

    async def start(self, tg: Any, running: Running, stop: Any) -> None:
        self.port = await start_web(tg, running, stop)

    async def login(self, running: Running) -> None:
        """A viewer token for /metrics (the web app creates the admin before it answers)."""
        await poll(self._answers, what="the web app")
        self.token = await create_token(
            running.store, "admin", role=Role.VIEWER, name="test", now=time.time()
        )

    async def _answers(self) -> bool:
        try:
            await self.get("/api/v1/health")
        except httpx.TransportError:
            return False
        return True

    async def get(self, path: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            return await client.get(path, headers=headers, timeout=10)

    async def health(self) -> dict[str, Any]:
        r = await self.get("/api/v1/health")
        body: dict[str, Any] = r.json()
        assert r.status_code == (200 if body["status"] == "ok" else 503), body
        return body

    async def metric(self, line_start: str) -> float:
        r = await self.get("/metrics")
        assert r.status_code == 200, r.text
        for line in r.text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {line_start} in /metrics:\n{r.text}")


@pytest.fixture
def mosquitto() -> Iterator[MosquittoServer]:
    """A broker of this test's own: these tests count every message kilowatch receives and
    commits, so nothing another test left on the worker's shared broker (retained ``online``
    messages, a lingering session) may reach them."""
    with MosquittoServer() as server:
        yield server


@pytest.fixture
def paused_redis() -> Iterator[RedisServer]:
    """A redis-server of its own (these tests break it on purpose), resumed and healed after."""
    with RedisServer() as server:
        try:
            yield server
        finally:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGCONT)
            heal(server)


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)


def fill_up(server: RedisServer) -> None:
    """Redis out of memory: every write is refused (``OOM command not allowed``), reads work."""
    with client(server) as c:
        c.config_set("maxmemory-policy", "noeviction")
        c.config_set("maxmemory", "1")


def heal(server: RedisServer) -> None:
    with client(server) as c:
        c.config_set("maxmemory", "0")


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/faults.db"
    url: str = request.getfixturevalue("redis_url")
    return url


# -- (a) a message no store can hold ----------------------------------------------------------


async def test_a_message_no_store_can_hold_is_set_aside_and_the_rest_is_stored(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], store_url: str
) -> None:
    settings = settings_for(mosquitto.url, store_url, http_port=0, commit_stall_s=1)
    device = unique("shellypmminig3-deep")
    web = Web()
    pub = Publisher(mosquitto.port)
    try:
        async with running_service(settings, web=web.start) as running:
            readings = stream(device, 6)
            pub.publish_many([*readings[:3], deep_event(device), *readings[3:]])
            await poll(lambda: running.stats.committed >= 7, what="all 7 messages committed")
            assert await stored_wh(running.store, device) == 5.0  # before and after: all of it
            [letter] = await running.store.dead_letters(10)
            # The decoders refuse JSON nested deeper than they read (too_deeply_nested); behind
            # them, the pipeline sets aside what the stores' encoder refuses (unstorable).
            assert letter.reason in {"too_deeply_nested", "unstorable"}
            assert letter.topic == f"{device}/events/rpc" and letter.detail
            assert running.stats.commit_failures == 0  # never a failed commit, never a retry
            # the next message is not held up either
            pub.publish_many(stream(device, 1, first=6))
            await poll(lambda: running.stats.committed >= 8, what="the message after")
            assert await stored_wh(running.store, device) == 6.0
            health = await web.health()
            assert (health["status"], health["ingest"]) == ("ok", "ok")
    finally:
        pub.close()
        forget_session(mosquitto.port, settings.mqtt_client_id)


# -- (b) a store that fails for a while -------------------------------------------------------


async def test_redis_out_of_memory_is_degraded_health_then_everything_once(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], paused_redis: RedisServer
) -> None:
    settings = settings_for(mosquitto.url, paused_redis.url, http_port=0, commit_stall_s=1)
    await _fail_then_heal(
        mosquitto, settings,
        break_store=lambda: fill_up(paused_redis), mend_store=lambda: heal(paused_redis),
        reason="command not allowed when used memory > 'maxmemory'",
    )  # fmt: skip


async def test_a_sqlite_file_locked_by_another_process_is_degraded_health_then_everything_once(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """Another connection holds the write lock: each commit waits out SQLite's 10 s lock wait,
    then fails as 'database is locked'; reads go on (WAL)."""
    path = tmp_path / "locked.db"
    settings = settings_for(mosquitto.url, f"sqlite:///{path}", http_port=0, commit_stall_s=1)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await _fail_then_heal(
            mosquitto, settings,
            break_store=lambda: other.execute("BEGIN EXCLUSIVE"),
            mend_store=lambda: other.execute("ROLLBACK"),
            reason="the oldest uncommitted batch has waited",
        )  # fmt: skip
    finally:
        other.close()


async def _fail_then_heal(
    mosquitto: MosquittoServer,
    settings: Settings,
    *,
    break_store: Callable[[], object],
    mend_store: Callable[[], object],
    reason: str,
) -> None:
    device = unique("shellypmminig3-fault")
    web = Web()
    pub = Publisher(mosquitto.port)
    try:
        async with running_service(settings, web=web.start) as running:
            await web.login(running)
            pub.publish_many(stream(device, 3))
            await poll(lambda: running.stats.committed >= 3, what="the first messages")
            assert (await web.health())["status"] == "ok"
            assert await web.metric("kilowatch_ingest_degraded") == 0.0
            break_store()
            pub.publish_many(stream(device, 5, first=3))
            await poll(lambda: running.stats.received >= 8, what="the rest received")
            health = await poll(_degraded(web, reason), what=f"health degraded: {reason}")
            assert health["store"] == "ok" and health["ingest"] == "degraded"
            await poll(lambda: running.stats.commit_failures >= 1, what="a failed commit")
            failures = "kilowatch_ingest_commit_failures_total{kind=%s}"
            assert await web.metric(failures % '"unavailable"') >= 1
            assert await web.metric(failures % '"unstorable"') == 0
            assert await web.metric("kilowatch_ingest_batches_in_flight") >= 1
            assert await web.metric("kilowatch_ingest_messages_in_flight") >= 1
            assert await web.metric("kilowatch_ingest_oldest_in_flight_seconds") >= 1
            assert await web.metric("kilowatch_ingest_degraded") == 1.0
            assert running.stats.committed == 3  # nothing acknowledged that is not stored
            mend_store()
            await poll(lambda: running.stats.committed >= 8, what="the rest committed")
            assert await stored_wh(running.store, device) == 7.0  # each message once
            assert (await web.health())["status"] == "ok"
            assert await web.metric("kilowatch_ingest_commit_failing_seconds") == 0.0
            assert not await running.store.dead_letters()  # nothing set aside: it was the store
    finally:
        pub.close()
        forget_session(mosquitto.port, settings.mqtt_client_id)


def _degraded(web: Web, reason: str) -> Callable[[], Any]:
    async def check() -> dict[str, Any] | None:
        body = await web.health()
        if body["status"] == "degraded" and any(reason in r for r in body["reasons"]):
            return body
        return None

    return check


# -- (c) SIGTERM while the store fails ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["out_of_memory", "paused"])
async def test_sigterm_while_the_store_fails_stops_in_time_and_loses_nothing(
    mosquitto: MosquittoServer,
    start_serve: Callable[..., ServeProcess],
    paused_redis: RedisServer,
    fault: str,
) -> None:
    """Out of memory: each commit fails at once. Paused (SIGSTOP): the commit under way hangs
    until Redis' 30 s socket timeout. Either way the stop gives up after stop_timeout_s, exits 1,
    and acknowledges nothing it did not store: a restart gets it all again, counted once."""
    client_id = unique("kw-stop-")
    args = ("--broker", mosquitto.url, "--store", paused_redis.url, "--mqtt-client-id", client_id)
    device = unique("shellypmminig3-stop")
    pub = Publisher(mosquitto.port)
    try:
        first = start_serve(*args)
        first.wait_for_log(r"kilowatch ready")
        first.wait_for_log(r"Application startup complete")  # the web app wrote its admin
        pub.publish_many(stream(device, 11))
        await poll(lambda: _is(stored_wh(paused_redis.url, device), 10.0), what="10 Wh stored")
        fill_up(paused_redis)
        pub.publish_many(stream(device, 50, first=11))
        first.wait_for_log(r"store commit failed kind=unavailable")
        if fault == "paused":
            assert paused_redis.proc is not None
            paused_redis.proc.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        code = first.proc.wait(STOP_BOUND_S + 20)
        took = time.monotonic() - began
        log = first.text()
        assert code == 1, log
        assert took < STOP_BOUND_S, f"stopping took {took:.1f} s:\n{log}"
        assert "stopping: gave up committing after stop_timeout_s=5" in log
        assert "the broker delivers them again at the next start" in log
        assert paused_redis.proc is not None
        paused_redis.proc.send_signal(signal.SIGCONT)
        heal(paused_redis)
        second = start_serve(*args)
        second.wait_for_log("session=resumed")
        await poll(lambda: _is(stored_wh(paused_redis.url, device), 60.0), what="all 60 Wh")
        assert second.terminate() == 0
        assert await stored_wh(paused_redis.url, device) == 60.0  # nothing doubled since
    finally:
        pub.close()
        forget_session(mosquitto.port, client_id)


async def _is(value: Any, expected: float) -> bool:
    return bool(await value == expected)
