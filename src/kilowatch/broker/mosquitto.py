"""Managed mosquitto: kilowatch writes its config, runs it, restarts it, reloads it and stops it.

``async with ManagedMosquitto(data_dir, store) as broker:`` starts ``mosquitto -c`` on a config
kilowatch owns, returns once every listener accepts connections, and stops it cleanly on exit.
kilowatch's intake connects to ``broker.url`` like to any external broker, as user
:data:`~kilowatch.broker.credentials.SERVICE_USER` with a password made at each start.

The broker directory, ``<data dir>/mosquitto/`` (0700; every file in it 0600):

============== ==========================================================================
mosquitto.conf the config, written at each start (edits are overwritten)
passwd         ``password_file``: kilowatch's user and each device's (``$7$`` hashes)
acl            ``acl_file``: what each user may publish and read
access.json    what ``kilowatch broker user ...`` needs to rewrite ``passwd`` and ``acl``
               while kilowatch runs (kilowatch's user's hash, whether anonymous is allowed)
mosquitto.pid  the running mosquitto's pid: the commands' SIGHUP goes there
mosquitto.db   mosquitto's persistence (sessions, queued and retained messages)
============== ==========================================================================

While it runs, mosquitto's log goes to the logger ``kilowatch.mosquitto``; if it dies it is started
again after a jittered, capped exponential delay (each restart logged); :meth:`reload` and
:func:`reload_running` apply new credentials with SIGHUP, without a restart (mosquitto then
disconnects clients whose user is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from kilowatch.broker.credentials import (
    SERVICE_USER,
    Credential,
    credentials,
    generate_password,
    render_acl_file,
    render_password_file,
    write_private,
)
from kilowatch.broker.passwords import mosquitto_hash
from kilowatch.broker.tls import TlsFiles
from kilowatch.errors import BrokerError, ConfigError, KilowatchError
from kilowatch.mqtt.packets import PacketType, encode_connect, encode_packet
from kilowatch.store.protocol import Store

log = logging.getLogger("kilowatch.mosquitto")

BROKER_DIR = "mosquitto"
CONFIG_FILE = "mosquitto.conf"
PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
ACCESS_FILE = "access.json"
PID_FILE = "mosquitto.pid"
INCLUDE_DIR = "conf.d"
"""Your own mosquitto config (``*.conf``, e.g. a bridge to a cloud broker), read after kilowatch's
and kept across starts."""
MQTT_PORT = 1883
"""IANA-registered MQTT port."""
MQTTS_PORT = 8883
"""IANA-registered MQTT-over-TLS port."""
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin")
"""Where Debian (and a source install) put mosquitto, often outside a user's PATH."""
MOSQUITTO_MISSING = "mosquitto 2.x is not installed (looked on PATH, in /usr/sbin, /usr/local/sbin)"
START_TIMEOUT_S = 10.0
"""How long a start may take until every listener accepts connections."""
STOP_TIMEOUT_S = 10.0
"""How long mosquitto may take to stop after SIGTERM (it saves its persistence file) until
SIGKILL."""
RELOAD_TIMEOUT_S = 5.0
CREDENTIALS_POLL_S = 5.0
BARRIER_CLIENT_ID = "kilowatch-reload-barrier"
"""Client id of the MQTT round trip that tells a reload has ended (ManagedMosquitto.reload)."""
PORT_POLL_S = 0.02
STABLE_AFTER_S = 60.0
"""A mosquitto that ran this long before dying starts the restart backoff from the beginning."""
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
LOG_TAIL_LINES = 20
RUNNING_LINE = re.compile(r"mosquitto version \S+ running")
"""What mosquitto logs once it has set up its signal handlers, after its listeners opened: a port
that accepts is not enough, as a SIGHUP that came before would kill it or be lost."""
RELOAD_LINE = "Reloading config."
"""What mosquitto logs on SIGHUP, just before it reloads (on its one thread: any packet it reads
afterwards meets the new passwords and ACLs)."""
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}  # bind addresses


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """One port mosquitto listens on; with ``tls`` it speaks MQTT over TLS only."""

    host: str = "127.0.0.1"
    port: int = MQTT_PORT
    """0: a free port, picked at start."""
    tls: TlsFiles | None = None

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach it."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def address(self) -> str:
        """Where a local client connects to reach it (``0.0.0.0`` → ``127.0.0.1``)."""
        if self.host in _WILDCARD_HOSTS:
            return "::1" if self.host == "::" else "127.0.0.1"
        return self.host


@dataclass(frozen=True, slots=True, kw_only=True)
class MosquittoOptions:
    """What kilowatch lets you tune in the config it writes, and how it supervises mosquitto."""

    autosave_interval_s: int = 1
    """Seconds between saves of mosquitto's in-memory state (its default is 1800): a crash of
    mosquitto loses what it had acknowledged to devices but not yet delivered to kilowatch since the
    last save (docs/brokers.md). Counters recover such a loss, the hourly script's messages do not;
    the state it saves is small (kilowatch's session keeps up), so saving every second is cheap."""
    max_inflight_messages: int = 1000
    """Unacknowledged QoS 1/2 messages per client (default 20). kilowatch acknowledges after each
    store commit, so 20 would cap ingest at 20 messages per commit; the rest is not dropped but
    waits in the (unlimited) queue."""
    persistent_client_expiration: str | None = None
    """e.g. ``"30d"``; ``None``: persistent sessions never expire, so kilowatch's session and its
    queue survive any outage of kilowatch."""
    credentials_poll_s: float | None = CREDENTIALS_POLL_S
    """How often the store's credentials are compared with what mosquitto loaded (``None``:
    never); a change reloads it. ``kilowatch broker user ...`` signals mosquitto itself, so this
    only matters when it cannot: another machine sharing a Redis store, or a signal mosquitto
    dropped (one that comes during a reload is lost)."""
    start_timeout_s: float = START_TIMEOUT_S
    stop_timeout_s: float = STOP_TIMEOUT_S
    backoff_min_s: float = BACKOFF_MIN_S
    backoff_max_s: float = BACKOFF_MAX_S


@dataclass(frozen=True, slots=True)
class Access:
    """What besides the store decides the ``passwd`` and ``acl`` files: kept in access.json."""

    service_hash: str
    anonymous: bool = False
    owner: int = 0
    """The pid of the kilowatch process that runs this mosquitto."""


# --- finding mosquitto ----------------------------------------------------------------------------


def find_mosquitto(binary: Path | None = None) -> Path | None:
    """A mosquitto 2.x binary: on PATH, else in :data:`SEARCH_DIRS`; ``None`` when there is none.

    With ``binary`` (the ``mosquitto`` setting) only that file is considered. 2.x because its
    password file holds ``$7$`` hashes; ``kilowatch serve`` falls back to the embedded broker
    (and says so, with :data:`MOSQUITTO_MISSING`) when this is ``None``.
    """
    if binary is not None:
        candidates = [binary]
    else:
        found = shutil.which("mosquitto")
        candidates = [Path(found)] if found else []
        candidates += [Path(d) / "mosquitto" for d in SEARCH_DIRS]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and mosquitto_version(path)[:1] >= (2,):
            return path
    return None


def mosquitto_version(binary: Path) -> tuple[int, ...]:
    """``(2, 0, 11)`` from ``mosquitto -h`` ("mosquitto version 2.0.11"); ``()`` if unknown."""
    try:
        out = subprocess.run(
            [str(binary), "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    words = out.split("\n", 1)[0].split()
    if len(words) < 3 or words[:2] != ["mosquitto", "version"]:
        return ()
    try:
        return tuple(int(part) for part in words[2].split("."))
    except ValueError:
        return ()


def broker_dir(data_dir: Path) -> Path:
    """The managed broker's directory for kilowatch's data dir ``data_dir`` (absolute: the pid
    check compares mosquitto's command line with it, whatever the current directory)."""
    return (data_dir / BROKER_DIR).absolute()


# --- the config -----------------------------------------------------------------------------------


def render_config(
    directory: Path,
    listeners: Sequence[Listener],
    options: MosquittoOptions = MosquittoOptions(),
    *,
    as_root: bool = False,
) -> str:
    """The mosquitto.conf kilowatch writes into ``directory`` (ports already picked)."""
    anonymous = all(listener.loopback for listener in listeners)
    lines = [
        "# Written by kilowatch at every start of its managed mosquitto: edits here are lost.",
        "per_listener_settings false",
        "",
        "persistence true",
        f"persistence_location {directory}/",
        f"autosave_interval {options.autosave_interval_s}",
        # kilowatch's persistent QoS 1 session must never lose a message: with mosquitto's default
        # of 1000 queued messages per client, a session that falls behind (a store that is down,
        # kilowatch stopped for an upgrade) silently DROPS the rest (docs/brokers.md: 3-34 % lost
        # in our runs). 0 = no limit, in messages and in bytes, is the only value that can never
        # drop; memory grows only while kilowatch is away. Devices use clean sessions, so nothing
        # else queues for long.
        "max_queued_messages 0",
        "max_queued_bytes 0",
        # Tasmota and Zigbee2MQTT often publish at QoS 0: queue those for kilowatch too.
        "queue_qos0_messages true",
        # In flight is not dropped, it is throttled: the window must not cap ingest (see
        # MosquittoOptions.max_inflight_messages); what does not fit waits in the queue above.
        f"max_inflight_messages {options.max_inflight_messages}",
        # Nagle's algorithm holds back a small packet until the last one is acknowledged: an MQTT
        # RPC round trip to a device (kilowatch fleet over MQTT) took ~44 ms instead of ~0.5 ms.
        "set_tcp_nodelay true",
    ]
    if options.persistent_client_expiration:
        lines.append(f"persistent_client_expiration {options.persistent_client_expiration}")
    lines += [
        "",
        f"password_file {directory / PASSWORD_FILE}",
        f"acl_file {directory / ACL_FILE}",
        # Anonymous clients only while nothing beyond this machine can connect (as the embedded
        # broker); beyond loopback every client needs a user of the password file.
        f"allow_anonymous {'true' if anonymous else 'false'}",
        "",
        "log_dest stderr",  # unbuffered: stdout to a pipe is flushed only at exit
        "log_timestamp false",  # kilowatch's logging stamps the lines
        *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
    ]
    if as_root:
        # As root mosquitto switches to the user "mosquitto", who cannot read this owner-only
        # directory; kilowatch itself runs as root here, so mosquitto stays root as well.
        lines.append("user root")
    for listener in listeners:
        lines += ["", f"listener {listener.port} {listener.host}"]
        if listener.tls is not None:
            lines += [
                f"cafile {listener.tls.cafile}",
                f"certfile {listener.tls.certfile}",
                f"keyfile {listener.tls.keyfile}",
            ]
    # Last, so that a bridge block there (``connection ...``) does not swallow our settings.
    lines += ["", "# Your own additions (a bridge, ...): *.conf files, kept across starts.",
              f"include_dir {directory / INCLUDE_DIR}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_access_files(directory: Path, records: Iterable[Credential], access: Access) -> None:
    """Write ``passwd`` and ``acl`` (owner-only) for ``records`` and kilowatch's user."""
    records = list(records)
    write_private(directory / PASSWORD_FILE, render_password_file(records, access.service_hash))
    write_private(directory / ACL_FILE, render_acl_file(records, anonymous=access.anonymous))


def _read_access(directory: Path) -> Access | None:
    try:
        data = json.loads((directory / ACCESS_FILE).read_text())
        return Access(str(data["service_hash"]), bool(data["anonymous"]), int(data["owner"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- a mosquitto started by another kilowatch process ---------------------------------------------


def running_pid(directory: Path) -> int | None:
    """The pid of the managed mosquitto of ``directory`` if it runs, else ``None``.

    The pid file alone is not trusted (a pid is reused after a crash): on Linux the process's
    command line must name this directory's config.
    """
    try:
        pid = int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            argv = proc.read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if str(directory / CONFIG_FILE).encode() in argv else None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


async def reload_running(data_dir: Path, store: Store) -> int | None:
    """If the managed mosquitto of ``data_dir`` runs (started by ``kilowatch serve``), rewrite its
    ``passwd`` and ``acl`` from the store and make it reload them (SIGHUP); return its pid.

    ``None`` when it does not run: nothing is written, and the next start writes the files from
    the store anyway.
    """
    directory = broker_dir(data_dir)
    pid = running_pid(directory)
    access = _read_access(directory)
    if pid is None or access is None:
        return None
    write_access_files(directory, (await credentials(store)).values(), access)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return None  # it stopped meanwhile: its next start reads the files just written
    return pid


def _parent_pid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


async def _stop_stale(directory: Path, timeout: float) -> None:
    """Stop a mosquitto of this directory left running by a kilowatch that died without stopping
    it; a :class:`BrokerError` if the kilowatch that started it still runs (it is its parent)."""
    pid = running_pid(directory)
    if pid is None:
        return
    access = _read_access(directory)
    owner = access.owner if access is not None else 0
    if owner and _parent_pid(pid) == owner:
        raise BrokerError(
            f"the managed mosquitto of {directory} already runs (pid {pid}), started by "
            f"kilowatch pid {owner}; stop that kilowatch first, or give this one another data dir"
        )
    log.warning("stopping mosquitto pid=%d left running by an earlier kilowatch", pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while running_pid(directory) == pid:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(PORT_POLL_S)
        else:
            return
    raise BrokerError(f"mosquitto pid {pid}, left running by an earlier kilowatch, does not stop")


# --- ports ----------------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _check_port_free(listener: Listener) -> None:
    with socket.socket(_family(listener.host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            s.bind((listener.host, listener.port))
        except OSError as err:
            where = f"{listener.host}:{listener.port}"
            if err.errno == errno.EADDRINUSE:
                raise BrokerError(
                    f"port {listener.port} is in use ({where}); pass --broker "
                    f"mqtt://localhost:{listener.port} to use the broker that is running there, "
                    "or --mqtt-port to pick another"
                ) from err
            raise BrokerError(f"mosquitto cannot listen on {where}: {err.strerror}") from err


def _with_intake(listeners: Sequence[Listener]) -> tuple[tuple[Listener, ...], int]:
    """The listeners plus, if none is plain and reachable on loopback, one for kilowatch's intake;
    and the intake listener's index."""
    for i, listener in enumerate(listeners):
        if listener.tls is None and (listener.loopback or listener.host in _WILDCARD_HOSTS):
            return tuple(listeners), i
    return (*listeners, Listener(host="127.0.0.1", port=0)), len(listeners)


def _backoff(minimum: float, maximum: float) -> Iterator[float]:
    """Endless jittered (±50 %), capped exponential delays: ~min, ~2·min ... ~max."""
    delay = minimum
    while True:
        yield delay * random.uniform(0.5, 1.5)  # jitter, not a secret
        delay = min(delay * 2, maximum)


def _fingerprint(records: Iterable[Credential]) -> str:
    """What decides the devices' lines of ``passwd`` and ``acl``, as one comparable string."""
    records = list(records)
    return render_password_file(records) + render_acl_file(records)


def _level(line: str) -> int:
    """The logging level of one mosquitto log line (it prints none on stderr)."""
    if line.startswith(("Error", "OpenSSL Error")):
        return logging.ERROR
    if line.startswith("Warning"):
        return logging.WARNING
    if BARRIER_CLIENT_ID in line or line.startswith(
        ("Saving in-memory database", "Client <unknown> closed its connection")
    ):
        return logging.DEBUG  # every autosave, readiness probe and reload barrier of ours
    return logging.INFO


# --- the supervisor -------------------------------------------------------------------------------


class ManagedMosquitto:
    """mosquitto run and supervised by kilowatch (an async context manager).

    ``store`` holds the devices' credentials (:mod:`kilowatch.broker.credentials`);
    ``listeners`` default to loopback port 1883. A plain listener on loopback (or on a wildcard
    address) serves kilowatch's intake; if there is none, one is added on a free loopback port.
    Raises :class:`BrokerError` when mosquitto is missing, a port is taken, or it does not accept
    connections within ``options.start_timeout_s``.
    """

    def __init__(
        self,
        data_dir: Path,
        store: Store,
        *,
        listeners: Sequence[Listener] = (Listener(),),
        options: MosquittoOptions = MosquittoOptions(),
        binary: Path | None = None,
    ) -> None:
        if not listeners:
            raise ConfigError("the managed mosquitto needs at least one listener")
        self.directory = broker_dir(data_dir)
        self.options = options
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        """The listeners; once started, with the ports picked for port 0."""
        self.user = SERVICE_USER
        self.password = ""
        """kilowatch's password, new at each start (only its hash is written)."""
        self.restarts = 0
        self._store = store
        self._binary = binary
        self._intake = 0
        self._access = Access("")
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._reloaded: asyncio.Future[None] | None = None
        self._running = asyncio.Event()
        self._ready = False
        self._loaded = ""
        self._reload_lock = asyncio.Lock()
        self._tasks: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    # -- what the intake needs --

    @property
    def host(self) -> str:
        """Where kilowatch's intake connects."""
        return self.listeners[self._intake].address

    @property
    def port(self) -> int:
        return self.listeners[self._intake].port

    @property
    def url(self) -> str:
        """``mqtt://kilowatch:<password>@127.0.0.1:<port>`` for kilowatch's intake."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{self.user}:{self.password}@{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The pid of mosquitto once it is ready (``None`` while it is down or starting again)."""
        proc = self._proc
        if proc is None or proc.returncode is not None or not self._ready:
            return None
        return proc.pid

    # -- lifecycle --

    async def __aenter__(self) -> Self:
        binary = self._binary or await asyncio.to_thread(find_mosquitto)
        if binary is None:
            raise BrokerError(
                f"{MOSQUITTO_MISSING}; install it (apt-get install mosquitto) or use "
                "--broker embedded"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        (self.directory / INCLUDE_DIR).mkdir(mode=0o700, exist_ok=True)
        await _stop_stale(self.directory, self.options.stop_timeout_s)
        self._prepare_listeners()
        self.password = generate_password()
        self._access = Access(
            mosquitto_hash(self.password),
            anonymous=all(x.loopback for x in self.listeners),
            owner=os.getpid(),
        )
        await self._write_files()
        self._stopping = False
        stack = contextlib.AsyncExitStack()
        self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self._stop)  # runs first: the TaskGroup waits for its tasks
        try:
            await self._spawn(binary)
        except BaseException:
            # Raised outside the TaskGroup, which would wrap it in an ExceptionGroup.
            await stack.aclose()
            raise
        self._supervisor = self._tasks.create_task(self._supervise(binary))
        if self.options.credentials_poll_s is not None:
            self._watcher = self._tasks.create_task(self._watch(self.options.credentials_poll_s))
        self._stack = stack
        log.info(
            "mosquitto started pid=%s listeners=%s",
            self.pid,
            ",".join(f"{x.host}:{x.port}{'/tls' if x.tls else ''}" for x in self.listeners),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # The caller's exception is not passed in: the TaskGroup would wrap it in an
            # ExceptionGroup, and it propagates by itself once we return.
            await stack.aclose()
        self._tasks = None
        log.info("mosquitto stopped")

    def _prepare_listeners(self) -> None:
        listeners, self._intake = _with_intake(self.listeners)
        listeners = tuple(
            replace(x, port=_free_port(x.host)) if x.port == 0 else x for x in listeners
        )
        for listener in listeners:
            _check_port_free(listener)
        self.listeners = listeners

    async def _write_files(self) -> None:
        records = list((await credentials(self._store)).values())
        self._loaded = _fingerprint(records)
        if not self._access.anonymous and not any(not r.revoked for r in records):
            log.warning(
                "mosquitto listens beyond loopback but no device has credentials: devices "
                "cannot connect until you run kilowatch broker user add DEVICE"
            )
        write_private(
            self.directory / CONFIG_FILE,
            render_config(self.directory, self.listeners, self.options, as_root=os.geteuid() == 0),
        )
        write_access_files(self.directory, records, self._access)
        a = self._access
        access = {"service_hash": a.service_hash, "anonymous": a.anonymous, "owner": a.owner}
        write_private(self.directory / ACCESS_FILE, json.dumps(access) + "\n")

    async def _spawn(self, binary: Path) -> None:
        """Start mosquitto and return once every listener accepts connections."""
        assert self._tasks is not None
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-c",
            str(self.directory / CONFIG_FILE),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # its own session: a Ctrl-C at the terminal reaches kilowatch, which stops it in order
            start_new_session=True,
            limit=1 << 20,
        )
        self._proc = proc
        self._ready = False
        self._running.clear()
        self._started_at = time.monotonic()
        assert proc.stdout is not None
        pump = self._tasks.create_task(self._pump(proc.stdout))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        try:
            await self._wait_ready(proc)
        except BaseException:
            await self._kill(proc)
            raise
        write_private(self.directory / PID_FILE, f"{proc.pid}\n")
        self._ready = True

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Until every listener accepts connections and mosquitto says it runs (bounded)."""
        deadline = time.monotonic() + self.options.start_timeout_s
        pending = list(self.listeners)
        while pending or not self._running.is_set():
            if pending and await self._accepts(pending[0]):
                pending.pop(0)
                continue
            if proc.returncode is not None:
                raise BrokerError(
                    f"mosquitto exited with code {proc.returncode} at start: {self._last_lines()}"
                )
            if time.monotonic() > deadline:
                waiting = (
                    f"{pending[0].host}:{pending[0].port} to accept connections"
                    if pending
                    else "its 'running' log line"
                )
                raise BrokerError(
                    f"mosquitto did not start within {self.options.start_timeout_s}s (waited "
                    f"for {waiting}): {self._last_lines()}"
                )
            await asyncio.sleep(PORT_POLL_S)

    @staticmethod
    async def _accepts(listener: Listener) -> bool:
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(listener.address, listener.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _last_lines(self) -> str:
        lines = [line for line in self._tail if not line.startswith("Warning: Mosquitto should")]
        return " | ".join(lines[-3:]) or "no log output"

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        """mosquitto's log lines into kilowatch's logging, until the process closes its output."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: skip it, keep reading
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self._tail.append(line)
            log.log(_level(line), "%s", line)
            if RUNNING_LINE.fullmatch(line):
                self._running.set()
            if line == RELOAD_LINE and self._reloaded is not None and not self._reloaded.done():
                self._reloaded.set_result(None)

    async def _supervise(self, binary: Path) -> None:
        """Start mosquitto again whenever it dies, after a jittered, capped exponential delay."""
        o = self.options
        delays = _backoff(o.backoff_min_s, o.backoff_max_s)
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            ran = time.monotonic() - self._started_at
            if ran >= STABLE_AFTER_S:
                delays = _backoff(o.backoff_min_s, o.backoff_max_s)
            delay = next(delays)
            self.restarts += 1
            log.warning(
                "mosquitto exited code=%s ran_s=%.1f restart=%d restart_in_s=%.2f last=%r",
                code,
                ran,
                self.restarts,
                delay,
                self._last_lines(),
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn(binary)
            except BrokerError as err:
                log.error("mosquitto restart failed restart=%d error=%r", self.restarts, str(err))
                continue
            log.info("mosquitto restarted pid=%s restart=%d", self.pid, self.restarts)

    async def reload(self) -> None:
        """Rewrite ``passwd`` and ``acl`` from the store and make mosquitto load them (SIGHUP),
        without a restart. Returns once mosquitto has reloaded: any CONNECT it reads from then on
        meets the new files, and clients whose user is gone have been disconnected.
        """
        async with self._reload_lock:
            await self._write_files()
            proc = self._proc
            if proc is None or proc.returncode is not None or not self._ready:
                return  # down or starting: it reads the new files as it starts
            self._reloaded = asyncio.get_running_loop().create_future()
            try:
                proc.send_signal(signal.SIGHUP)
                async with asyncio.timeout(RELOAD_TIMEOUT_S):
                    await self._reloaded
                    # mosquitto logs the line, then reloads; a SIGHUP that comes meanwhile is
                    # lost. It has one thread: its CONNACK to a CONNECT sent now comes after the
                    # reload has ended.
                    await self._barrier()
            except ProcessLookupError:
                return
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as err:
                raise BrokerError(
                    f"mosquitto (pid {proc.pid}) did not reload within {RELOAD_TIMEOUT_S}s "
                    f"({type(err).__name__}): {self._last_lines()}"
                ) from None
            finally:
                self._reloaded = None

    async def _barrier(self) -> None:
        """One MQTT round trip (CONNECT, CONNACK, DISCONNECT) as kilowatch's user."""
        listener = self.listeners[self._intake]
        reader, writer = await asyncio.open_connection(listener.address, listener.port)
        try:
            writer.write(
                encode_connect(
                    BARRIER_CLIENT_ID,
                    keepalive=10,
                    username=self.user,
                    password=self.password.encode(),
                )
            )
            await writer.drain()
            await reader.readexactly(4)  # CONNACK, whatever its code
            writer.write(encode_packet(PacketType.DISCONNECT))
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _watch(self, interval: float) -> None:
        """Reload whenever the store's credentials differ from what mosquitto loaded."""
        while True:
            await asyncio.sleep(interval)
            try:
                records = (await credentials(self._store)).values()
                if _fingerprint(records) == self._loaded:
                    continue
                log.info("broker credentials changed in the store; reloading mosquitto")
                await self.reload()
            except KilowatchError as err:
                log.warning("mosquitto credentials check failed error=%r", str(err))

    async def _stop(self) -> None:
        """Stop supervising, then mosquitto: SIGTERM, a bounded wait, SIGKILL."""
        self._stopping = True
        for task in (self._supervisor, self._watcher):
            if task is not None:
                task.cancel()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(self.options.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                log.warning(
                    "mosquitto did not stop within %ss of SIGTERM; killing it",
                    self.options.stop_timeout_s,
                )
                await self._kill(proc)
        (self.directory / PID_FILE).unlink(missing_ok=True)
        # Its last lines are in the pipe: read them to the end (the process is gone, so the
        # end is near), then stop reading whatever is left.
        if self._pumps:
            await asyncio.wait(set(self._pumps), timeout=1.0)
        for pump in list(self._pumps):
            pump.cancel()

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


__all__ = [
    "MOSQUITTO_MISSING",
    "MQTTS_PORT",
    "MQTT_PORT",
    "Access",
    "Listener",
    "ManagedMosquitto",
    "MosquittoOptions",
    "broker_dir",
    "find_mosquitto",
    "mosquitto_version",
    "reload_running",
    "render_config",
    "running_pid",
    "write_access_files",
]
