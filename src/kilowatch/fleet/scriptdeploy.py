"""Deploying one Shelly script: find or create its slot by name, upload, enable, start, verify.

The device side of a profile's ``[[scripts]]`` entry (shared/shelly-api.md §14.1):

* :func:`render` fills per-device values (``{{ device.id }}``, ``{{ vars.site }}``) into a script's
  source. It is a fixed substitution, not a template engine: nothing in the template runs.
* :func:`script_state` reads what a device holds under a script name (code hash, running, run on
  boot, errors); :func:`script_changes` says in words how that differs from a :class:`ScriptSpec`
  (an empty list: nothing to do), which is what ``fleet plan`` prints.
* :func:`deploy_script` makes the device match the spec and proves it did: a second deploy of the
  same spec sends no ``Script.PutCode`` at all.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kilowatch.errors import FleetError, RpcCallError
from kilowatch.fleet.rpc.base import SCRIPT_CHUNK, ShellyRpc

logger = logging.getLogger(__name__)

SCRIPT_LIMIT_BYTES = 15_000
"""Largest script code a device saves, in UTF-8 bytes: firmware since 1.0.0 refuses more
(``Script.PutCode`` → -108; shared/shelly-api.md §14.1 "resource limits", docs/simulator.md)."""
SCRIPT_SLOTS = 10
"""Scripts a device holds ("Up to 10 instances of Script", shared/shelly-api.md §14.1)."""
RESOURCE_EXHAUSTED = -108
"""The device's error code for a limit hit: an 11th script, code over the limit (§2.4)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class ScriptSpec:
    """A script as a device should hold it: ``name`` (the slot is found by it), the final
    ``code`` (already rendered for this device), ``enable`` = start at boot, and an optional
    ``version`` label for the registry (the device never sees it)."""

    name: str
    code: str
    enable: bool = True
    version: str | None = None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the code's UTF-8 bytes (what the registry records)."""
        return hashlib.sha256(self.code.encode()).hexdigest()

    @property
    def size(self) -> int:
        """The code's size in UTF-8 bytes, the unit of the device's limit."""
        return len(self.code.encode())


@dataclass(frozen=True)
class ScriptState:
    """What a device holds under a script name: slot ``id``, the hash and ``size`` (bytes) of the
    code read back, whether it is ``running``, ``enable`` (start at boot) and the device's
    ``errors`` (``syntax_error``, ``crashed``…; empty when healthy)."""

    id: int
    name: str
    sha256: str
    running: bool
    enable: bool
    errors: tuple[str, ...]
    size: int = 0


@dataclass(frozen=True)
class DeployResult:
    """What :func:`deploy_script` did on one device.

    ``unchanged`` is true when the device already matched and nothing was written; otherwise
    ``created`` (a new slot), ``uploaded`` (the code, in ``chunks`` calls), ``enable_set`` (the
    start-at-boot flag written), ``stopped`` / ``started``. ``changes`` are the differences found
    before (:func:`script_changes`); ``calls`` counts every RPC call made, reads included.
    """

    script_id: int
    name: str
    sha256: str
    bytes: int
    unchanged: bool
    created: bool
    uploaded: bool
    chunks: int
    enable_set: bool
    stopped: bool
    started: bool
    changes: tuple[str, ...]
    calls: int


# --- per-device values ----------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\s*\}\}")
_DEVICE_FIELDS = ("id", "mac", "name", "room")
# Characters that could end or corrupt the JavaScript string literal a value is written in.
# Espruino has no \u escapes (§14.2), hence \xHH; U+2028/2029 end a line in older JS parsers.
_JS_ESCAPES = {"\\": "\\\\", '"': '\\"', "'": "\\'", "`": "\\`", "\n": "\\n", "\r": "\\r"}


def _js_text(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    else:
        text = str(value)
    out = []
    for ch in text:
        if ch in _JS_ESCAPES:
            out.append(_JS_ESCAPES[ch])
        elif ord(ch) < 0x20 or ch in "\u2028\u2029":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else " ")
        else:
            out.append(ch)
    return "".join(out)


def _known(values: Mapping[str, Any]) -> list[str]:
    names = [f"device.{f}" for f in _DEVICE_FIELDS if f in values.get("device", {})]
    names += [f"vars.{k}" for k in sorted(values.get("vars", {}))]
    return names


def render(template: str, values: Mapping[str, Any], *, subject: str = "script") -> str:
    """Fill ``{{ device.id }}``, ``{{ device.mac }}``, ``{{ device.name }}`` and
    ``{{ vars.<key> }}`` from ``values`` = ``{"device": {"id", "mac", "name"}, "vars": {...}}``.

    Every ``{{ name }}`` in the template must be one of those and present in ``values``; anything
    else raises :class:`FleetError` (``subject`` names the script) listing the unknown
    placeholders and the known ones. Values are written escaped as inside a JavaScript string
    literal (backslash, quotes, newlines), so ``"{{ device.name }}"`` stays one string whatever
    the owner named the device; ``None`` is written as nothing, booleans as ``true``/``false``.
    """
    device = values.get("device", {})
    variables = values.get("vars", {})
    unknown: list[str] = []

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        space, _, key = name.partition(".")
        if space == "device" and key in _DEVICE_FIELDS and key in device:
            return _js_text(device[key])
        if space == "vars" and key in variables:
            return _js_text(variables[key])
        unknown.append(name)
        return match.group(0)

    text = _PLACEHOLDER.sub(lookup, template)
    if unknown:
        names = ", ".join(f"{{{{ {n} }}}}" for n in dict.fromkeys(unknown))
        known = ", ".join(_known(values)) or "none"
        raise FleetError(
            subject,
            f"unknown placeholder {names}; known: {known} (add the key under the profile's vars)",
        )
    return text


# --- reading and comparing ------------------------------------------------------------------


class _Tally:
    """Counts the RPC calls of one operation (for :attr:`DeployResult.calls`)."""

    def __init__(self, rpc: ShellyRpc) -> None:
        self.rpc = rpc
        self.calls = 0

    async def __call__(self, call: Awaitable[_T]) -> _T:
        self.calls += 1
        return await call


async def _read_code(t: _Tally, script_id: int) -> str:
    # GetCode pages by byte offset and a page may end inside a UTF-8 character, which the
    # device's string drops; advancing by the bytes actually received re-reads that character.
    parts: list[str] = []
    offset = 0
    while True:
        page = await t(t.rpc.script_get_code(script_id, offset=offset))
        data = str(page.get("data", ""))
        left = int(page.get("left", 0))
        parts.append(data)
        offset += len(data.encode())
        if left <= 0:
            return "".join(parts)
        if not data:
            raise FleetError(
                t.rpc.label,
                f"Script.GetCode of script {script_id} returned no data at offset {offset} "
                f"with {left} bytes left; the device's answer cannot be read back",
            )


async def _read_state(t: _Tally, name: str) -> ScriptState | None:
    scripts = await t(t.rpc.script_list())
    # Several slots may carry the name (made by hand); the lowest id is the one kilowatch manages.
    matches = sorted((s for s in scripts if s.get("name") == name), key=lambda s: int(s["id"]))
    if not matches:
        return None
    entry = matches[0]
    sid = int(entry["id"])
    code = await _read_code(t, sid)
    status = await t(t.rpc.script_get_status(sid))
    errors = status.get("errors") or []
    return ScriptState(
        id=sid,
        name=name,
        sha256=hashlib.sha256(code.encode()).hexdigest(),
        running=bool(status.get("running", entry.get("running", False))),
        enable=bool(entry.get("enable", False)),
        errors=tuple(str(e) for e in errors),
        size=len(code.encode()),
    )


async def script_state(rpc: ShellyRpc, name: str) -> ScriptState | None:
    """The device's script named ``name`` (``Script.List``, ``Script.GetCode`` page by page,
    ``Script.GetStatus``), or ``None`` when it holds none. Raises the ``DeviceError`` family."""
    return await _read_state(_Tally(rpc), name)


def script_changes(state: ScriptState | None, spec: ScriptSpec) -> list[str]:
    """What differs between the device's ``state`` and ``spec``, in words; empty = nothing to do.

    A deployed script is expected to run, whatever ``enable`` (start at boot) says.
    """
    if state is None:
        return [f"script {spec.name!r} missing"]
    out: list[str] = []
    if state.sha256 != spec.sha256:
        out.append(
            f"script {spec.name!r} code differs (device {state.size} bytes sha256 "
            f"{state.sha256[:12]}, wanted {spec.size} bytes sha256 {spec.sha256[:12]})"
        )
    if not state.running:
        out.append(f"script {spec.name!r} not running")
    if state.enable != spec.enable:
        out.append(
            f"script {spec.name!r} "
            + ("not enabled on boot" if spec.enable else "enabled on boot, wanted off")
        )
    if state.errors:
        out.append(f"script {spec.name!r} reports errors: {', '.join(state.errors)}")
    return out


# --- deploying ------------------------------------------------------------------------------


def _check_size(spec: ScriptSpec, limit: int) -> None:
    if spec.size > limit:
        raise FleetError(
            f"script {spec.name!r}",
            f"code is {spec.size} bytes (UTF-8), over the device limit of {limit} bytes "
            "(Script.PutCode refuses more); shorten it (strip comments, minify) before deploying",
        )


async def _create(t: _Tally, name: str) -> int:
    try:
        return await t(t.rpc.script_create(name))
    except RpcCallError as err:
        if err.code != RESOURCE_EXHAUSTED:
            raise
        scripts = await t(t.rpc.script_list())
        held = ", ".join(f"{s.get('id')} {s.get('name')!r}" for s in scripts) or "?"
        raise FleetError(
            t.rpc.label,
            f"no free script slot for {name!r}: the device holds {len(scripts)} scripts "
            f"(the most it can, {SCRIPT_SLOTS}: {held}); delete one it no longer needs "
            f"(Script.Delete) and deploy again (device said: {err.code} {err.message})",
        ) from err


async def _upload(t: _Tally, script_id: int, spec: ScriptSpec) -> int:
    chunks = [spec.code[i : i + SCRIPT_CHUNK] for i in range(0, len(spec.code), SCRIPT_CHUNK)]
    # An empty script is still written once, so the old code is replaced.
    for n, chunk in enumerate(chunks or [""]):
        try:
            await t(t.rpc.script_put_code(script_id, chunk, append=n > 0))
        except RpcCallError as err:
            if err.code != RESOURCE_EXHAUSTED:
                raise
            raise FleetError(
                t.rpc.label,
                f"script {spec.name!r} ({spec.size} bytes) does not fit on this device: "
                f"{err.message} (code {err.code}); shorten it",
            ) from err
    return max(1, len(chunks))


async def deploy_script(
    rpc: ShellyRpc, spec: ScriptSpec, *, limit: int = SCRIPT_LIMIT_BYTES
) -> DeployResult:
    """Make the device hold ``spec`` running, with ``enable`` as asked, and verify it.

    Code over ``limit`` UTF-8 bytes is refused with :class:`FleetError` before any call. The slot
    is found by name or created (no free slot: :class:`FleetError` naming the scripts held). When
    the device already matches, nothing is written (``unchanged``). Otherwise: stop the script if
    it runs and its code must change (the firmware refuses ``PutCode`` on a running script),
    upload in chunks of at most :data:`SCRIPT_CHUNK` characters (the first replaces, the next
    append), set ``enable``, start, and read everything back. Errors the device reports after
    the start (``syntax_error``…) raise :class:`FleetError` with the device's list; device
    failures raise the ``DeviceError`` family.
    """
    _check_size(spec, limit)
    t = _Tally(rpc)
    state = await _read_state(t, spec.name)
    changes = script_changes(state, spec)
    if state is not None and not changes:
        return _result(spec, state.id, t, unchanged=True)
    created = state is None
    sid = state.id if state is not None else await _create(t, spec.name)
    upload = state is None or state.sha256 != spec.sha256
    restart = upload or bool(state and state.errors)
    running = bool(state and state.running)
    stopped = False
    if running and restart:
        await t(rpc.script_stop(sid))
        running, stopped = False, True
    chunks = await _upload(t, sid, spec) if upload else 0
    enable_set = state is None or state.enable != spec.enable
    if enable_set:
        await t(rpc.script_set_config(sid, {"enable": spec.enable}))
    if not running:
        await t(rpc.script_start(sid))
    after = await _read_state(t, spec.name)
    _verify(rpc.label, spec, after)
    logger.info(
        "%s: script %r deployed as id %d (%d bytes, sha256 %s, %s)",
        rpc.label,
        spec.name,
        sid,
        spec.size,
        spec.sha256[:12],
        "; ".join(changes),
    )
    return _result(
        spec,
        sid,
        t,
        created=created,
        uploaded=upload,
        chunks=chunks,
        enable_set=enable_set,
        stopped=stopped,
        started=not running,
        changes=tuple(changes),
    )


def _result(
    spec: ScriptSpec,
    script_id: int,
    t: _Tally,
    *,
    unchanged: bool = False,
    created: bool = False,
    uploaded: bool = False,
    chunks: int = 0,
    enable_set: bool = False,
    stopped: bool = False,
    started: bool = False,
    changes: tuple[str, ...] = (),
) -> DeployResult:
    return DeployResult(
        script_id=script_id,
        name=spec.name,
        sha256=spec.sha256,
        bytes=spec.size,
        unchanged=unchanged,
        created=created,
        uploaded=uploaded,
        chunks=chunks,
        enable_set=enable_set,
        stopped=stopped,
        started=started,
        changes=changes,
        calls=t.calls,
    )


def _verify(label: str, spec: ScriptSpec, after: ScriptState | None) -> None:
    subject = f"{label} script {spec.name!r}"
    if after is None:
        raise FleetError(subject, "is gone right after it was deployed; is something else there?")
    if after.errors:
        raise FleetError(
            subject,
            f"the device reports errors after start: {', '.join(after.errors)} "
            "(read its debug log for the line; fix the script and deploy again)",
        )
    if after.sha256 != spec.sha256:
        raise FleetError(
            subject,
            f"code read back ({after.size} bytes, sha256 {after.sha256[:12]}) differs from the "
            f"code uploaded ({spec.size} bytes, sha256 {spec.sha256[:12]})",
        )
    if not after.running:
        raise FleetError(subject, "did not start (Script.GetStatus says running: false)")
    if after.enable != spec.enable:
        raise FleetError(subject, f"enable reads back {after.enable}, wanted {spec.enable}")


__all__ = [
    "SCRIPT_LIMIT_BYTES",
    "SCRIPT_SLOTS",
    "DeployResult",
    "ScriptSpec",
    "ScriptState",
    "deploy_script",
    "render",
    "script_changes",
    "script_state",
]
