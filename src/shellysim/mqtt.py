"""A simulated device's MQTT behaviour (shelly-api.md §7), on :mod:`shellysim.mqttwire`.

While the device is up, MQTT is enabled (in the config active since boot) and the network is up,
:meth:`DeviceMqtt.run` keeps one connection to the configured server: client id, user/pass, TLS per
``ssl_ca`` (``*`` no validation, ``user_ca.pem`` the uploaded CA, ``ca.pem`` the system bundle) and
the uploaded client certificate with ``use_client_cert``; clean session, keepalive 60, will
``<prefix>/online`` = ``false`` retained. It publishes ``true`` there on connect, notifications on
``<prefix>/events/rpc``, full statuses on ``<prefix>/status/<key>`` when ``status_ntf``, debug log
lines on ``<prefix>/debug/log`` when enabled, all QoS 1; it answers RPC on ``<prefix>/rpc`` and the
``<prefix>/command`` topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import tempfile
from pathlib import Path
from typing import Any

import orjson

from kilowatch.mqtt.topics import topic_matches
from shellysim.device import Device
from shellysim.errors import MqttError
from shellysim.host import MqttMessageCallback
from shellysim.mqttwire import MqttConnection, Will

log = logging.getLogger(__name__)

KEEPALIVE_S = 60
QOS = 1
BACKOFF_START_S = 0.2
BACKOFF_CAP_S = 5.0
SCRIPT_SUBSCRIPTIONS_MAX = 10


def parse_server(server: str, *, tls: bool) -> tuple[str, int]:
    """``host`` or ``host:port`` (1883 assumed, 8883 with TLS)."""
    host, _, port = server.strip().rpartition(":")
    if not host:
        return port, 8883 if tls else 1883
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise MqttError(f"invalid MQTT server {server!r}: expected host:port") from None


class DeviceMqtt:
    """The MQTT client of one device; also its scripts' :class:`MqttLink`."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.conn: MqttConnection | None = None
        self._ready = False  # subscribed and announced: notifications may flow
        self.connects = 0
        self.failures = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._script_subs: dict[str, MqttMessageCallback] = {}
        self._unsubs = [
            device.add_sink(self._on_notification),
            device.add_log_sink(self._on_log),
            device.add_lifecycle_listener(self._on_lifecycle),
        ]
        device.script_host.mqtt = self

    # ------------------------------------------------------------------ connection loop

    @property
    def cfg(self) -> dict[str, Any]:
        """The MQTT config active since the last boot."""
        return self.device.active_mqtt

    @property
    def prefix(self) -> str:
        """``topic_prefix`` (device id when null)."""
        return str(self.cfg.get("topic_prefix") or self.device.id)

    def _wanted(self) -> bool:
        return bool(self.cfg.get("enable") and self.cfg.get("server") and self.device.network_up())

    async def run(self) -> None:
        """Stay connected whenever allowed; reconnect with jittered, capped backoff."""
        backoff = BACKOFF_START_S
        try:
            while True:
                if not self._wanted():
                    await self._wait_change()
                    continue
                try:
                    conn = await self._connect()
                except MqttError as err:
                    self.failures += 1
                    self.last_error = str(err)
                    log.debug("%s: %s (retry in %.1fs)", self.device.id, err, backoff)
                    await self._wait_change(backoff * (0.5 + random.random()))
                    backoff = min(BACKOFF_CAP_S, backoff * 2)
                    continue
                backoff = BACKOFF_START_S
                await self._session(conn)
                # a broker that drops us right away (e.g. the same client id elsewhere) must not
                # make the device reconnect in a tight loop
                await self._wait_change(BACKOFF_START_S * (0.5 + random.random()))
        finally:
            for unsub in self._unsubs:
                unsub()
            if self.conn is not None:
                await self.conn.disconnect()
                self.conn = None

    async def _wait_change(self, timeout: float | None = None) -> None:
        self._wake.clear()
        if timeout is None:
            # An outage ends by the clock, not by an event: poll it.
            timeout = 0.5 if self.device.online and self.cfg.get("enable") else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _on_lifecycle(self, up: bool) -> None:
        if not up and self.conn is not None:
            self.conn.abort()  # no DISCONNECT: the broker publishes the will
        self._wake.set()

    def _tls(self) -> ssl.SSLContext | None:
        ca = self.cfg.get("ssl_ca")
        if ca is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # devices speak TLS 1.2 only (KB-TLS)
        ctx.check_hostname = False  # only checked with "Enhanced Security", off by default
        if ca == "*":
            ctx.verify_mode = ssl.CERT_NONE
        elif ca == "user_ca.pem":
            pem = self.device.tls.get("user_ca")
            if pem is None:
                raise MqttError("ssl_ca is user_ca.pem but no CA was uploaded (Shelly.PutUserCA)")
            ctx.load_verify_locations(cadata=pem)
        else:
            ctx.load_default_certs()
        if self.cfg.get("use_client_cert"):
            cert, key = self.device.tls.get("client_cert"), self.device.tls.get("client_key")
            if cert is None or key is None:
                raise MqttError("use_client_cert is set but no client cert/key was uploaded")
            with tempfile.TemporaryDirectory() as tmp:
                cpath, kpath = Path(tmp, "c.pem"), Path(tmp, "k.pem")
                cpath.write_text(cert)
                kpath.write_text(key)
                try:
                    ctx.load_cert_chain(cpath, kpath)
                except ssl.SSLError as err:
                    raise MqttError(f"client certificate and key do not match: {err}") from err
        return ctx

    async def _connect(self) -> MqttConnection:
        tls = self._tls()
        host, port = parse_server(str(self.cfg["server"]), tls=tls is not None)
        will = Will(f"{self.prefix}/online", b"false", qos=0, retain=True)
        return await MqttConnection.connect(
            host,
            port,
            client_id=str(self.cfg.get("client_id") or self.device.id),
            username=self.cfg.get("user"),
            password=self.device.mqtt_pass,
            will=will,
            keepalive=KEEPALIVE_S,
            tls=tls,
            on_message=self._on_message,
        )

    async def _session(self, conn: MqttConnection) -> None:
        self.conn = conn
        self._ready = False
        self.connects += 1
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(conn.run())
            try:
                topics = []
                if self.cfg.get("enable_rpc", True):
                    topics.append((f"{self.prefix}/rpc", QOS))
                if self.cfg.get("enable_control", True):
                    topics += [(f"{self.prefix}/command", QOS), (f"{self.prefix}/command/#", QOS)]
                topics += [(f, QOS) for f in self._script_subs]
                if topics:
                    await conn.subscribe(topics)
                self._publish(f"{self.prefix}/online", "true", retain=True)
                # counters integrated up to the ts the full status carries; the deltas this
                # produces are not published (not ready yet): the full status supersedes them
                self.device.tick()
                self._ready = True
                self.device.log("shelly_mqtt.c:608", f"MQTT connected to {self.cfg['server']}")
                self.device.script_host.mqtt_connection_changed(True)
                if self.cfg.get("rpc_ntf", True):
                    self._publish_frame(
                        "NotifyFullStatus",
                        {"ts": round(float(self.device.now()), 2), **self.device.status()},
                    )
            except (TimeoutError, ConnectionError, OSError):
                conn.abort()
            await reader
        self.conn = None
        self._ready = False
        self.device.script_host.mqtt_connection_changed(False)

    # ------------------------------------------------------------------ outgoing

    def _publish(
        self, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = QOS
    ) -> bool:
        conn = self.conn
        if conn is None or not conn.is_open or not self.device.network_up():
            return False
        times = 2 if self.device.duplicate_publishes else 1
        try:
            for _ in range(times):
                raw = payload.encode() if isinstance(payload, str) else payload
                conn.publish(topic, raw, qos=qos, retain=retain)
        except ConnectionError:
            return False
        return True

    def _publish_frame(self, method: str, params: dict[str, Any]) -> None:
        frame = {
            "src": self.device.id,
            "dst": f"{self.prefix}/events",
            "method": method,
            "params": params,
        }
        self._publish(f"{self.prefix}/events/rpc", orjson.dumps(frame))

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if self.conn is None or not self._ready:
            return
        if self.cfg.get("rpc_ntf", True):
            self._publish_frame(method, params)
        if method == "NotifyStatus" and self.cfg.get("status_ntf"):
            for key in params:
                if key != "ts":
                    self._publish_status(key)

    def _publish_status(self, key: str) -> None:
        status = self.device.component_status(key)
        if status is not None:
            self._publish(f"{self.prefix}/status/{key}", orjson.dumps(status))

    def _on_log(self, line: str) -> None:
        if self._ready and self.device.config["sys"]["debug"]["mqtt"]["enable"]:
            self._publish(f"{self.prefix}/debug/log", line)

    # ------------------------------------------------------------------ incoming

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        text = payload.decode(errors="replace")
        for topic_filter, callback in list(self._script_subs.items()):
            if topic_matches(topic_filter, topic):
                callback(topic, text)
        if topic == f"{self.prefix}/rpc" and self.cfg.get("enable_rpc", True):
            self.device.spawn(self._rpc(text))
        elif topic == f"{self.prefix}/command" and self.cfg.get("enable_control", True):
            if text.strip() == "status_update":
                for key in self.device.component_keys():
                    self._publish_status(key)
        elif topic.startswith(f"{self.prefix}/command/switch:"):
            self.device.spawn(self._switch_command(topic.rsplit(":", 1)[1], text.strip()))

    async def _rpc(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        reply = await self.device.handle_frame(frame, source="mqtt")
        src = frame.get("src")
        if reply is not None and isinstance(src, str) and src:
            self._publish(f"{src}/rpc", orjson.dumps(reply))

    async def _switch_command(self, cid: str, command: str) -> None:
        if not cid.isdigit() or command not in ("on", "off", "toggle"):
            return
        method = "Switch.Toggle" if command == "toggle" else "Switch.Set"
        params: dict[str, Any] = {"id": int(cid)}
        if command != "toggle":
            params["on"] = command == "on"
        with contextlib.suppress(Exception):
            await self.device.call(method, params, source="mqtt")

    # ------------------------------------------------------------------ MqttLink for scripts

    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self.conn is not None and self.conn.is_open

    def publish(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        """Publish for a script."""
        return self._publish(topic, payload, retain=retain, qos=min(max(qos, 0), 1))

    def subscribe(self, topic_filter: str, callback: MqttMessageCallback) -> None:
        """Subscribe for a script (also on the broker when connected)."""
        self._script_subs[topic_filter] = callback
        if self.conn is not None and self.conn.is_open:
            self.device.spawn(self._broker_subscribe(topic_filter))

    async def _broker_subscribe(self, topic_filter: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await self.conn.subscribe([(topic_filter, QOS)])

    def unsubscribe(self, topic_filter: str) -> bool:
        """Drop a script subscription."""
        if self._script_subs.pop(topic_filter, None) is None:
            return False
        if self.conn is not None and self.conn.is_open:
            self.device.spawn(self._broker_unsubscribe(topic_filter))
        return True

    async def _broker_unsubscribe(self, topic_filter: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await self.conn.unsubscribe([topic_filter])


__all__ = ["DeviceMqtt", "parse_server"]
