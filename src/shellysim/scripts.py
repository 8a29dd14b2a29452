"""``Script`` management (shelly-api.md §14.1): ten slots, chunked upload, start/stop via an engine.

The JavaScript itself runs in an engine given to the device (:class:`ScriptEngineLike`); without
one, ``Script.Start`` fails with -114 instead of pretending to run anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import shellysim.rpcutil as r
from shellysim.host import ScriptEngineLike, ScriptHost, ScriptRuntimeLike

SCRIPT_SLOTS = 10
"""Up to 10 instances of Script (Gen3/Gen4 device pages)."""
SCRIPT_MAX_BYTES = 15000
"""Scripts above 15 000 bytes cannot be saved since fw 1.0.0 (peers.md §12)."""
SCRIPT_HEAP = 25200
"""mem_used + mem_free of a stopped script in captures."""
GETCODE_CHUNK = 2048


@dataclass
class ScriptSlot:
    """One script: its config (``name``, ``enable`` = run on boot), code and runtime."""

    id: int
    name: str
    enable: bool = False
    code: str = ""
    runtime: ScriptRuntimeLike | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Component key ``script:<id>``."""
        return f"script:{self.id}"

    @property
    def running(self) -> bool:
        """Whether the script runs now."""
        return self.runtime is not None and self.runtime.running

    def config(self) -> dict[str, Any]:
        """``Script.GetConfig``."""
        return {"id": self.id, "name": self.name, "enable": self.enable}

    def status(self) -> dict[str, Any]:
        """``Script.GetStatus``: the engine's figures while running, the stopped shape otherwise."""
        if self.runtime is not None:
            st = self.runtime.status()
            out: dict[str, Any] = {"id": self.id, **st}
            out.setdefault("running", self.runtime.running)
            return out
        out = {"id": self.id, "running": False, "mem_free": SCRIPT_HEAP, "cpu": 0}
        if self.errors:
            out["errors"] = list(self.errors)
        return out


class ScriptManager:
    """The ``Script.*`` methods of one device."""

    def __init__(self, engine: ScriptEngineLike | None) -> None:
        self.engine = engine
        self.slots: dict[int, ScriptSlot] = {}

    def slot(self, params: r.Params) -> ScriptSlot:
        """The slot named by ``params["id"]`` (-103 if missing, -105 if absent)."""
        sid = r.get_int(params, "id", required=True)
        if sid not in self.slots:
            raise r.id_not_found(sid)
        return self.slots[sid]

    def create(self, params: r.Params) -> dict[str, Any]:
        """``Script.Create {name?}`` → ``{"id"}``; ids start at 1."""
        name = r.get_str(params, "name", required=False)
        free = [i for i in range(1, SCRIPT_SLOTS + 1) if i not in self.slots]
        if not free:
            raise r.exhausted(f"Too many scripts (max {SCRIPT_SLOTS})")
        sid = free[0]
        self.slots[sid] = ScriptSlot(sid, name or f"script_{sid}")
        return {"id": sid}

    def put_code(self, params: r.Params) -> dict[str, Any]:
        """``Script.PutCode {id, code, append?}`` → ``{"len"}``; -109 on a running script."""
        s = self.slot(params)
        code = r.get_str(params, "code")
        assert code is not None
        append = r.get_bool(params, "append", False)
        if s.running:
            raise r.precondition(f"Script {s.id} is running, stop it before changing its code")
        new = (s.code if append else "") + code
        if len(new.encode()) > SCRIPT_MAX_BYTES:
            raise r.exhausted(f"Script too large: {len(new.encode())} > {SCRIPT_MAX_BYTES} bytes")
        s.code = new
        return {"len": len(new.encode())}

    def get_code(self, params: r.Params) -> dict[str, Any]:
        """``Script.GetCode {id, offset?, len?}`` → ``{"data", "left"}`` (byte offsets)."""
        s = self.slot(params)
        raw = s.code.encode()
        offset = r.get_int(params, "offset", 0)
        length = r.get_int(params, "len", GETCODE_CHUNK)
        if offset < 0 or offset > len(raw):
            raise r.invalid(f"Invalid argument 'offset': {offset} is outside 0..{len(raw)}")
        chunk = raw[offset : offset + max(0, length)]
        return {"data": chunk.decode(errors="ignore"), "left": len(raw) - offset - len(chunk)}

    def set_config(self, params: r.Params) -> dict[str, Any]:
        """``Script.SetConfig {id, config: {name?, enable?}}``."""
        s = self.slot(params)
        cfg = r.get_obj(params, "config")
        if "name" in cfg:
            if cfg["name"] is not None and not isinstance(cfg["name"], str):
                raise r.invalid("Invalid argument 'config.name': expected string")
            s.name = cfg["name"] or s.name
        if "enable" in cfg:
            s.enable = r.get_bool(cfg, "enable")
        return {"restart_required": False}

    def list(self, params: r.Params) -> dict[str, Any]:
        """``Script.List`` → ``{"scripts": [{"id","name","enable","running"}]}``."""
        return {
            "scripts": [
                {"id": s.id, "name": s.name, "enable": s.enable, "running": s.running}
                for s in sorted(self.slots.values(), key=lambda x: x.id)
            ]
        }

    async def start(self, params: r.Params, host: ScriptHost) -> dict[str, Any]:
        """``Script.Start {id}`` → ``{"was_running"}``."""
        s = self.slot(params)
        if s.running:
            return {"was_running": True}
        await self.run(s, host)
        return {"was_running": False}

    async def run(self, s: ScriptSlot, host: ScriptHost) -> None:
        """Start slot ``s`` in the engine (-114 when the device has no script engine)."""
        if self.engine is None:
            raise r.RpcCallError(
                r.UNAVAILABLE, "Script engine not available on this simulated device"
            )
        s.errors = []
        s.runtime = await self.engine.start(s.id, s.code, host)

    async def stop(self, params: r.Params) -> dict[str, Any]:
        """``Script.Stop {id}`` → ``{"was_running"}``."""
        s = self.slot(params)
        was = s.running
        await self.halt(s)
        return {"was_running": was}

    async def halt(self, s: ScriptSlot) -> None:
        """Stop a slot's runtime, keeping its last errors for GetStatus."""
        rt, s.runtime = s.runtime, None
        if rt is not None:
            errors = rt.status().get("errors")
            if isinstance(errors, list):
                s.errors = [str(e) for e in errors]
            await rt.stop()

    async def halt_all(self) -> None:
        """Stop every script (reboot)."""
        for s in list(self.slots.values()):
            await self.halt(s)

    async def delete(self, params: r.Params) -> None:
        """``Script.Delete {id}`` (a running script is stopped first)."""
        s = self.slot(params)
        await self.halt(s)
        del self.slots[s.id]

    async def eval(self, params: r.Params) -> dict[str, Any]:
        """``Script.Eval {id, code}`` → ``{"result": "<string>"}``; the script must be running."""
        s = self.slot(params)
        code = r.get_str(params, "code")
        assert code is not None
        if s.runtime is None or not s.running:
            raise r.precondition(f"Script {s.id} is not running")
        value = await s.runtime.eval(code)
        return {"result": value if isinstance(value, str) else _js_string(value)}


def _js_string(value: Any) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))
