"""HTTP and WebSocket RPC for simulated devices (shelly-api.md §3–§5), one port per device.

One aiohttp application serves every device of a fleet; each device listens on its own port and the
request's local port selects the device. Forms: ``GET /shelly``; ``GET /rpc/<Method>?<params>``;
``POST /rpc/<Method>`` (params body); ``POST /rpc`` (whole frame); WebSocket ``/rpc``.
HTTP answers carry ``Connection: close``. Status codes for errors on the per-method forms are not
documented: 404 for an unknown method, 401 for auth, 500 otherwise (unverified guess).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

import orjson
from aiohttp import WSMsgType, web

import shellysim.auth as auth
from shellysim.device import Device
from shellysim.errors import SimulatorError

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


class DeviceServer:
    """Serves devices over HTTP + WebSocket; an async context manager."""

    def __init__(
        self, devices: list[Device], *, host: str = "127.0.0.1", port_base: int | None = None
    ):
        self.devices = devices
        self.host = host
        self.port_base = port_base
        self.ports: dict[str, int] = {}
        self._by_port: dict[int, Device] = {}
        # open WebSockets per device, each with its outgoing queue (None = close it)
        self._sockets: dict[
            str, dict[web.WebSocketResponse, asyncio.Queue[dict[str, Any] | None]]
        ] = {d.id: {} for d in devices}
        self._runner: web.AppRunner | None = None
        self._log_clients: dict[str, int] = {}
        self._unsubs: list[Any] = []

    def url(self, device: Device) -> str:
        """``http://host:port`` of ``device``."""
        return f"http://{self.host}:{self.ports[device.id]}"

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
        try:
            for i, dev in enumerate(self.devices):
                port = 0 if self.port_base is None else self.port_base + i
                site = web.TCPSite(self._runner, self.host, port, backlog=64)
                await site.start()
                server = site._server
                assert server is not None
                sockets = getattr(server, "sockets", None) or []
                actual = sockets[0].getsockname()[1] if sockets else port
                self.ports[dev.id] = actual
                self._by_port[actual] = dev
                self._unsubs.append(dev.add_lifecycle_listener(self._lifecycle(dev)))
        except OSError as err:
            await self._runner.cleanup()
            raise SimulatorError(
                f"cannot listen on {self.host}:{port} for {dev.id}: {err.strerror}; "
                "pick another --http-port-base"
            ) from err
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for unsub in self._unsubs:
            unsub()
        for socks in self._sockets.values():
            for ws in list(socks):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _lifecycle(self, dev: Device) -> Any:
        def on_change(up: bool) -> None:
            if not up:
                for queue in self._sockets[dev.id].values():
                    queue.put_nowait(None)

        return on_change

    def _device(self, request: web.Request) -> Device:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        dev = self._by_port.get(sock[1]) if sock else None
        if dev is None:
            raise web.HTTPNotFound()
        if not dev.network_up():
            # A rebooting or cut-off device does not answer at all.
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
