"""Shelly RPC over MQTT, for devices kilowatch cannot reach on the LAN (a remote site behind NAT
whose devices talk to the broker): :class:`MqttRpc`, one paho-mqtt connection shared by every
device's :class:`~kilowatch.fleet.rpc.base.ShellyRpc` (shelly-api.md §7.3).

A request frame ``{id, src, method, params}`` is published with QoS 1 on ``<prefix>/rpc``; the
device answers on ``<src>/rpc``. Each device's transport has its own ``src``,
``<prefix>/kilowatch-<random>-<n>``, *under the device's own prefix*, and subscribes to exactly its
reply topic ``<prefix>/kilowatch-<random>-<n>/rpc`` (one SUBSCRIBE before its first call, one
UNSUBSCRIBE at close). Why under the prefix: the managed mosquitto lets a device's user write only
``<prefix>/#`` (``kilowatch.broker.credentials.topics_for``); a reply on any other topic (say
``kilowatch/rpc``) is dropped by the broker's ACL and the call would only time out. A prefix may
hold ``/`` (``site1/boiler``), so no single wildcard filter such as ``+/kilowatch-x/rpc`` covers
every reply topic; one exact filter per device does. ``tests/fleet/test_rpc_mqtt.py`` checks this
against the managed mosquitto's real ACL: the reply under the prefix arrives, one outside it does
not. The firmware (and the simulator, ``shellysim/mqtt.py``) publishes the reply on ``<src>/rpc``
whatever ``src`` holds, ``/`` included.

Replies are matched by ``id`` (unique on the connection). Every wait is bounded: the first
CONNACK, each call's answer (its ``timeout``), the SUBACK before a device's first call, closing.
When the connection drops, every call waiting for an answer fails with
:class:`~kilowatch.errors.DeviceConnectionError`, calls made while it is down fail at once the same
way, and the client reconnects by itself with jittered, capped exponential backoff, each attempt
logged; a device's next call after that subscribes again.

paho is driven by the asyncio loop as in ``kilowatch.intake.client`` (``add_reader`` /
``add_writer`` and a keep-alive tick; only paho's blocking ``connect`` runs in a worker thread),
so every paho callback runs on the event loop. paho's exceptions never leave this module.

Devices announce themselves on ``<prefix>/online`` (``true`` when they connect, ``false`` as
their will, retained, §7.2): :meth:`MqttRpc.online_prefixes` lists the prefixes online now.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, Self

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from kilowatch.errors import (
    BrokerError,
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
    FleetError,
    RpcCallError,
)
from kilowatch.fleet.rpc.base import CALL_TIMEOUT_S, DEVICE_CONCURRENCY, Listener, ShellyRpc

log = logging.getLogger(__name__)

MqttVersion = Literal["3.1.1", "5"]

MQTT_PORT = 1883
KEEPALIVE_S = 60
"""MQTT keep-alive; the broker drops us after 1.5x this without traffic (MQTT 3.1.1 §3.1.2.10)."""
CONNECT_TIMEOUT_S = 10.0
"""How long one TCP + TLS + CONNECT/CONNACK attempt, or one SUBSCRIBE/SUBACK, may take."""
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
"""Reconnect delays double from BACKOFF_MIN_S up to BACKOFF_MAX_S, each with ±50 % jitter."""
MISC_INTERVAL_S = 1.0
"""How often paho's keep-alive bookkeeping (PINGREQ, dead-connection detection) runs at most
apart (and at least 8 times per keep-alive)."""
CLOSE_TIMEOUT_S = 2.0
"""How long closing waits for DISCONNECT to be written."""
QOS = 1
"""The device's only QoS (§7.1)."""
MAX_INFLIGHT = 256
"""QoS 1 requests paho leaves unacknowledged at once (paho's default is 20; more wait in its
queue). 500 devices with 3 calls each keep the broker's acknowledgements flowing."""
MAX_PREFIX = 300
"""Shelly's limit for ``topic_prefix`` (§7.1)."""
ONLINE = "online"
"""The last topic level of a device's availability, ``<prefix>/online`` (§7.3)."""
EVENTS = "events/rpc"
"""Where a device publishes its notifications, ``<prefix>/events/rpc`` (§7.3)."""


class MqttRpc:
    """One MQTT connection carrying RPC to many Shelly devices; an async context manager.

    ``async with MqttRpc("broker", 1883, username=..., password=...) as mqtt:`` then
    ``async with mqtt.device("shellypmminig3-ecda3bc4ddb0") as rpc: await rpc.get_status()``.
    Entering connects (:class:`~kilowatch.errors.BrokerError` if the broker cannot be reached or
    refuses, within :data:`CONNECT_TIMEOUT_S`); leaving fails whatever still waits and disconnects.

    ``tls``: an SSL context for ``mqtts`` (its CA, hostname check and client certificate are the
    caller's choice); ``version``: MQTT ``"3.1.1"`` (default) or ``"5"``. The session is clean:
    replies are only awaited on the connection that sent the request.
    """

    def __init__(
        self,
        host: str,
        port: int = MQTT_PORT,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        client_id: str | None = None,
        version: MqttVersion = "3.1.1",
        keepalive: int = KEEPALIVE_S,
    ) -> None:
        self.host = host
        self.port = port
        self.version = version
        self.keepalive = keepalive
        self.token = secrets.token_hex(4)
        """Random part of every ``src`` this connection uses (``kilowatch-<token>-<n>``)."""
        self.client_id = client_id or f"kilowatch-rpc-{self.token}"
        self._client = self._make_client(username, password, tls)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sock: Any = None
        self._writing = False
        self._socket_closed = asyncio.Event()
        self._connack: asyncio.Future[str | None] | None = None
        self._up = False
        self._lost = asyncio.Event()
        self._routes: dict[str, _MqttTransport] = {}
        self._listeners: dict[str, list[Listener]] = {}
        """``<prefix>/events/rpc`` → who listens to that device's notifications."""
        self._subacks: dict[int, asyncio.Future[bool]] = {}
        self._online: dict[str, bytes] | None = None
        self._online_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._serials = itertools.count(1)
        self._stack: contextlib.AsyncExitStack | None = None
        self._runner: asyncio.Task[None] | None = None

    def _make_client(
        self, username: str | None, password: str | None, tls: ssl.SSLContext | None
    ) -> paho.Client:
        v5 = self.version == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            # MQTT 5 has clean start instead, given at connect (paho refuses clean_session)
            clean_session=None if v5 else True,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,  # we reconnect ourselves, with jitter and logs
        )
        client.connect_timeout = CONNECT_TIMEOUT_S  # bounds the worker thread's connect itself
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set_context(tls)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    @property
    def broker(self) -> str:
        """``host:port``, for messages."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the connection and it has not dropped since."""
        return self._up

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._connect()
        stack = contextlib.AsyncExitStack()
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        self._runner = tasks.create_task(self._run())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            self._runner.cancel()
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._runner = None
        self._connection_lost(f"the connection to the MQTT broker {self.broker} was closed")
        await self._hang_up()

    async def _run(self) -> None:
        """Keep the connection: paho's keep-alive while up, then reconnect with backoff."""
        while True:
            await self._keepalive()
            self._detach()
            delays = _backoff_delays()
            for attempt in itertools.count(1):
                delay = next(delays)
                log.warning(
                    "mqtt rpc connection lost broker=%s attempt=%d retry_in_s=%.2f",
                    self.broker, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except BrokerError as err:
                    log.warning("mqtt rpc reconnect failed broker=%s error=%s", self.broker, err)
                    continue
                log.info("mqtt rpc reconnected broker=%s", self.broker)
                break

    async def _connect(self) -> None:
        """One attempt: TCP (+TLS) and CONNECT in a worker thread, then CONNACK on the loop."""
        assert self._loop is not None
        self._lost.clear()
        self._detach()  # paho's connect closes the old socket: off the loop first
        self._connack = self._loop.create_future()
        kwargs: dict[str, Any] = {"clean_start": True} if self.version == "5" else {}
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
                rc = await asyncio.to_thread(
                    self._client.connect, self.host, self.port, self.keepalive, **kwargs
                )
        except (OSError, TimeoutError, ValueError) as err:
            raise BrokerError(
                f"cannot connect to the MQTT broker {self.broker}: {err}; is it running there?"
            ) from err
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(
                f"cannot connect to the MQTT broker {self.broker}: {paho.error_string(rc)}"
            )
        self._attach()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                refused = await self._connack
        except TimeoutError:
            refused = f"no CONNACK within {CONNECT_TIMEOUT_S:g} s"
        if refused is not None:
            await self._hang_up()
            raise BrokerError(
                f"the MQTT broker {self.broker} refused the connection: {refused}; check the "
                "user name and password"
            )
        log.info("mqtt rpc connected broker=%s client_id=%s", self.broker, self.client_id)

    async def _hang_up(self) -> None:
        """Send DISCONNECT (bounded) and release the socket."""
        if self._sock is not None:
            self._socket_closed.clear()
            if self._client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await self._socket_closed.wait()  # paho closes it once DISCONNECT is out
        self._detach()
        sock = self._client.socket()
        if sock is not None:
            sock.close()  # DISCONNECT could not be sent: drop the connection anyway

    async def _keepalive(self) -> None:
        """paho's periodic work (PINGREQ, noticing a dead broker) until the connection is lost."""
        interval = (
            MISC_INTERVAL_S if self.keepalive <= 0 else min(MISC_INTERVAL_S, self.keepalive / 8)
        )
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._lost.wait()
            if self._sock is not None:
                self._client.loop_misc()

    # --- socket <-> event loop ------------------------------------------------------------------

    def _attach(self) -> None:
        client, loop = self._client, self._loop
        sock = client.socket()
        if sock is None or loop is None:
            return
        self._sock = sock
        if isinstance(sock, socket.socket):  # an SSLSocket too
            # paho leaves Nagle on: a request written while the broker's last packet is not yet
            # acknowledged waits for the peer's delayed ACK, ~40 ms per call on Linux
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        loop.add_reader(sock, self._on_readable)
        if client.want_write():
            self._on_register_write(client, None, sock)

    def _detach(self) -> None:
        """Take the socket off the loop, and paho's socket callbacks off the client (a connect in
        a worker thread must never touch the loop)."""
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
        # paho reads as many packets as QoS flows are open, and stops early when none wait
        self._client.loop_read()
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending() and self._loop is not None:
            self._loop.call_soon(self._on_readable)  # decrypted bytes the selector cannot see

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
        self._socket_closed.set()

    # --- paho callbacks (on the event loop) ------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        connack = self._connack
        if reason.is_failure:
            if connack is not None and not connack.done():
                connack.set_result(str(reason))
            return
        self._up = True
        if connack is not None and not connack.done():
            connack.set_result(None)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if threading.get_ident() != self._loop_thread:
            # a connect in the worker thread closing the old socket: that loss was handled
            return
        self._connection_lost(f"the connection to the MQTT broker {self.broker} dropped ({reason})")

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        done = self._subacks.pop(mid, None)
        if done is not None and not done.done():
            done.set_result(not any(r.is_failure for r in reasons))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        transport = self._routes.get(msg.topic)
        if transport is not None:
            transport.deliver(msg.payload)
        elif msg.topic in self._listeners:
            _notify(self._listeners[msg.topic], msg.payload)
        elif self._online is not None and msg.topic.endswith(f"/{ONLINE}"):
            self._online[msg.topic[: -len(ONLINE) - 1]] = bytes(msg.payload)

    def _connection_lost(self, why: str) -> None:
        """Fail every waiter; devices subscribe again on their next call."""
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(why)
        self._up = False
        for transport in self._routes.values():
            transport.connection_lost(why)
        for suback in self._subacks.values():
            if not suback.done():
                suback.set_result(False)
        self._subacks.clear()
        self._lost.set()

    # --- what transports use --------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def _not_connected(self, label: str, what: str) -> DeviceConnectionError:
        return DeviceConnectionError(
            label,
            f"{what}: not connected to the MQTT broker {self.broker} (it reconnects by itself; "
            "retry later)",
        )

    async def subscribe(self, transport: _MqttTransport) -> None:
        """Route ``transport``'s reply topic to it and wait (bounded) for the SUBACK, once per
        connection."""
        if not self._up:
            raise self._not_connected(transport.label, f"subscribe {transport.reply_topic}")
        if transport.subscribed is None:
            assert self._loop is not None
            self._routes[transport.reply_topic] = transport
            rc, mid = self._client.subscribe(transport.reply_topic, QOS)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise self._not_connected(transport.label, f"subscribe {transport.reply_topic}")
            transport.subscribed = self._subacks[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                granted = await asyncio.shield(transport.subscribed)
        except TimeoutError as err:
            raise DeviceTimeoutError(
                transport.label,
                f"the MQTT broker {self.broker} did not acknowledge the subscription to "
                f"{transport.reply_topic} within {CONNECT_TIMEOUT_S:g} s",
                seconds=CONNECT_TIMEOUT_S,
            ) from err
        if not granted:
            if not self._up:
                raise self._not_connected(transport.label, f"subscribe {transport.reply_topic}")
            raise DeviceConnectionError(
                transport.label,
                f"the MQTT broker {self.broker} refused the subscription to "
                f"{transport.reply_topic}; kilowatch's MQTT user must be allowed to read it",
            )

    def publish(self, transport: _MqttTransport, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 request; :class:`DeviceConnectionError` when the connection is down."""
        if not self._up:
            raise self._not_connected(transport.label, f"publish to {topic}")
        info = self._client.publish(topic, payload, qos=QOS)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise DeviceConnectionError(
                transport.label, f"publish to {topic} failed: {paho.error_string(info.rc)}"
            )

    def release(self, transport: _MqttTransport) -> None:
        """Forget ``transport``'s route and unsubscribe (no need to wait for the UNSUBACK)."""
        if self._routes.get(transport.reply_topic) is transport:
            del self._routes[transport.reply_topic]
            if self._up and transport.subscribed is not None:
                self._client.unsubscribe(transport.reply_topic)

    async def listen(self, prefix: str, callback: Listener) -> Callable[[], None]:
        """Hand the notifications the device of ``prefix`` publishes on ``<prefix>/events/rpc``
        to ``callback(method, params)`` until the returned function is called. The first
        listener of a prefix subscribes (waiting, bounded, for the SUBACK), the last one gone
        unsubscribes. Best effort: after a reconnect the subscription is not renewed (the
        session is clean); callers read the state they need by calling too."""
        topic = f"{prefix}/{EVENTS}"
        listeners = self._listeners.setdefault(topic, [])
        listeners.append(callback)

        def remove() -> None:
            if callback in listeners:
                listeners.remove(callback)
            if not listeners and self._listeners.get(topic) is listeners:
                del self._listeners[topic]
                if self._up:
                    self._client.unsubscribe(topic)

        if len(listeners) == 1 and self._up:
            assert self._loop is not None
            rc, mid = self._client.subscribe(topic, QOS)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._subacks[mid] = suback = self._loop.create_future()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        await suback
        return remove

    # --- public API -----------------------------------------------------------------------------

    def device(
        self,
        prefix: str,
        *,
        device_id: str | None = None,
        timeout: float = CALL_TIMEOUT_S,
        concurrency: int = DEVICE_CONCURRENCY,
    ) -> ShellyRpc:
        """A :class:`ShellyRpc` to the device whose ``topic_prefix`` is ``prefix``, over this
        connection (see the module doc). ``device_id`` names it in errors (else the prefix).
        Nothing is sent until its first call; closing it unsubscribes its reply topic.

        Raises :class:`FleetError` for a prefix no device can have (empty, over 300 characters,
        starting with ``$``, holding ``+``, ``#``, ``%`` or ``?``: §7.1).
        """
        _check_prefix(prefix)
        transport = _MqttTransport(
            self, prefix, src=f"{prefix}/kilowatch-{self.token}-{next(self._serials)}",
            label=device_id or prefix,
        )  # fmt: skip
        return ShellyRpc(transport, timeout=timeout, concurrency=concurrency)

    async def online_prefixes(self, wait: float, *, levels: int = 1) -> set[str]:
        """The prefixes whose ``<prefix>/online`` last said ``true``: subscribe to ``+/online``,
        collect the retained messages (and live ones) for ``wait`` seconds after the SUBACK,
        unsubscribe.

        ``levels``: prefixes of 1 to ``levels`` topic levels (``+/online``, ``+/+/online``...);
        the default, 1, covers devices' default prefix, their id. From 2 on, Gen1 devices'
        ``shellies/<id>/online`` match too (they do not answer RPC).
        Raises :class:`BrokerError` when not connected, when the broker refuses the subscription,
        or when the connection drops during the wait (the list would be incomplete).
        """
        filters = [f"{'+/' * n}{ONLINE}" for n in range(1, max(1, levels) + 1)]
        async with self._online_lock:
            if not self._up:
                raise BrokerError(f"not connected to the MQTT broker {self.broker}")
            assert self._loop is not None
            lost = self._lost
            self._online = {}
            try:
                rc, mid = self._client.subscribe([(f, QOS) for f in filters])
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                    raise BrokerError(f"cannot subscribe to {filters[0]} on {self.broker}")
                self._subacks[mid] = suback = self._loop.create_future()
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        granted = await suback
                except TimeoutError as err:
                    raise BrokerError(f"no SUBACK from the MQTT broker {self.broker}") from err
                if not granted:
                    raise BrokerError(
                        f"the MQTT broker {self.broker} refused the subscription to "
                        f"{', '.join(filters)} (or the connection dropped)"
                    )
                await asyncio.sleep(wait)
                if lost.is_set():
                    raise BrokerError(
                        f"the connection to the MQTT broker {self.broker} dropped while "
                        "listening for devices online; try again"
                    )
                seen = self._online
            finally:
                self._online = None
                if self._up:
                    self._client.unsubscribe(filters)
        return {prefix for prefix, payload in seen.items() if payload.strip() == b"true"}


class _MqttTransport:
    """One device's :class:`~kilowatch.fleet.rpc.base.Transport` over an :class:`MqttRpc`."""

    def __init__(self, owner: MqttRpc, prefix: str, *, src: str, label: str) -> None:
        self.owner = owner
        self.prefix = prefix
        self.src = src
        self.reply_topic = f"{src}/rpc"
        self.subscribed: asyncio.Future[bool] | None = None
        """The SUBACK of the reply topic on the current connection (``None``: not asked yet)."""
        self._label = label
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False

    @property
    def label(self) -> str:
        return self._label

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        """One call; see :class:`~kilowatch.fleet.rpc.base.Transport`."""
        if self._closed:
            raise DeviceConnectionError(self.label, f"{method}: this device's RPC was closed")
        call_id = self.owner.next_id()
        frame: dict[str, Any] = {"id": call_id, "src": self.src, "method": method}
        if params is not None:
            frame["params"] = dict(params)
        try:
            payload = orjson.dumps(frame)
        except orjson.JSONEncodeError as err:
            raise FleetError(method, f"its params cannot be sent as JSON: {err}") from err
        try:
            async with asyncio.timeout(timeout):
                await self.owner.subscribe(self)
                answer = self._pending[call_id] = asyncio.get_running_loop().create_future()
                self.owner.publish(self, f"{self.prefix}/rpc", payload)
                reply = await answer
        except TimeoutError as err:
            raise DeviceTimeoutError(
                self.label,
                f"{method}: no answer on {self.reply_topic} within {timeout:g} s; is the device "
                "connected to the broker, with RPC over MQTT enabled?",
                seconds=timeout,
            ) from err
        finally:
            self._pending.pop(call_id, None)
        return self._result(method, reply)

    def _result(self, method: str, reply: dict[str, Any]) -> Any:
        error = reply.get("error")
        if isinstance(error, dict):
            try:
                code = int(error.get("code", 0))
            except (TypeError, ValueError):
                code = 0
            raise RpcCallError(self.label, method, code, str(error.get("message", "")))
        if "result" not in reply:
            raise DeviceError(self.label, f"{method}: an answer with neither result nor error")
        return reply["result"]

    def deliver(self, payload: bytes | bytearray) -> None:
        """A message on the reply topic: resolve the call it answers (others are ignored)."""
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.debug("mqtt rpc: not JSON on %s", self.reply_topic)
            return
        if not isinstance(reply, dict):
            return
        call_id = reply.get("id")
        answer = self._pending.get(call_id) if isinstance(call_id, int) else None
        if answer is not None and not answer.done():
            answer.set_result(reply)

    def connection_lost(self, why: str) -> None:
        """Fail every call waiting for an answer; subscribe again on the next call."""
        self.subscribed = None
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(DeviceConnectionError(self.label, why))

    async def listen(self, callback: Listener) -> Callable[[], None]:
        """The device's notifications (:meth:`MqttRpc.listen` on its prefix)."""
        return await self.owner.listen(self.prefix, callback)

    async def close(self) -> None:
        """Unsubscribe the reply topic; calls still waiting fail (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.owner.release(self)  # before connection_lost() forgets the subscription
        self.connection_lost(f"{self.label}'s RPC was closed")


def _notify(listeners: list[Listener], payload: bytes | bytearray) -> None:
    """A notification frame ``{"src", "dst", "method", "params"}`` to every listener."""
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(frame, dict):
        return
    method, params = frame.get("method"), frame.get("params")
    if isinstance(method, str) and isinstance(params, dict):
        for listener in list(listeners):
            listener(method, params)


def _check_prefix(prefix: str) -> None:
    bad = sorted({c for c in prefix if c in "#+%?\x00"})
    if not prefix or len(prefix) > MAX_PREFIX or prefix.startswith("$") or bad:
        raise FleetError(
            prefix or "''",
            f"not a Shelly topic prefix: 1-{MAX_PREFIX} characters, not starting with $, "
            "without # + % ? (shelly-api.md §7.1)",
        )


def _backoff_delays() -> Iterator[float]:
    """Endless jittered, capped exponential delays: ~min, ~2·min, ~4·min ... ~max."""
    delay = BACKOFF_MIN_S
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(delay * 2, BACKOFF_MAX_S)


__all__ = ["MQTT_PORT", "MqttRpc", "MqttVersion"]
