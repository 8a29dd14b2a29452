"""The embedded MQTT 3.1.1 broker (``kilowatch serve --broker embedded``).

A small, in-memory broker for one home's meters: QoS 0, 1 and 2, retained messages,
last wills, persistent sessions with bounded queues, optional passwords and TLS. See
``docs/broker.md`` for what it does and does not do.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kilowatch.broker.embedded.acl import Acl, UserAcl
from kilowatch.broker.embedded.auth import Authenticator
from kilowatch.broker.embedded.connection import Connection, State
from kilowatch.broker.embedded.session import BrokerCounters, Message, Session
from kilowatch.errors import BrokerError
from kilowatch.mqtt.packets import ConnectReturnCode, encode_connack
from kilowatch.mqtt.topics import SubscriptionTree, topic_matches

log = logging.getLogger("kilowatch.broker")

DEFAULT_PORT = 1883
# 256 KiB: a Shelly NotifyFullStatus is a few KiB; anything this big is a mistake or an attack.
DEFAULT_MAX_PACKET_SIZE = 256 * 1024
# Per offline persistent session. A busy home (20 meters, one message every 5 s) produces ~350 000
# messages a day, so this holds about three days of an intake that is down; ~1 KiB each is ~1 GiB
# worst
# case. Beyond it the oldest message is dropped, counted and logged.
DEFAULT_MAX_QUEUED_MESSAGES = 1_000_000
# QoS 1/2 messages sent to one client and not yet acknowledged (mosquitto's default is 20). paho
# acknowledges one packet per loop pass, so a small window stalls a busy subscriber: bench/broker.py
# measured about 1.2-1.8k msg/s with 100 and 2.2-2.4k msg/s with 1000 on a loaded 2-core machine.
DEFAULT_MAX_INFLIGHT_MESSAGES = 1000
# A client must send CONNECT this soon after the TCP (and TLS) connection is up.
CONNECT_TIMEOUT_S = 10.0
# How often keepalive and CONNECT deadlines are checked.
SWEEP_INTERVAL_S = 0.25
# §3.1.2.10: a client silent for 1.5 times its keepalive is disconnected.
KEEPALIVE_GRACE = 1.5
# A persistent session whose client has been away this long is discarded with its queue (mosquitto's
# persistent_client_expiration, which is off by default there). A week covers a device or a Home
# Assistant switched off for a holiday; whoever is away longer reconnects to a fresh session and
# resubscribes, and cumulative meters lose no energy with the dropped messages.
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600.0
# How often offline sessions are checked for expiry (by the broker's clock).
SESSION_EXPIRY_CHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """A snapshot of the broker's counters."""

    messages_in: int  # messages published: client PUBLISHes (not resent QoS 2 duplicates) and wills
    messages_out: int  # PUBLISH packets sent to subscribers, redeliveries included
    messages_dropped: int  # queued messages dropped because a session's queue was full
    messages_queued: int  # messages waiting in session queues right now
    clients_connected: int
    connections_total: int
    protocol_errors: int
    publishes_denied: int  # PUBLISHes outside the sender's ACL (each closed its connection)
    sessions: int
    sessions_expired: int  # persistent sessions discarded after session_expiry_s offline
    subscriptions: int
    retained: int


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as reachable


def server_tls_context(cert: str | Path, key: str | Path | None = None) -> ssl.SSLContext:
    """A TLS server context from PEM files: the certificate (chain first, then intermediates) and
    its unencrypted private key (read from ``cert`` when ``key`` is None).

    Raises :class:`BrokerError` naming the files and what is wrong with them.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2 or later
    where = f"{cert}" + (f" and {key}" if key is not None else "")

    def no_passphrase() -> bytes:
        # Without this OpenSSL would prompt on the terminal for an encrypted key's passphrase.
        raise BrokerError(
            f"the embedded broker's TLS key ({key or cert}) is encrypted; give it unencrypted "
            "(openssl pkey -in KEY -out PLAIN_KEY), readable by kilowatch only"
        )

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except OSError as err:
        if isinstance(err, ssl.SSLError):
            problem = (
                "the private key is not the certificate's"
                if err.reason == "KEY_VALUES_MISMATCH"
                else f"no PEM certificate and private key found in them ({err.reason or err})"
            )
            raise BrokerError(
                f"the embedded broker's TLS certificate and key ({where}) do not load: {problem}"
            ) from err
        raise BrokerError(
            f"cannot read the embedded broker's TLS certificate or key ({where}): "
            f"{err.strerror or err}"
        ) from err
    return context


class EmbeddedBroker:
    """An MQTT 3.1.1 broker running in the current event loop.

    ``async with EmbeddedBroker(port=0) as broker:`` listens until the block ends;
    ``broker.port`` is the port actually bound. Binding beyond loopback requires ``users`` or
    ``password_file`` (:class:`BrokerError` otherwise, from the constructor).

    Args:
        host: address to bind; ``127.0.0.1`` by default.
        port: TCP port; 0 lets the OS choose.
        users: user name → plain password.
        password_file: mosquitto's password file format (``user:$7$...`` lines from
            ``mosquitto_passwd``; see :mod:`kilowatch.broker.embedded.auth`).
        ssl_context: serve MQTT over TLS with this server context (see :func:`server_tls_context`):
            on ``port`` alone, or, with ``tls_port``, on that port beside plain MQTT on ``port``.
        tls_port: the TLS listener's port when ``port`` stays plain MQTT; 0 lets the OS choose.
        max_packet_size: larger packets close the sender's connection.
        max_queued_messages: per-session queue bound; beyond it the oldest message is dropped.
        max_inflight_messages: unacknowledged QoS 1 and 2 messages per client.
        session_expiry_s: a persistent session whose client has been disconnected this long is
            discarded, its queued messages with it; ``None``: never.
        clock: monotonic seconds, for session expiry (tests inject their own).
        acl: per-user topic rules and the users' hashes, from the store's broker credentials
            (:meth:`Acl.from_credentials <kilowatch.broker.embedded.acl.Acl.from_credentials>`):
            a device publishing outside its topics is disconnected, a subscription outside them
            gets 0x80, a revoked device is refused. ``None``: every client may do everything.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        users: Mapping[str, str] | None = None,
        password_file: str | Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls_port: int | None = None,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES,
        max_inflight_messages: int = DEFAULT_MAX_INFLIGHT_MESSAGES,
        session_expiry_s: float | None = DEFAULT_SESSION_EXPIRY_S,
        clock: Callable[[], float] = time.monotonic,
        acl: Acl | None = None,
    ) -> None:
        for number in (port, tls_port):
            if number is not None and not 0 <= number <= 65535:
                raise BrokerError(
                    f"invalid broker port {number}; use 1-65535 (or 0 for any free port)"
                )
        if tls_port is not None and ssl_context is None:
            raise BrokerError("tls_port needs an ssl_context (the listener's certificate and key)")
        if not 1 <= max_inflight_messages <= 65000:
            raise BrokerError(f"max_inflight_messages must be 1-65000, not {max_inflight_messages}")
        if max_packet_size < 64 or max_queued_messages < 1:
            raise BrokerError("max_packet_size must be >= 64 and max_queued_messages >= 1")
        if session_expiry_s is not None and not session_expiry_s > 0:
            raise BrokerError(
                f"session_expiry_s must be > 0 (or None: never), not {session_expiry_s}"
            )
        self.host = "127.0.0.1" if host == "localhost" else host
        self._requested_port = port
        self.acl = acl
        self.auth = Authenticator(
            users, password_file, hashes=None if acl is None else acl.password_hashes
        )
        if not _is_loopback(self.host) and not self.auth.enabled:
            raise BrokerError(
                f"the embedded broker would listen on {self.host or '0.0.0.0'}, which other "
                "machines can reach, without credentials; give it users with --mqtt-password-file "
                "FILE (lines made by mosquitto_passwd) or --mqtt-user and --mqtt-password, or bind "
                "it to 127.0.0.1 with --mqtt-host"
            )
        self.ssl_context = ssl_context
        # Per listener: (requested port, TLS context or None, the flag that sets the port). The
        # first is the main one (port, url).
        self._listeners = [(port, ssl_context if tls_port is None else None, "--mqtt-port")]
        if tls_port is not None:
            self._listeners.append((tls_port, ssl_context, "--mqtt-tls-port"))
        self.max_packet_size = max_packet_size
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.session_expiry_s = session_expiry_s
        self._clock = clock
        self._next_expiry_check = clock() + SESSION_EXPIRY_CHECK_S
        self.counters = BrokerCounters()
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.tree = SubscriptionTree()
        self.connections: set[Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._stack: AsyncExitStack | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the broker runs in (set on enter)."""
        if self._loop is None:
            raise BrokerError(
                "the broker is not running; use it as 'async with EmbeddedBroker(...)'"
            )
        return self._loop

    def _bound_port(self, index: int) -> int:
        if index < len(self._servers) and self._servers[index].sockets:
            port: int = self._servers[index].sockets[0].getsockname()[1]
            return port
        return self._listeners[index][0]

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (the OS's choice when created with port 0)."""
        return self._bound_port(0)

    @property
    def tls_port(self) -> int | None:
        """The port of the TLS listener (``port`` itself when it is the only one), else None."""
        for index, (_, context, _) in enumerate(self._listeners):
            if context is not None:
                return self._bound_port(index)
        return None

    def _url(self, scheme: str, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}"

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (``mqtts://`` with TLS) of this broker, without credentials."""
        return self._url("mqtt" if self._listeners[0][1] is None else "mqtts", self.port)

    @property
    def tls_url(self) -> str | None:
        """``mqtts://host:port`` of the TLS listener, if there is one."""
        port = self.tls_port
        return None if port is None else self._url("mqtts", port)

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        # Listen before the TaskGroup exists, which would wrap a bind error in an ExceptionGroup.
        try:
            for port, context, flag in self._listeners:
                self._servers.append(await self._listen(port, context, flag))
        except BaseException:
            await self._close_server()
            raise
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._close_server)
            self._tg = await stack.enter_async_context(asyncio.TaskGroup())
            self.spawn(self._sweep())
            urls = [self.url] + (
                [self.tls_url] if len(self._listeners) > 1 and self.tls_url else []
            )
            log.info("embedded MQTT broker listening on %s", " and ".join(urls))
            self._stack = stack.pop_all()
        return self

    async def _listen(self, port: int, context: ssl.SSLContext | None, flag: str) -> asyncio.Server:
        try:
            return await self.loop.create_server(
                lambda: Connection(self), self.host or None, port, ssl=context
            )
        except OSError as err:
            scheme = "mqtt" if context is None else "mqtts"
            if err.errno == errno.EADDRINUSE:
                raise BrokerError(
                    f"port {port} is in use; pass --broker {scheme}://localhost:{port} to use the "
                    f"broker that is running there, or {flag} to pick another"
                ) from err
            raise BrokerError(
                f"the embedded broker cannot listen on {self.host}:{port}: {err.strerror or err}; "
                f"check --mqtt-host and {flag}"
            ) from err

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close("broker shutting down", will=False)
        for task in list(self._tasks):
            task.cancel()
        stack, self._stack = self._stack, None
        if stack is not None:
            # The caller's exception is not passed in: the TaskGroup would wrap it in an
            # ExceptionGroup, and it propagates by itself once we return.
            await stack.aclose()
        self._tg = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        log.info("embedded MQTT broker stopped")

    async def _close_server(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the broker's TaskGroup; it is cancelled when the broker stops."""
        if self._tg is None:
            coro.close()
            return
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        """Close clients silent for 1.5× their keepalive, or that never sent CONNECT; every
        ``SESSION_EXPIRY_CHECK_S`` (by the broker's clock), expire offline persistent sessions."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            for conn in list(self.connections):
                try:
                    self._check_deadlines(conn, now)
                except Exception:  # a bug must cost one connection, never the broker
                    log.exception(
                        "client %r (%s): internal error; closing", conn.client_id, conn.peer
                    )
                    conn.close("internal error", will=False)
            if self._clock() >= self._next_expiry_check:
                self._next_expiry_check = self._clock() + SESSION_EXPIRY_CHECK_S
                self.expire_sessions()

    def expire_sessions(self) -> int:
        """Discard the persistent sessions offline for longer than ``session_expiry_s``, with
        their queues; return how many. The broker calls it periodically."""
        if self.session_expiry_s is None:
            return 0
        deadline = self._clock() - self.session_expiry_s
        expired = [
            s
            for s in self.sessions.values()
            if s.conn is None and s.offline_since is not None and s.offline_since <= deadline
        ]
        for session in expired:
            queued = len(session.queue) + len(session.inflight)
            log.log(
                logging.WARNING if queued else logging.INFO,
                "client %r: persistent session expired after %g s offline (session_expiry_s); "
                "%d undelivered messages discarded",
                session.client_id, self.session_expiry_s, queued,
            )  # fmt: skip
            self._discard(session)
        self.counters.sessions_expired += len(expired)
        return len(expired)

    @staticmethod
    def _check_deadlines(conn: Connection, now: float) -> None:
        if conn.state is State.CONNECTED:
            if conn.keepalive and now - conn.last_seen > KEEPALIVE_GRACE * conn.keepalive:
                conn.close(f"keepalive ({conn.keepalive} s) expired", will=True)
        elif conn.state is State.NEW and now - conn.opened_at > CONNECT_TIMEOUT_S:
            conn.close("no CONNECT", will=False)

    # --- statistics -------------------------------------------------------------------------------

    @property
    def stats(self) -> BrokerStats:
        """Counters right now."""
        c = self.counters
        return BrokerStats(
            messages_in=c.messages_in,
            messages_out=c.messages_out,
            messages_dropped=c.messages_dropped,
            messages_queued=sum(len(s.queue) for s in self.sessions.values()),
            clients_connected=sum(1 for s in self.sessions.values() if s.conn is not None),
            connections_total=c.connections_total,
            protocol_errors=c.protocol_errors,
            publishes_denied=c.publishes_denied,
            sessions=len(self.sessions),
            sessions_expired=c.sessions_expired,
            subscriptions=len(self.tree),
            retained=len(self.retained),
        )

    # --- called by connections --------------------------------------------------------------------

    def want_flush(self, conn: Connection) -> None:
        """Write ``conn``'s pending output at the end of this loop iteration, with the others'."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def connection_opened(self, conn: Connection) -> None:
        """Track a new TCP connection (for keepalive checks and shutdown)."""
        self.connections.add(conn)
        self.counters.connections_total += 1

    def connection_closed(self, conn: Connection, *, publish_will: bool) -> None:
        """Detach a closed connection from its session and publish its will if asked."""
        self.connections.discard(conn)
        session = conn.session
        if session is not None and session.conn is conn:
            session.conn = None
            if session.clean:
                self._discard(session)
            else:
                session.offline_since = self._clock()
        will = conn.will
        conn.will = None
        if publish_will and will is not None:
            self.publish(will.topic, will.payload, will.qos, will.retain)

    def new_client_id(self) -> str:
        """An id for a client that connected with an empty one (§3.1.3-6)."""
        while True:
            client_id = f"kilowatch-auto-{secrets.token_hex(8)}"
            if client_id not in self.sessions:
                return client_id

    async def check_credentials(
        self, username: str | None, password: bytes | None
    ) -> ConnectReturnCode:
        """The CONNACK code for a user name and password (accepted when no user is configured)."""
        if self.acl is not None and self.acl.is_revoked(username):
            return ConnectReturnCode.NOT_AUTHORIZED
        if not self.auth.enabled:
            return ConnectReturnCode.ACCEPTED
        if username is None:
            return ConnectReturnCode.NOT_AUTHORIZED
        if password is None or not await self.auth.verify(username, password):
            return ConnectReturnCode.BAD_USERNAME_OR_PASSWORD
        return ConnectReturnCode.ACCEPTED

    def user_acl(self, username: str | None) -> UserAcl | None:
        """The topic rule of an accepted user, or None when it may do everything."""
        return None if self.acl is None else self.acl.for_user(username)

    def attach(self, conn: Connection, *, clean: bool) -> None:
        """Give an accepted connection its session, taking over any connection with the same id."""
        client_id = conn.client_id
        existing = self.sessions.get(client_id)
        if existing is not None and existing.conn is not None:
            # §3.1.4-2: the server disconnects the existing client; it did not DISCONNECT, so its
            # will goes.
            existing.conn.close("taken over by a new connection", will=True)
            existing = self.sessions.get(client_id)
        present = False
        if existing is not None and (clean or existing.clean):
            self._discard(existing)
            existing = None
        if existing is None:
            session = Session(
                client_id,
                clean=clean,
                max_inflight=self.max_inflight_messages,
                max_queued=self.max_queued_messages,
                counters=self.counters,
            )
            self.sessions[client_id] = session
        else:
            session = existing
            present = True
        conn.session = session
        conn.write(encode_connack(present, ConnectReturnCode.ACCEPTED))
        log.debug("client %r (%s) connected, session present: %s", client_id, conn.peer, present)
        session.resume(conn)

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.tree.remove(topic_filter, session.client_id)
        session.subscriptions.clear()
        session.queue.clear()
        session.inflight.clear()
        session.qos2_ids.clear()
        session.released.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def subscribe(self, session: Session, topic_filter: str, qos: int) -> None:
        """Add (or replace) a subscription of ``session``."""
        session.subscriptions[topic_filter] = qos
        self.tree.add(topic_filter, session.client_id, qos)

    def unsubscribe(self, session: Session, topic_filter: str) -> None:
        """Remove a subscription of ``session`` if it has it."""
        if session.subscriptions.pop(topic_filter, None) is not None:
            self.tree.remove(topic_filter, session.client_id)

    def send_retained(self, session: Session, topic_filter: str, qos: int) -> None:
        """Deliver the retained messages a new subscription matches (§3.3.1.3)."""
        for topic, message in self.retained.items():
            if topic_matches(topic_filter, topic):
                session.deliver(message, min(qos, message.qos))

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Route one application message to every matching session; keep or clear it if retained."""
        self.counters.messages_in += 1
        if retain:
            if payload:
                self.retained[topic] = Message(topic, payload, qos, True)
            else:
                # §3.3.1.3: an empty retained message clears the topic
                self.retained.pop(topic, None)
        subscribers = self.tree.match(topic)
        if not subscribers:
            return
        # §3.3.1.3: a message forwarded to existing subscriptions goes out with RETAIN 0.
        message = Message(topic, payload, qos, False)
        sessions = self.sessions
        for client_id, granted in subscribers.items():
            session = sessions.get(client_id)
            if session is not None:
                session.deliver(message, granted if granted < qos else qos)
