"""The managed mosquitto, for real: ManagedMosquitto starts ``mosquitto`` on free loopback ports
in tmp_path; devices and kilowatch connect with real paho clients (MQTT 3.1.1 and 5).

The broker runs on its own event-loop thread (:class:`ManagedThread`), so the tests' blocking
paho helpers never stall its supervisor or its log pipe. Absence is proven without sleeps: a
marker published after what must not arrive would arrive after it (per-subscriber ordering).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from kilowatch.broker.credentials import DeviceKind, add_device, revoke_device, rotate_device
from kilowatch.broker.mosquitto import (
    CONFIG_FILE,
    PID_FILE,
    Listener,
    ManagedMosquitto,
    MosquittoOptions,
    find_mosquitto,
    mosquitto_version,
    render_config,
    running_pid,
)
from kilowatch.broker.tls import TlsFiles, ensure_local_tls, export_ca, tls_dir
from kilowatch.errors import BrokerError
from kilowatch.store import Store, open_store

if TYPE_CHECKING:  # helpers live in conftest.py (importlib mode: not importable at run time)
    from conftest import Client

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto 2.x is not installed")

WAIT_S = 10.0
FAST = MosquittoOptions(autosave_interval_s=1, backoff_min_s=0.1, backoff_max_s=0.5)
REFUSED = {4, 5, 134, 135}  # bad user name or password / not authorised (3.1.1 and 5)


class ManagedThread:
    """A :class:`ManagedMosquitto` and its SQLite store on a private event loop in a thread."""

    def __init__(self, data_dir: Path, **options: Any) -> None:
        self.data_dir = data_dir
        self.store_url = f"sqlite:///{data_dir}/kilowatch.db"
        self.options = options
        self.broker: ManagedMosquitto | None = None
        self.store: Store | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with open_store(self.store_url) as store:
                self.store = store
                async with ManagedMosquitto(self.data_dir, store, **self.options) as broker:
                    self.broker = broker
                    self._ready.set()
                    await self._stop.wait()
        except BaseException as err:
            self._error = err
        finally:
            self._ready.set()

    def start(self) -> ManagedThread:
        self._thread.start()
        assert self._ready.wait(WAIT_S * 2), "managed mosquitto did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_S * 2)
        assert not self._thread.is_alive(), "managed mosquitto did not stop"
        if self._error is not None:
            raise self._error

    def run(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run the coroutine ``make()`` on the broker's loop and return its result."""
        assert self.loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(_call(make), self.loop)
        return future.result(WAIT_S)

    @property
    def b(self) -> ManagedMosquitto:
        assert self.broker is not None
        return self.broker

    @property
    def s(self) -> Store:
        assert self.store is not None
        return self.store

    def add(
        self, device: str, kind: DeviceKind = DeviceKind.SHELLY, prefix: str | None = None
    ) -> str:
        """Create ``device``'s credentials, make mosquitto reload, return the password."""
        _, password = self.run(
            lambda: add_device(self.s, device, kind=kind, prefix=prefix, now=time.time())
        )
        self.run(self.b.reload)
        return str(password)

    def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        pause = threading.Event()
        while not predicate():
            assert time.monotonic() < deadline, f"never happened: {what}"
            pause.wait(0.02)


async def _call(make: Callable[[], Awaitable[Any]]) -> Any:
    return await make()


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[Callable[..., ManagedThread]]:
    """``managed(**options)``: a managed mosquitto on free ports in tmp_path, stopped after."""
    started: list[ManagedThread] = []

    def start(**options: Any) -> ManagedThread:
        options.setdefault("listeners", [Listener(port=0)])
        options.setdefault("options", FAST)
        thread = ManagedThread(tmp_path / f"data{len(started)}", **options).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


Clients = Callable[..., "Client"]


def _kilowatch(m: ManagedThread, clients: Clients, **options: Any) -> Client:
    """kilowatch's own user, subscribed to everything."""
    client = clients(m.b.port, "", username=m.b.user, password=m.b.password, **options)
    assert client.connect()[0] == 0
    assert client.subscribe("#", 1) == 1
    return client


class Probe:
    """A paho client for one refusal: it never reconnects, so a broker that closes it leaves no
    reconnect loop behind (``clients`` would sleep in one at close)."""

    def __init__(self, port: int, user: str, password: str, **options: Any) -> None:
        self.port = port
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, reconnect_on_failure=False,
                                **options)  # fmt: skip
        self.paho.username_pw_set(user, password)
        self.connacks: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.paho.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc.value)
        self.paho.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def connect(self) -> int:
        """The CONNACK's reason code value."""
        self.paho.connect("127.0.0.1", self.port)
        self.paho.loop_start()
        return self.connacks.get(timeout=WAIT_S)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_a_device_publishes_its_status_and_kilowatch_receives_it(
    managed: Callable[..., ManagedThread], clients: Clients, protocol: int
) -> None:
    m = managed()
    password = m.add("shelly-a")
    kw = _kilowatch(m, clients, protocol=protocol)
    device = clients(m.b.port, "shelly-a", username="shelly-a", password=password,
                     protocol=protocol)  # fmt: skip
    assert device.connect()[0] == 0
    device.publish("shelly-a/events/rpc", b'{"method":"NotifyStatus"}')
    device.publish("/system/shelly-a/status", b'{"hourly_energy_usage":1.5}')
    got = kw.expect(2)
    assert [(r.topic, r.payload) for r in got] == [
        ("shelly-a/events/rpc", b'{"method":"NotifyStatus"}'),
        ("/system/shelly-a/status", b'{"hourly_energy_usage":1.5}'),
    ]
    # and the device reads its own RPC topic
    assert device.subscribe("shelly-a/rpc", 1) == 1
    kw.publish("shelly-a/rpc", b'{"id":1,"src":"kw","method":"Shelly.GetStatus"}')
    assert device.expect()[0].topic == "shelly-a/rpc"


def _refused(m: ManagedThread, user: str, password: str, topic: str) -> None:
    """``user`` publishing on ``topic`` is refused: mosquitto 2.0 closes its connection (MQTT
    3.1.1 §3.3.5 lets a broker either do that or acknowledge and drop the message)."""
    with Probe(m.b.port, user, password) as client:
        assert client.connect() == 0
        client.paho.publish(topic, b"forged", qos=1)
        assert client.disconnected.wait(WAIT_S), f"{user} published on {topic}, stayed connected"


def _cannot_connect(port: int, user: str, password: str, **options: Any) -> None:
    with Probe(port, user, password, **options) as client:
        assert client.connect() in REFUSED


def test_a_device_cannot_publish_or_read_another_devices_topics(
    managed: Callable[..., ManagedThread], clients: Clients
) -> None:
    m = managed()
    pass_a, pass_b = m.add("shelly-a"), m.add("shelly-b")
    kw = _kilowatch(m, clients)
    for topic in ("shelly-b/status/switch:0", "shelly-b/events/rpc", "shelly-b/rpc",
                  "/system/shelly-b/status", "shelly-b/command/switch:0", "kilowatch/rpc",
                  "shelly-b"):  # fmt: skip
        _refused(m, "shelly-a", pass_a, topic)
    a = clients(m.b.port, "shelly-a", username="shelly-a", password=pass_a)
    b = clients(m.b.port, "shelly-b", username="shelly-b", password=pass_b)
    assert a.connect()[0] == 0 and b.connect()[0] == 0
    a.publish("shelly-a/online", b"true")  # the marker: allowed, so it arrives after the rest
    assert [r.topic for r in kw.expect_until("shelly-a/online")] == []

    assert b.subscribe("shelly-b/#", 1) == 1
    # mosquitto 2.0 grants every subscription and filters what it delivers by the ACL
    assert a.subscribe("#", 1) == 1
    kw.publish("shelly-b/rpc", b'{"id":2,"src":"kw","method":"Switch.Set"}')
    kw.publish("shelly-b/status/switch:0", b"{}")
    kw.publish("shelly-a/rpc", b'{"id":3,"src":"kw","method":"Shelly.GetStatus"}')
    assert [r.topic for r in a.expect_until("shelly-a/rpc")] == []
    assert [r.payload for r in b.expect(1)] == [b'{"id":2,"src":"kw","method":"Switch.Set"}']


def test_gen1_and_tasmota_devices_get_their_own_topics(
    managed: Callable[..., ManagedThread], clients: Clients
) -> None:
    m = managed()
    gen1 = m.add("shellyplug-s-C18B12", DeviceKind.GEN1)
    tasmota = m.add("plug-1", DeviceKind.TASMOTA, prefix="tasmota_5A3B2C")
    kw = _kilowatch(m, clients)
    _refused(m, "shellyplug-s-C18B12", gen1, "shellies/other/relay/0/power")
    _refused(m, "plug-1", tasmota, "tele/other/SENSOR")
    _refused(m, "plug-1", tasmota, "cmnd/tasmota_5A3B2C/POWER")
    g = clients(m.b.port, "g", username="shellyplug-s-C18B12", password=gen1)
    t = clients(m.b.port, "t", username="plug-1", password=tasmota)
    assert g.connect()[0] == 0 and t.connect()[0] == 0
    g.publish("shellies/shellyplug-s-C18B12/relay/0/power", b"12.5")
    g.publish("shellies/announce", b"{}")
    t.publish("tele/tasmota_5A3B2C/SENSOR", b"{}")
    t.publish("stat/tasmota_5A3B2C/POWER", b"ON")
    assert [r.topic for r in kw.expect_until("stat/tasmota_5A3B2C/POWER")] == [
        "shellies/shellyplug-s-C18B12/relay/0/power",
        "shellies/announce",
        "tele/tasmota_5A3B2C/SENSOR",
    ]
    assert t.subscribe("cmnd/#", 1) == 1
    kw.publish("cmnd/other/POWER", b"ON")
    kw.publish("cmnd/tasmota_5A3B2C/POWER", b"OFF")
    assert [(r.topic, r.payload) for r in t.expect(1)] == [("cmnd/tasmota_5A3B2C/POWER", b"OFF")]


def test_a_revoked_device_is_cut_off_by_the_cli(
    managed: Callable[..., ManagedThread], clients: Clients
) -> None:
    """``kilowatch broker user revoke`` finds the running mosquitto (pid file) and reloads it:
    the device's open connection is closed and its next connect is refused."""
    from kilowatch.cli.app import app

    m = managed()
    password = m.add("shelly-a")
    with Probe(m.b.port, "shelly-a", password) as device:
        assert device.connect() == 0
        args = ["--store", m.store_url, "--data-dir", str(m.data_dir)]
        result = CliRunner().invoke(app, ["broker", "user", "revoke", "shelly-a", *args])
        assert result.exit_code == 0, result.output
        assert f"mosquitto (pid {m.b.pid}) reloaded" in result.output
        assert device.disconnected.wait(WAIT_S), "the revoked device stayed connected"
    _cannot_connect(m.b.port, "shelly-a", password)


def test_a_revoked_device_is_cut_off_by_reload(
    managed: Callable[..., ManagedThread], clients: Clients
) -> None:
    m = managed()
    password = m.add("shelly-a")
    m.run(lambda: revoke_device(m.s, "shelly-a", now=time.time()))
    m.run(m.b.reload)  # returns once mosquitto took it: the next CONNECT meets the new files
    _cannot_connect(m.b.port, "shelly-a", password, protocol=mqtt.MQTTv5)


def test_reloads_in_a_row_are_never_lost(
    managed: Callable[..., ManagedThread], clients: Clients
) -> None:
    """A SIGHUP that reaches mosquitto while it reloads is dropped: reload() returns only once
    the reload has ended, so each of these is seen."""
    m = managed()
    passwords = [m.add(f"shelly-{i}") for i in range(5)]
    for i, password in enumerate(passwords):
        with Probe(m.b.port, f"shelly-{i}", password) as device:
            assert device.connect() == 0


def test_a_change_in_the_store_alone_is_applied_by_the_watcher(
    managed: Callable[..., ManagedThread],
) -> None:
    """No signal at all (another machine's CLI on a shared store, a dropped SIGHUP): the
    credentials watcher sees the store differ from what mosquitto loaded and reloads it."""
    m = managed(options=replace(FAST, credentials_poll_s=0.1))
    password = m.add("shelly-a")
    with Probe(m.b.port, "shelly-a", password) as device:
        assert device.connect() == 0
        m.run(lambda: revoke_device(m.s, "shelly-a", now=time.time()))
        assert device.disconnected.wait(WAIT_S), "the watcher did not reload"
    _cannot_connect(m.b.port, "shelly-a", password)


def test_rotation_voids_the_old_password(
    managed: Callable[..., ManagedThread], clients: Clients
) -> None:
    m = managed()
    old = m.add("shelly-a")
    _, new = m.run(lambda: rotate_device(m.s, "shelly-a", now=time.time()))
    m.run(m.b.reload)
    _cannot_connect(m.b.port, "shelly-a", old)
    assert clients(m.b.port, "x2", username="shelly-a", password=new).connect()[0] == 0


def test_anonymous_clients_only_while_on_loopback(
    managed: Callable[..., ManagedThread], clients: Clients, tmp_path: Path
) -> None:
    m = managed()
    anonymous = clients(m.b.port, "local-tool")
    assert anonymous.connect()[0] == 0  # loopback only: like the embedded broker
    wide = render_config(tmp_path, [Listener(port=1), Listener(host="0.0.0.0", port=2)])
    assert "allow_anonymous false" in wide.splitlines()
    local = render_config(tmp_path, [Listener(port=1), Listener(host="::1", port=2)])
    assert "allow_anonymous true" in local.splitlines()


def test_kill_9_restarts_it_and_the_persistent_session_keeps_its_messages(
    managed: Callable[..., ManagedThread], clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kilowatch.mosquitto")
    m = managed()
    password = m.add("shelly-a")
    session = {"username": m.b.user, "password": m.b.password, "clean_session": False}
    sub = clients(m.b.port, "kilowatch-test", **session)
    assert sub.connect() == (0, False)
    assert sub.subscribe("shelly-a/#", 1) == 1
    sub.close()  # offline; mosquitto keeps the session (and must keep it on disk)
    db = m.b.directory / "mosquitto.db"
    saved = db.stat().st_mtime_ns if db.exists() else None
    # any save that ends after the SUBACK holds the subscription (mosquitto has one thread)
    m.wait_until(lambda: db.exists() and db.stat().st_mtime_ns != saved, "a save")

    old_pid = m.b.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    m.wait_until(lambda: m.b.restarts == 1 and m.b.pid not in (None, old_pid), "a restart")
    assert running_pid(m.b.directory) == m.b.pid  # the CLI's SIGHUP goes to the new process

    device = clients(m.b.port, "shelly-a", username="shelly-a", password=password)
    assert device.connect()[0] == 0
    for i in range(3):
        device.publish(f"shelly-a/status/switch:{i}", f"{i}".encode())
    back = clients(m.b.port, "kilowatch-test", **session)
    assert back.connect() == (0, True)  # session present: it survived kill -9
    assert [(r.topic, r.payload) for r in back.expect(3)] == [
        (f"shelly-a/status/switch:{i}", f"{i}".encode()) for i in range(3)
    ]
    restarts = [r.getMessage() for r in caplog.records if "mosquitto exited" in r.getMessage()]
    assert len(restarts) == 1 and "code=-9" in restarts[0] and "restart_in_s=" in restarts[0]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_tls_with_the_exported_ca(
    managed: Callable[..., ManagedThread], clients: Clients, tmp_path: Path, protocol: int
) -> None:
    files = ensure_local_tls(tls_dir(tmp_path), ["kilowatch.lan"])
    m = managed(listeners=[Listener(port=0), Listener(port=0, tls=files)])
    tls_port = m.b.listeners[1].port
    password = m.add("shelly-a")
    ca = tmp_path / "exported-ca.pem"
    ca.write_bytes(export_ca(tls_dir(tmp_path))[0])
    device = clients(tls_port, "shelly-a", username="shelly-a", password=password,
                     protocol=protocol, tls_ca=str(ca))  # fmt: skip
    assert device.connect()[0] == 0
    kw = _kilowatch(m, clients)
    device.publish("shelly-a/online", b"true")
    assert kw.expect()[0].topic == "shelly-a/online"

    stranger = clients(tls_port, "stranger", username="shelly-a", password=password,
                       protocol=protocol)  # fmt: skip
    stranger.paho.tls_set()  # the system's CAs only: the local CA is unknown to them
    with pytest.raises(ssl_errors()):
        stranger.connect()


def ssl_errors() -> tuple[type[BaseException], ...]:
    import ssl

    return (ssl.SSLError, ssl.SSLCertVerificationError)


def test_files_are_owner_only_and_stop_is_clean(managed: Callable[..., ManagedThread]) -> None:
    m = managed()
    m.add("shelly-a")
    directory = m.b.directory
    pid = m.b.pid
    assert pid is not None and running_pid(directory) == pid
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    password = m.b.password
    assert password not in "".join(p.read_text() for p in directory.iterdir() if p.is_file()
                                   and p.suffix != ".db")  # fmt: skip
    m.stop()
    assert not (directory / PID_FILE).exists()
    assert running_pid(directory) is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_its_log_goes_to_kilowatch_logging(
    managed: Callable[..., ManagedThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kilowatch.mosquitto")
    m = managed()
    m.run(m.b.reload)
    lines = [r.getMessage() for r in caplog.records if r.name == "kilowatch.mosquitto"]
    assert any(line.startswith("mosquitto version 2.") for line in lines)
    assert "Reloading config." in lines


def test_a_port_in_use_is_named(managed: Callable[..., ManagedThread]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} is in use.*--mqtt-port"):
            managed(listeners=[Listener(port=port)])


def test_a_start_failure_shows_mosquittos_own_words(
    managed: Callable[..., ManagedThread], tmp_path: Path
) -> None:
    missing = TlsFiles(tmp_path / "no-ca.pem", tmp_path / "no.crt", tmp_path / "no.key")
    with pytest.raises(BrokerError, match=r"mosquitto exited with code \d+ at start: .*Error"):
        managed(listeners=[Listener(port=0), Listener(port=0, tls=missing)])


def test_a_mosquitto_left_running_by_a_dead_kilowatch_is_stopped(
    managed: Callable[..., ManagedThread], caplog: pytest.LogCaptureFixture
) -> None:
    first = managed()
    directory, port = first.b.directory, first.b.port
    first.stop()
    binary = find_mosquitto()
    assert binary is not None
    # an orphan, as after kill -9 of kilowatch: its parent (the shell) is gone
    started = subprocess.run(
        ["sh", "-c", f'"{binary}" -c "{directory / CONFIG_FILE}" >/dev/null 2>&1 & echo $!'],
        capture_output=True, text=True, check=True, timeout=WAIT_S,
    )  # fmt: skip
    orphan = int(started.stdout)
    try:
        (directory / PID_FILE).write_text(f"{orphan}\n")
        first.wait_until(lambda: _accepts(port), "the orphan listening")
        second = ManagedThread(first.data_dir, listeners=[Listener(port=port)], options=FAST)
        second.start()
        assert "left running by an earlier kilowatch" in caplog.text
        assert second.b.pid != orphan and _accepts(port)
        second.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


def test_a_second_kilowatch_on_the_same_data_dir_is_refused(
    managed: Callable[..., ManagedThread],
) -> None:
    first = managed()
    with pytest.raises(BrokerError, match=r"already runs \(pid \d+\), started by kilowatch pid"):
        ManagedThread(first.data_dir, options=FAST).start()
    assert first.b.pid is not None and running_pid(first.b.directory) == first.b.pid


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


FAKE = """\
import re, signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
conf = open(sys.argv[2]).read()
port = int(re.search(r"^listener (\\d+)", conf, re.M).group(1))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
print("Warning: fake mosquitto ignores SIGTERM", file=sys.stderr, flush=True)
print("mosquitto version 0.0-fake running", file=sys.stderr, flush=True)
while True:
    s.accept()[0].close()
"""


def test_a_mosquitto_that_ignores_sigterm_is_killed(
    managed: Callable[..., ManagedThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = tmp_path / "fake-mosquitto"
    script.write_text(f"#!{sys.executable}\n{FAKE}")
    script.chmod(0o755)
    caplog.set_level(logging.INFO, logger="kilowatch.mosquitto")
    options = MosquittoOptions(stop_timeout_s=0.3)
    m = managed(binary=script, options=options)
    pid = m.b.pid
    assert pid is not None
    m.wait_until(lambda: "fake mosquitto ignores SIGTERM" in caplog.text, "its log line")
    m.stop()
    assert "did not stop within 0.3s of SIGTERM; killing it" in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_find_mosquitto_wants_version_2(tmp_path: Path) -> None:
    found = find_mosquitto()
    assert found is not None and mosquitto_version(found)[:1] == (2,)
    old = tmp_path / "mosquitto"
    old.write_text("#!/bin/sh\necho 'mosquitto version 1.6.9'\nexit 3\n")
    old.chmod(0o755)
    assert mosquitto_version(old) == (1, 6, 9)
    assert mosquitto_version(tmp_path / "nothing") == ()


def test_a_bridge_in_conf_d_forwards_to_a_cloud_broker(
    managed: Callable[..., ManagedThread], clients: Clients, tmp_path: Path
) -> None:
    """docs/broker.md's bridge block, in ``<data dir>/mosquitto/conf.d/``, kept across starts:
    what is published under ``kilowatch/#`` reaches the other broker (a loopback stand-in)."""
    from kilowatch.testing import MosquittoServer

    with MosquittoServer() as cloud:
        conf_d = tmp_path / "data0" / "mosquitto" / "conf.d"
        conf_d.mkdir(parents=True)
        (conf_d / "bridge.conf").write_text(
            f"connection cloud\naddress 127.0.0.1:{cloud.port}\nremote_clientid kilowatch-home\n"
            "bridge_protocol_version mqttv311\ntopic kilowatch/# out 1\n"
        )
        m = managed()
        assert (conf_d / "bridge.conf").exists()
        subscriber = clients(cloud.port, "cloud-sub")
        assert subscriber.connect()[0] == 0
        assert subscriber.subscribe("kilowatch/#", 1) == 1
        kw = _kilowatch(m, clients)
        deadline = time.monotonic() + WAIT_S
        while subscriber.messages.empty():  # until the bridge is up; bounded
            assert time.monotonic() < deadline, "nothing crossed the bridge"
            kw.publish("kilowatch/energy", b"42")
            threading.Event().wait(0.1)
        assert subscriber.expect()[0].topic == "kilowatch/energy"
