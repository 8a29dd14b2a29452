"""HTTP and WebSocket RPC for simulated devices (shelly-api.md §3–§5), one listening socket each.

One aiohttp application serves every device of a fleet. Each device listens on its own address and
port (its own port on one address, or its own loopback address on port 80 like a real device), and
the request's local (address, port) selects the device. A device listens only while it is
reachable: while it reboots or is cut off (``fault_outage``) its socket is closed, so a connection
attempt is refused at once, as from a host whose HTTP server is not up, instead of hanging.
Forms: ``GET /shelly``; ``GET /rpc/<Method>?<params>``; ``POST /rpc/<Method>`` (params body);
``POST /rpc`` (whole frame); WebSocket ``/rpc``. HTTP answers carry ``Connection: close``. Status
codes for errors on the per-method forms are not documented: 404 for an unknown method, 401 for
auth, 500 otherwise (unverified guess).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

import orjson
from aiohttp import WSMsgType, web

import shellysim.auth as auth
from shellysim.device import Device
from shellysim.errors import SimConfigError, SimulatorError

log = logging.getLogger(__name__)

DEVICE_PORT = 80
"""Where a real device serves HTTP; a device on its own address listens there by default."""
LISTEN_BACKLOG = 64
OUTAGE_POLL_S = 0.5
"""Longest real wait between two looks at whether a device's outage is over."""
OUTAGE_MIN_SLEEP_S = 0.005
WS_HEARTBEAT_S = 55.0
DEBUG_LOG_CLIENTS_MAX = 3
"""'max 3 connections' to the WebSocket debug log (§8)."""


def _query_value(raw: str) -> Any:
    # Since fw 1.0.0 strings need no quotes; JSON parses numbers, booleans, null, objects.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    resp = web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers=headers
    )
    resp.force_close()  # devices answer with Connection: close
    return resp


class _Listener:
    """One device's listening socket: open while the device is reachable, closed while it is not.

    Opening binds and listens synchronously, so connections queue from that instant even before
    the event loop serves the socket; closing is synchronous too, so a connection attempt right
    after a device went down is refused, never accepted into a backlog nobody reads.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._starting: socket.socket | None = None

    @property
    def is_open(self) -> bool:
        """Whether the socket listens now."""
        return self._sock is not None

    def open(self) -> tuple[str, int]:
        """Bind and listen; returns the local ``(address, port)``. Raises :class:`OSError`."""
        if self._sock is None and self._starting is not None:
            self._sock = self._starting  # closed and reopened while its server was starting
        if self._sock is None:
            family, kind, proto, _, addr = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        name = self._sock.getsockname()
        self.port = int(name[1])  # the OS's pick when the port was 0: every reopen reuses it
        return str(name[0]), self.port

    async def serve(self, factory: Callable[[], asyncio.Protocol]) -> None:
        """Serve the open socket with ``factory``'s protocols (no-op if closed or served)."""
        sock = self._sock
        if sock is None or self._server is not None or self._starting is not None:
            return
        self._starting = sock
        try:
            server = await asyncio.get_running_loop().create_server(
                factory, sock=sock, backlog=LISTEN_BACKLOG
            )
        except BaseException:
            if self._sock is sock:
                self._sock = None
            sock.close()
            raise
        finally:
            self._starting = None
        if self._sock is sock:
            self._server = server
        else:
            server.close()  # closed while it was starting

    def close(self) -> None:
        """Stop listening now: new connections are refused; accepted ones are left alone."""
        sock, server = self._sock, self._server
        self._sock = self._server = None
        if server is not None:
            server.close()  # closes the socket
        elif sock is not None and sock is not self._starting:
            sock.close()  # (a starting socket is closed by serve() once its server exists)


def _bind_hint(err: OSError, *, hosts: bool) -> str:
    if err.errno == errno.EADDRINUSE:
        where = (
            "pick other --http-hosts or another --http-port-base"
            if hosts
            else ("pick another --http-port-base")
        )
        return f"another program (or fleet) listens there; {where}"
    if err.errno == errno.EACCES:
        return (
            "ports below 1024 need root (or CAP_NET_BIND_SERVICE); pass --http-port-base 8080 "
            "to have every device listen on port 8080 of its own address"
        )
    if err.errno == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address (on Linux all of 127.0.0.0/8 is)"
    return "pick another --http-host, --http-hosts or --http-port-base"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_address(host: str, port: int) -> str:
    """``host`` when ``port`` is 80 (a device's usual port), else ``host:port`` (IPv6 bracketed)."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEVICE_PORT else f"{shown}:{port}"


class DeviceServer:
    """Serves devices over HTTP + WebSocket; an async context manager.

    Device *i* listens on ``hosts[i]`` when ``hosts`` is given, on port ``port_base`` (default 80)
    of each; else on ``host``, port ``port_base + i`` (default: ports the OS hands out).
    """

    def __init__(
        self,
        devices: list[Device],
        *,
        host: str = "127.0.0.1",
        port_base: int | None = None,
        hosts: Sequence[str] | None = None,
    ):
        if hosts is not None and len(hosts) < len(devices):
            raise SimConfigError(
                f"{len(devices)} devices need {len(devices)} hosts, got {len(hosts)}"
            )
        self.devices = devices
        self.host = host
        self.port_base = port_base
        self.hosts: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self._own_hosts = hosts is not None
        self._listeners: dict[str, _Listener] = {}
        for i, dev in enumerate(devices):
            if hosts is not None:
                where = (hosts[i], DEVICE_PORT if port_base is None else port_base)
            else:
                where = (host, 0 if port_base is None else port_base + i)
            self.hosts[dev.id] = where[0]
            self._listeners[dev.id] = _Listener(*where)
        self._by_addr: dict[tuple[str, int], Device] = {}
        # open WebSockets per device, each with its outgoing queue (None = close it)
        self._sockets: dict[
            str, dict[web.WebSocketResponse, asyncio.Queue[dict[str, Any] | None]]
        ] = {d.id: {} for d in devices}
        self._runner: web.AppRunner | None = None
        self._log_clients: dict[str, int] = {}
        self._unsubs: list[Any] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._watching: set[str] = set()

    def address(self, device: Device) -> str:
        """``host`` (port 80) or ``host:port`` where ``device`` listens."""
        return format_address(self.hosts[device.id], self.ports[device.id])

    def url(self, device: Device) -> str:
        """``http://`` + :meth:`address`."""
        return f"http://{self.address(device)}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/shelly", self._shelly)
        app.router.add_get("/rpc", self._ws_or_404)
        app.router.add_post("/rpc", self._frame)
        app.router.add_get("/rpc/{method}", self._method)
        app.router.add_post("/rpc/{method}", self._method)
        app.router.add_get("/{kind:emdata|em1data}/{cid:[0-9]+}/data.csv", self._csv)
        app.router.add_get("/debug/log", self._debug_log)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        try:
            for dev in self.devices:
                await self._listen(dev)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _listen(self, dev: Device) -> None:
        listener = self._listeners[dev.id]
        try:
            local = listener.open()
        except OSError as err:
            where = _host_port(listener.host, listener.port)
            hint = _bind_hint(err, hosts=self._own_hosts)
            raise SimulatorError(
                f"cannot listen on {where} for {dev.id}: {err.strerror}; {hint}"
            ) from err
        self.ports[dev.id] = local[1]
        self._by_addr[local] = dev
        self._unsubs.append(dev.add_lifecycle_listener(self._lifecycle(dev)))
        if dev.network_up():
            await listener.serve(self._protocols())
        else:
            self._reconcile(dev)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for unsub in self._unsubs:
            unsub()
        for listener in self._listeners.values():
            listener.close()
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            for task in list(self._jobs):
                task.cancel()
            await tasks.__aexit__(None, None, None)
        for socks in self._sockets.values():
            for ws in list(socks):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _protocols(self) -> Callable[[], asyncio.Protocol]:
        """The aiohttp protocol factory every device's socket is served with."""
        server = self._runner.server if self._runner is not None else None
        if server is None:
            raise RuntimeError("the device server is not running")
        return server

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._tasks is None:
            coro.close()
            return

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("device server: background job failed")

        task = self._tasks.create_task(run())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def _reconcile(self, dev: Device) -> None:
        """Listen exactly while ``dev`` is reachable (booted and not cut off)."""
        listener = self._listeners[dev.id]
        if dev.network_up():
            if not listener.is_open and self._tasks is not None:
                try:
                    listener.open()
                except OSError as err:
                    where = _host_port(listener.host, listener.port)
                    log.error("%s: cannot listen again on %s: %s", dev.id, where, err.strerror)
                    return
                self._spawn(listener.serve(self._protocols()))
            return
        listener.close()
        if dev.online and dev.id not in self._watching:
            self._watching.add(dev.id)  # an outage ends by the clock, not by an event
            self._spawn(self._watch_outage(dev))

    async def _watch_outage(self, dev: Device) -> None:
        try:
            while dev.online and not dev.network_up():
                left = (dev.outage_until - dev.clock.now()) / dev.clock.speed
                await asyncio.sleep(min(OUTAGE_POLL_S, max(OUTAGE_MIN_SLEEP_S, left)))
        finally:
            self._watching.discard(dev.id)
        self._reconcile(dev)

    def _lifecycle(self, dev: Device) -> Any:
        def on_change(up: bool) -> None:
            if not up:
                for queue in self._sockets[dev.id].values():
                    queue.put_nowait(None)
            self._reconcile(dev)

        return on_change

    def _device(self, request: web.Request) -> Device:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        dev = None
        if sock:
            port = int(sock[1])
            dev = self._by_addr.get((str(sock[0]), port))
            # a device listening on a wildcard address sees the concrete one
            dev = dev or self._by_addr.get(("0.0.0.0", port)) or self._by_addr.get(("::", port))
        if dev is None:
            raise web.HTTPNotFound()
        if not dev.network_up():
            # A rebooting or cut-off device does not answer at all (its socket is being closed).
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        return dev

    def _unauthorized(self, dev: Device) -> web.Response:
        return _json(
            {"code": 401, "message": "Unauthorized"},
            401,
            {"WWW-Authenticate": auth.challenge_header(dev.id)},
        )

    def _http_authorized(self, dev: Device, request: web.Request, method: str | None) -> bool:
        if dev.auth_ha1 is None or (method and method.lower() in auth.EXEMPT_METHODS):
            return True
        return auth.check_http(
            request.headers.get("Authorization"), request.method, dev.auth_ha1, dev.id
        )

    async def _shelly(self, request: web.Request) -> web.Response:
        dev = self._device(request)
        return _json(dev.device_info())

    async def _method(self, request: web.Request) -> web.Response:
        dev = self._device(request)
        method = unquote(request.match_info["method"])
        if not self._http_authorized(dev, request, method):
            return self._unauthorized(dev)
        if request.method == "POST":
            raw = await request.text()
            try:
                params = json.loads(raw) if raw.strip() else None
            except ValueError:
                return _json({"code": -103, "message": "Invalid JSON body"}, 400)
        else:
            params = {k: _query_value(v) for k, v in request.query.items()}
        frame = {"id": 1, "method": method, "params": params}
        reply = await dev.handle_frame(frame, source="http")
        assert reply is not None
        if "error" in reply:
            code = reply["error"]["code"]
            return _json(reply["error"], 404 if code == 404 else 500)
        return _json(reply["result"])

    async def _csv(self, request: web.Request) -> web.Response:
        """``/emdata/<id>/data.csv?ts=&end_ts=&add_keys=`` (§13.5): the GetData records as CSV."""
        dev = self._device(request)
        if not self._http_authorized(dev, request, None):
            return self._unauthorized(dev)
        method = "EMData.GetData" if request.match_info["kind"] == "emdata" else "EM1Data.GetData"
        q = {k: _query_value(v) for k, v in request.query.items()}
        add_keys = q.get("add_keys", True) is True
        params: dict[str, Any] = {"id": int(request.match_info["cid"]), "ts": q.get("ts", 0)}
        if "end_ts" in q:
            params["end_ts"] = q["end_ts"]
        lines: list[str] = []
        while True:
            reply = await dev.handle_frame(
                {"id": 1, "method": method, "params": params}, source="http"
            )
            assert reply is not None
            if "error" in reply:
                return _json(reply["error"], 404 if reply["error"]["code"] == 404 else 500)
            result = reply["result"]
            if add_keys and not lines:
                lines.append(",".join(["timestamp", *result["keys"]]))
            for block in result["data"]:
                for i, row in enumerate(block["values"]):
                    ts = block["ts"] + i * block["period"]
                    lines.append(",".join([str(ts), *(str(v) for v in row)]))
            if "next_record_ts" not in result:
                break
            params = {**params, "ts": result["next_record_ts"]}
        resp = web.Response(text="\n".join(lines) + "\n", content_type="text/csv")
        resp.force_close()
        return resp

    async def _debug_log(self, request: web.Request) -> web.StreamResponse:
        """WebSocket log stream (§8) while ``sys.debug.websocket.enable``; at most 3 clients."""
        dev = self._device(request)
        if not self._http_authorized(dev, request, None):
            return self._unauthorized(dev)
        if not dev.config["sys"]["debug"]["websocket"]["enable"]:
            return _json({"code": 404, "message": "debug log over websocket is disabled"}, 404)
        if self._log_clients.get(dev.id, 0) >= DEBUG_LOG_CLIENTS_MAX:
            return _json({"code": -108, "message": "Too many debug log clients"}, 503)
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S)
        await ws.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def on_line(line: str) -> None:
            # "<id> <seq> <ts> <level>|<file:line> <message>" → {ts, level, data}
            _, _, ts, rest = line.split(" ", 3)
            level, _, data = rest.partition("|")
            queue.put_nowait({"ts": float(ts), "level": int(level), "data": data, "fd": 1})

        unsub = dev.add_log_sink(on_line)
        self._log_clients[dev.id] = self._log_clients.get(dev.id, 0) + 1
        self._sockets[dev.id][ws] = queue
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._ws_writer(ws, queue))
                async for _ in ws:
                    pass
                writer.cancel()
        finally:
            unsub()
            self._log_clients[dev.id] -= 1
            self._sockets[dev.id].pop(ws, None)
        return ws

    async def _frame(self, request: web.Request) -> web.Response:
        dev = self._device(request)
        try:
            frame = json.loads(await request.text())
        except ValueError:
            return _json({"code": -103, "message": "Invalid JSON frame"}, 400)
        if not isinstance(frame, dict):
            return _json({"code": -103, "message": "A frame is a JSON object"}, 400)
        method = frame.get("method") if isinstance(frame.get("method"), str) else None
        if not self._http_authorized(dev, request, method) and not (
            dev.auth_ha1 and auth.check_frame(frame.get("auth"), dev.auth_ha1, dev.id)
        ):
            return self._unauthorized(dev)
        reply = await dev.handle_frame(frame, source="http")
        return _json(reply if reply is not None else {})

    async def _ws_or_404(self, request: web.Request) -> web.StreamResponse:
        dev = self._device(request)
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S)
        if not ws.can_prepare(request).ok:
            return _json({"code": 404, "message": "Use a WebSocket on /rpc"}, 404)
        await ws.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._sockets[dev.id][ws] = queue
        state: dict[str, Any] = {"dst": None, "unsub": None}
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._ws_writer(ws, queue))
                await self._ws_reader(dev, ws, queue, state)
                writer.cancel()
        finally:
            if state["unsub"] is not None:
                state["unsub"]()
            self._sockets[dev.id].pop(ws, None)
        return ws

    async def _ws_writer(
        self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        while True:
            frame = await queue.get()
            if frame is None:
                await ws.close()
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(orjson.dumps(frame).decode())

    async def _ws_reader(
        self,
        dev: Device,
        ws: web.WebSocketResponse,
        queue: asyncio.Queue[dict[str, Any] | None],
        state: dict[str, Any],
    ) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
            except ValueError:
                continue
            if not isinstance(frame, dict):
                continue
            method = frame.get("method")
            if (
                dev.auth_ha1 is not None
                and not (isinstance(method, str) and method.lower() in auth.EXEMPT_METHODS)
                and not auth.check_frame(frame.get("auth"), dev.auth_ha1, dev.id)
            ):
                err: dict[str, Any] = {"id": frame.get("id"), "src": dev.id}
                if frame.get("src") is not None:
                    err["dst"] = frame["src"]
                err["error"] = {"code": 401, "message": auth.ws_challenge(dev.id)}
                queue.put_nowait(err)
                continue
            src = frame.get("src")
            if state["dst"] is None and isinstance(src, str) and src:
                # Notifications flow after the first request with a valid src, to that src (§4).
                state["dst"] = src

                def sink(method: str, params: dict[str, Any], dst: str = src) -> None:
                    queue.put_nowait(
                        {"src": dev.id, "dst": dst, "method": method, "params": params}
                    )

                state["unsub"] = dev.add_sink(sink)
            reply = await dev.handle_frame(frame, source="ws")
            if reply is not None:
                queue.put_nowait(reply)
