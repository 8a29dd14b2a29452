"""The MQTT intake: a paho-mqtt 2.x client that never loses a message.

- QoS 1 subscriptions on a persistent session (fixed client id, ``clean_session`` off, MQTT
  3.1.1 — the one version every broker we support speaks, NATS included), so what is published while
  kilowatch is down waits in the broker.
- Manual acknowledgements: a message is acknowledged (PUBACK) only after the batch that holds it
  has been committed to the store (:meth:`MqttIntake.ack`). A crash before that makes the broker
  redeliver it; the ledger makes a redelivery count nothing twice.
- paho is driven by the asyncio loop (``add_reader``/``add_writer`` and a keep-alive tick), not
  by paho's network thread: that costs ~20 % less CPU per message (``bench/README.md``) and no
  thread fights the loop for the interpreter. Only the blocking part, paho's ``connect`` (TCP +
  TLS handshake + CONNECT), runs in a worker thread; then the socket is handed to the loop.
  Received messages go to a buffer, the asyncio side takes whole batches with
  :meth:`MqttIntake.next_batch`.
- Reconnection is ours, not paho's: jittered, capped exponential backoff, each attempt logged.

paho exceptions never leave this module: they become :class:`BrokerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher

from kilowatch.errors import BrokerError

log = logging.getLogger("kilowatch.mqtt")

KEEPALIVE_S = 60
"""MQTT keep-alive; the broker drops us after 1.5× this without traffic (MQTT 3.1.1 §3.1.2.10)."""
CONNECT_TIMEOUT_S = 10.0
"""How long one TCP + TLS + CONNECT/CONNACK attempt may take."""
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
"""Reconnect delays double from BACKOFF_MIN_S up to BACKOFF_MAX_S, each with ±50 % jitter so that
many clients restarted together do not reconnect in lock-step."""
QOS = 1
LINGER_S = 0.01
LINGER_MIN = 20
"""A batch of at least this many messages means load: wait LINGER_S for more (see next_batch)."""
READS_PER_WAKEUP = 256
"""Packets read per readable event at most: fewer loop iterations per message under load, yet
the loop stays responsive (the rest is read on the next iteration)."""
MISC_INTERVAL_S = 1.0
"""How often paho's keep-alive bookkeeping (PINGREQ, dead-connection detection) runs at most
apart; short keep-alives tick more often (see MqttIntake._misc_interval)."""
MISC_PER_KEEPALIVE = 8
"""Ticks per keep-alive period at least. paho sends PINGREQ at the first tick at least a keep-alive
after the last one and the broker allows 1.5× keep-alive: a tick of keep-alive/8 leaves 3/8 of it
for a late tick on a loaded machine."""
DISCONNECT_FLUSH_S = 2.0
"""How long closing waits for the queued acknowledgements and DISCONNECT to be written."""


class Delivery(NamedTuple):
    """One received message and what it takes to acknowledge it."""

    topic: str
    payload: bytes
    received_at: float
    mid: int
    """Packet id of the PUBLISH on connection ``generation`` (0 for QoS 0: nothing to ack)."""
    generation: int


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """Where and how to connect. Built from :class:`kilowatch.service.config.Settings`."""

    host: str
    port: int
    client_id: str
    user: str | None = None
    password: str | None = None
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    keepalive: int = KEEPALIVE_S


class _NoTopicCallbacks(MQTTMatcher):
    """paho's table of per-topic ``on_message`` callbacks, for a client that never registers any.

    paho matches every incoming topic against that table (a trie walk through generators) before
    it calls ``on_message``: ~8 % of kilowatch's CPU per message while draining a backlog
    (py-spy, ``bench/ingest.py --drain``). We use ``on_message`` only, so the match is always empty.
    """

    def iter_match(self, topic: str) -> Any:
        """No per-topic callbacks: nothing ever matches."""
        return iter(())


RECV_BUFFER = 65536
"""Bytes asked of the socket per read (see _BufferedClient)."""


class _BufferedClient(paho.Client):
    """paho's client reading its socket through a buffer.

    paho reads every packet with several ``recv`` calls (1 byte of type, the length byte by byte,
    then the body): three system calls or more per message, ~15 % of kilowatch's CPU while
    draining a backlog (py-spy). Here one ``recv`` of up to :data:`RECV_BUFFER` bytes serves many
    packets. Bytes held here are invisible to the selector, like TLS's decrypted ones: the intake
    keeps reading while :attr:`buffered` is true.
    """

    _rdata = b""
    _rpos = 0

    @property
    def buffered(self) -> bool:
        """Whether received bytes wait here to be parsed."""
        return self._rpos < len(self._rdata)

    def drop_buffer(self) -> None:
        """Forget buffered bytes (a new connection must not read the old one's)."""
        self._rdata, self._rpos = b"", 0

    def _sock_recv(self, bufsize: int) -> bytes:
        data, pos = self._rdata, self._rpos
        if pos >= len(data):
            # raises BlockingIOError when nothing waits; b"" (closed) goes to paho unchanged
            data, pos = super()._sock_recv(RECV_BUFFER), 0
            if not data:
                self.drop_buffer()
                return data
        end = pos + bufsize
        self._rdata, self._rpos = data, end
        return data[pos:end]


def backoff_delays(
    *,
    minimum: float = BACKOFF_MIN_S,
    maximum: float = BACKOFF_MAX_S,
    rng: random.Random | None = None,
) -> Any:
    """Endless jittered, capped exponential delays: ~min, ~2·min, ~4·min ... ~max."""
    rng = rng or random.Random()
    delay = minimum
    while True:
        yield delay * rng.uniform(0.5, 1.5)
        delay = min(delay * 2, maximum)


def ssl_context(options: MqttOptions) -> ssl.SSLContext:
    """The TLS context for ``mqtts://``: system CAs or ``ca``, client cert, optional insecure."""
    try:
        ctx = ssl.create_default_context(cafile=str(options.ca) if options.ca else None)
        if options.cert is not None:
            ctx.load_cert_chain(str(options.cert), str(options.key) if options.key else None)
    except (OSError, ssl.SSLError) as err:
        raise BrokerError(
            f"cannot load the MQTT TLS files (mqtt_ca/mqtt_cert/mqtt_key): {err}"
        ) from err
    if options.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttIntake:
    """Subscribe to ``filters`` and hand batches of :class:`Delivery` to the asyncio side.

    Use as ``async with MqttIntake(options, filters) as intake`` and run :meth:`run` in the owner's
    TaskGroup; it connects, and reconnects whenever the connection drops, until cancelled.
    """

    def __init__(self, options: MqttOptions, filters: Sequence[str]) -> None:
        self.options = options
        self.filters = tuple(dict.fromkeys(filters))
        self.connected = asyncio.Event()
        """Set once the broker accepted the connection *and* our subscriptions (SUBACK)."""
        self._connack = asyncio.Event()
        self._lock = threading.Lock()
        self._buffer: list[Delivery] = []
        self._waiting = False
        self._stopped = False
        self._wakeup = asyncio.Event()
        self._lost = asyncio.Event()
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._make_client()
        self._refused: str | None = None
        self._sock: Any = None
        """The socket registered with the loop (reader, maybe writer), or ``None``."""
        self._writing = False
        self.received = 0
        self.acked = 0

    def _make_client(self) -> _BufferedClient:
        o = self.options
        client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
            reconnect_on_failure=False,  # we reconnect ourselves, with jitter and logs
        )
        if o.user is not None:
            client.username_pw_set(o.user, o.password)
        if o.tls:
            client.tls_set_context(ssl_context(o))
        client.max_queued_messages_set(0)
        if isinstance(getattr(client, "_on_message_filtered", None), MQTTMatcher):
            # never message_callback_add() on this client: see _NoTopicCallbacks
            client._on_message_filtered = _NoTopicCallbacks()  # type: ignore[no-untyped-call]
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send the acknowledgements still queued, disconnect, release the socket."""
        self._generation += 1
        if self._connack.is_set() and self._sock is not None:
            self._client.disconnect()
            # The loop writes the queued acks, then DISCONNECT; paho then closes the socket.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCONNECT_FLUSH_S):
                    while self._sock is not None and self._client.want_write():
                        await asyncio.sleep(0.005)
        self._detach()
        self.connected.clear()

    # -- socket <-> event loop ------------------------------------------------------------------

    def _attach(self) -> None:
        """Hand paho's freshly connected socket to the event loop."""
        client = self._client
        sock = client.socket()
        if sock is None or self._loop is None:
            return
        self._sock = sock
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._loop.add_reader(sock, self._on_readable)
        if client.want_write():
            self._on_register_write(client, None, sock)

    def _detach(self) -> None:
        """Take the socket off the loop; paho's callbacks off the client (a ``connect`` in a worker
        thread must never touch the loop)."""
        client = self._client
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock)
            if self._writing:
                self._loop.remove_writer(sock)
        self._writing = False

    def _on_readable(self) -> None:
        client = self._client
        before = self.received
        for _ in range(READS_PER_WAKEUP):
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                return
            if self.received == before:
                break  # nothing more waiting (or a control packet): back to the loop
            before = self.received
        sock = self._sock
        # Our buffer, or TLS, may hold bytes the selector cannot see: read them next iteration.
        if (
            client.buffered or (isinstance(sock, ssl.SSLSocket) and sock.pending())
        ) and self._loop is not None:
            self._loop.call_soon(self._on_readable)

    def _on_writable(self) -> None:
        self._client.loop_write()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._writing and sock is self._sock and self._loop is not None:
            self._writing = True
            self._loop.add_writer(sock, self._on_writable)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._writing and sock is self._sock and self._loop is not None:
            self._writing = False
            self._loop.remove_writer(sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:
            self._detach()

    def _misc_interval(self) -> float:
        keepalive = self.options.keepalive
        if keepalive <= 0:  # keep-alive off: the tick only notices nothing
            return MISC_INTERVAL_S
        return min(MISC_INTERVAL_S, keepalive / MISC_PER_KEEPALIVE)

    async def _keepalive(self) -> None:
        """paho's periodic work (PINGREQ, noticing a dead broker) until the connection is lost."""
        interval = self._misc_interval()
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._lost.wait()
            if self._sock is not None:
                self._client.loop_misc()

    # -- paho callbacks (on the event loop) ------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            return
        self._refused = None
        # Subscribing again is harmless when the broker kept the session, and needed when it did not
        # (expired, or a broker restart without persistence).
        client.subscribe([(f, QOS) for f in self.filters])
        session = "resumed" if flags.session_present else "new"
        self._call_soon(self._connack.set)
        log.info(
            "mqtt connected host=%s port=%s client_id=%s session=%s",
            self.options.host, self.options.port, self.options.client_id, session,
        )  # fmt: skip

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        refused = [f for f, r in zip(self.filters, reasons, strict=False) if r.is_failure]
        if refused:
            log.error("mqtt broker refused subscriptions filters=%s", ",".join(refused))
        log.info("mqtt subscribed filters=%d refused=%d", len(self.filters), len(refused))
        # Connected means subscribed: what is published from now on reaches us.
        self._call_soon(self.connected.set)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._call_soon(self._connection_lost)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received += 1
        delivery = Delivery(
            msg.topic, bytes(msg.payload), time.time(), msg.mid if msg.qos else 0, self._generation
        )
        with self._lock:
            self._buffer.append(delivery)
            wake = self._waiting
            self._waiting = False
        if wake:
            # One wake-up per burst: the asyncio side takes everything that piled up meanwhile.
            self._wakeup.set()

    def _call_soon(self, fn: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    # -- asyncio side ---------------------------------------------------------------------------

    def _connection_lost(self) -> None:
        self.connected.clear()
        self._connack.clear()
        self._lost.set()

    def stop_taking(self) -> None:
        """Make :meth:`next_batch` return ``[]`` from now on (shutdown: the pipeline drains)."""
        self._stopped = True
        self._wakeup.set()

    async def next_batch(self, max_items: int) -> list[Delivery]:
        """Wait for messages, then return up to ``max_items`` of them (whatever has arrived).

        Under load (at least :data:`LINGER_MIN` waiting, fewer than ``max_items``) it first lingers
        :data:`LINGER_S` so that the loop's socket reader takes in more: bigger batches cost the
        store far less per message. A trickle is not delayed.
        Returns ``[]`` once :meth:`stop_taking` was called.
        """
        lingered = False
        while not self._stopped:
            with self._lock:
                n = len(self._buffer)
                if n and (lingered or n >= max_items or n < LINGER_MIN):
                    batch = self._buffer[:max_items]
                    del self._buffer[:max_items]
                    return batch
                if not n:
                    self._waiting = True
                    self._wakeup.clear()
            if n:
                lingered = True
                await asyncio.sleep(LINGER_S)
            else:
                await self._wakeup.wait()
        return []

    def take_pending(self) -> list[Delivery]:
        """Everything received and not yet taken (for the final flush at shutdown)."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        return batch

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge committed messages (an earlier connection's are redelivered anyway)."""
        generation = self._generation
        ack = self._client.ack
        n = 0
        for d in deliveries:
            if d.mid and d.generation == generation:
                ack(d.mid, QOS)
                n += 1
        self.acked += n

    async def run(self) -> None:
        """Connect, and reconnect with jittered capped exponential backoff, until cancelled."""
        delays = backoff_delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._connect_once()
            except BrokerError as err:
                delay = next(delays)
                log.warning(
                    "mqtt connect failed attempt=%d error=%r retry_in_s=%.2f",
                    attempt,
                    str(err),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            delays = backoff_delays()
            await self._keepalive()
            self._detach()
            delay = next(delays)
            log.warning("mqtt connection lost retry_in_s=%.2f", delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        o = self.options
        self._lost.clear()
        self._connack.clear()
        self._generation += 1
        self._detach()  # the blocking connect below closes the old socket: off the loop first
        self._client.drop_buffer()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                rc = await asyncio.to_thread(self._client.connect, o.host, o.port, o.keepalive)
        except (OSError, TimeoutError, ssl.SSLError) as err:
            raise BrokerError(f"cannot connect to MQTT broker {o.host}:{o.port}: {err}") from err
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(
                f"cannot connect to MQTT broker {o.host}:{o.port}: {paho.error_string(rc)}"
            )
        self._attach()
        # CONNACK, not SUBACK: a resumed session's backlog is sent before the SUBACK, and reading
        # it may take longer than any connect timeout.
        connected = asyncio.create_task(self._connack.wait())
        lost = asyncio.create_task(self._lost.wait())
        try:
            # FIRST_COMPLETED: the default (all of them) waited out the whole timeout on every
            # connection, and with it the keep-alive tick: no PINGREQ for the first 10 s, so a
            # broker dropped a connection with a keep-alive under ~7 s (1.5× rule) while it idled.
            done, _ = await asyncio.wait(
                {connected, lost}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            connected.cancel()
            lost.cancel()
        if connected not in done:
            self._client.disconnect()
            self._detach()
            why = self._refused or "no CONNACK"
            raise BrokerError(f"MQTT broker {o.host}:{o.port} refused the connection: {why}")


__all__ = ["Delivery", "MqttIntake", "MqttOptions", "backoff_delays", "ssl_context"]
