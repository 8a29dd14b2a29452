"""Shelly scripts really run: one embedded V8 context (mini-racer) per running script.

The engine gives a script the device's script API (shelly-api.md §14.2) through the
:class:`~shellysim.host.ScriptHost` of its device. mini-racer cannot call Python
synchronously from JavaScript, so the two sides talk through a message queue (see
``js/prelude.js``): every evaluation returns the requests the script made (RPC calls, publishes,
timers, log lines...), and every delivery into the script carries fresh copies of the state it may
read synchronously (component status and config, device info, the simulated clock).

Each runtime owns one asyncio task that feeds its context one batch at a time, so a script never
runs two callbacks at once, exactly like a device. Each evaluation is time-limited (a runaway
``while(true){}`` is terminated and the script stops with ``errors: ["crashed"]``) and each context
has a hard heap limit (``out_of_memory``). See docs/scripting.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any, Final

import orjson
from py_mini_racer import (
    JSEvalException,
    JSOOMException,
    JSParseException,
    MiniRacer,
)

from shellysim.errors import RpcCallError
from shellysim.host import Cancellable, ScriptHost, Unsubscribe

logger = logging.getLogger(__name__)

DEVICE_SCRIPT_HEAP: Final = 25_200
"""Heap bytes a device gives a script: ``mem_used + mem_free`` in captures (shelly-api.md §14.1)."""

V8_BYTES_PER_DEVICE_BYTE: Final = 64
"""V8 heap bytes that count as one device byte in ``mem_*`` figures (see docs/scripting.md).

A V8 object costs several times what the same value costs in Espruino, and V8 allocates in pages,
so the script's V8 budget is ``DEVICE_SCRIPT_HEAP * V8_BYTES_PER_DEVICE_BYTE`` (≈1.6 MB) above the
heap the empty context already uses, and the reported figures are scaled down by this factor.
"""

CALLBACK_TIMEOUT_S: Final = 1.0
"""Real seconds one evaluation (top-level code, one batch of callbacks, one Eval) may run."""

MIN_REPEAT_PERIOD_S: Final = 0.01
"""Shortest period of a repeating timer, in simulated seconds, so ``Timer.set(0, true, ..)`` cannot
starve the event loop."""

STATUS_SAMPLE_AGE_S: Final = 2.0
"""``status()`` takes a fresh heap sample when the last one is older than this (real seconds).

A sample runs a full V8 garbage collection first (a few milliseconds on the event loop), so the
figures count live data, as Espruino's reference counting does, not garbage V8 has yet to collect.
"""

MAX_BATCH: Final = 64
"""Deliveries handed to a script in one evaluation when several are waiting."""

EVAL_ERROR_CODE: Final = -103
"""RPC error code of a ``Script.Eval`` whose code throws ([I]: not captured from a device)."""

NOT_RUNNING_CODE: Final = -109
"""RPC error code when a stopped script is asked to do something (FAILED_PRECONDITION)."""

_SINGLETON_KEYS: Final = ("sys", "mqtt", "wifi", "cloud", "ble", "ws", "eth", "ui", "matter")
_INDEXED_KEYS: Final = (
    "switch",
    "pm1",
    "em",
    "emdata",
    "em1",
    "em1data",
    "input",
    "cover",
    "light",
    "temperature",
    "humidity",
)
_MAX_INDEX: Final = 4
_GRACE_YIELDS: Final = 5
_LOOP_LAG_S: Final = 0.1

_ERROR_LINE = re.compile(r"^\S*:\d+: (\w+)(?::|$)")
_WHERE = re.compile(r"^\S*:\d+: ")
_PRELUDE_CACHE: dict[str, str] = {}


class ScriptErrorKind(StrEnum):
    """Values of ``errors`` in ``Script.GetStatus`` (shelly-api.md §14.1)."""

    SYNTAX_ERROR = "syntax_error"
    REFERENCE_ERROR = "reference_error"
    TYPE_ERROR = "type_error"
    CRASHED = "crashed"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL_ERROR = "internal_error"


_BY_JS_TYPE: Final = {
    "SyntaxError": ScriptErrorKind.SYNTAX_ERROR,
    "ReferenceError": ScriptErrorKind.REFERENCE_ERROR,
    "TypeError": ScriptErrorKind.TYPE_ERROR,
}


@dataclass(frozen=True, kw_only=True)
class ScriptLimits:
    """Per-script resource limits (DOC-ScriptLang "Resource limits", shelly-api.md §14.2)."""

    timers: int = 5
    calls: int = 5
    status_handlers: int = 5
    event_handlers: int = 5
    mqtt_subscriptions: int = 10


@dataclass(kw_only=True)
class _Timer:
    period_s: float
    repeat: bool
    deadline: float
    handle: Cancellable | None = None


@dataclass(kw_only=True)
class _EvalRequest:
    code: str
    future: asyncio.Future[Any]


_Delivery = tuple[Any, ...]
_WorkItem = _Delivery | _EvalRequest


@dataclass(kw_only=True)
class _Mirror:
    """Which device state the script reads, so each delivery refreshes exactly that."""

    status: set[str] = field(default_factory=set)
    config: set[str] = field(default_factory=lambda: {"mqtt"})
    info: bool = False
    dirty_status: set[str] = field(default_factory=set)
    dirty_config: set[str] = field(default_factory=set)


def _prelude() -> str:
    if "js" not in _PRELUDE_CACHE:
        source = resources.files("shellysim").joinpath("js/prelude.js")
        _PRELUDE_CACHE["js"] = source.read_text(encoding="utf-8")
    return _PRELUDE_CACHE["js"]


def classify_js_error(err: JSEvalException) -> ScriptErrorKind:
    """Map a mini-racer exception to the ``errors`` value a device would show."""
    if isinstance(err, JSOOMException):
        return ScriptErrorKind.OUT_OF_MEMORY
    if isinstance(err, JSParseException):
        return ScriptErrorKind.SYNTAX_ERROR
    match = _ERROR_LINE.match(str(err).split("\n", 1)[0])
    if match:
        return _BY_JS_TYPE.get(match.group(1), ScriptErrorKind.CRASHED)
    return ScriptErrorKind.CRASHED


def _first_line(err: JSEvalException) -> str:
    """``"<anonymous>:3: TypeError: x is null"`` → ``"TypeError: x is null"``."""
    return _WHERE.sub("", str(err).split("\n", 1)[0])


def _loads(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # JavaScript strings may hold lone surrogates, which orjson rejects and json accepts.
        value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"bridge reply is {type(value).__name__}, expected an object")
    return value


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class ScriptRuntime:
    """One running script: its V8 context, its timers, subscriptions and host listeners.

    Create it with :meth:`ScriptEngine.start`. The device calls :meth:`status`, :meth:`eval`
    (``Script.Eval``) and :meth:`stop`; everything else arrives through the host's listeners.
    """

    def __init__(self, script_id: int, host: ScriptHost, engine: ScriptEngine) -> None:
        self.script_id = script_id
        self._host = host
        self._engine = engine
        self._limits = engine.limits
        self._timeout_s = engine.callback_timeout_s
        self._budget = engine.heap_budget_bytes
        self._mr: MiniRacer | None = None
        self._running = False
        self._errors: list[str] = []
        self._queue: asyncio.Queue[_WorkItem] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._timers: dict[int, _Timer] = {}
        self._subscriptions: set[str] = set()
        self._unsubscribe: list[Unsubscribe] = []
        self._status_handlers = 0
        self._event_handlers = 0
        self._mirror = _Mirror()
        self._baseline = 0
        self._mem_used = 0
        self._mem_peak = 0
        self._sampled_at = -math.inf
        self._in_v8 = False

    # --- the device's side ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """``True`` until the script is stopped or crashes."""
        return self._running

    @property
    def errors(self) -> list[str]:
        """The ``errors`` of ``Script.GetStatus`` (empty while healthy)."""
        return list(self._errors)

    def status(self) -> dict[str, Any]:
        """``running``, ``mem_used``, ``mem_peak``, ``mem_free`` and, after a failure, ``errors``.

        Memory figures are device bytes: V8 heap above the empty context's, divided by
        :data:`V8_BYTES_PER_DEVICE_BYTE`; ``mem_peak`` is the highest sample taken.
        """
        if self._running and not self._in_v8:
            # Safe only between evaluations: heap_stats() waits for the isolate synchronously.
            self._sample_heap(max_age_s=STATUS_SAMPLE_AGE_S)
        if not self._running:
            stopped: dict[str, Any] = {"running": False, "mem_free": DEVICE_SCRIPT_HEAP}
            if self._errors:
                stopped["errors"] = list(self._errors)
            return stopped
        used = min(self._mem_used, DEVICE_SCRIPT_HEAP)
        return {
            "running": True,
            "mem_used": used,
            "mem_peak": max(self._mem_peak, used),
            "mem_free": DEVICE_SCRIPT_HEAP - used,
        }

    async def eval(self, code: str) -> Any:
        """Evaluate ``code`` in the script's global scope (``Script.Eval``) and return its value.

        Raises :class:`RpcCallError` when the script is not running or the code throws; a throw
        does not stop the script, but a runaway or out-of-memory evaluation does.
        """
        if not self._running:
            raise RpcCallError(NOT_RUNNING_CODE, "Script is not running", method="Script.Eval")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_EvalRequest(code=code, future=future))
        return await future

    async def stop(self) -> None:
        """Stop the script: cancel its timers, subscriptions, handlers, calls; free its context."""
        was_running = self._running
        self._running = False
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task() and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await self._teardown()
        if was_running:
            logger.debug("script %s stopped", self.script_id)

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued delivery is handled and no ``Shelly.call`` is in flight.

        For tests and for callers that drive the simulated clock step by step.
        """
        async with asyncio.timeout(timeout_s):
            while self._running:
                await self._queue.join()
                pending = {task for task in self._calls if not task.done()}
                if pending:
                    await asyncio.wait(pending)
                    continue
                if self._queue.empty():
                    return

    # --- boot ---------------------------------------------------------------------------------

    async def _boot(self, code: str) -> None:
        self._mr = MiniRacer()
        await self._v8(_prelude())
        if self._engine.baseline_heap is None:
            # Every context holds the same prelude: measure the empty heap once per engine
            # (a GC plus a heap sample block the loop for several milliseconds).
            self._mr.low_memory_notification()
            self._engine.baseline_heap = int(self._mr.heap_stats()["used_heap_size"])
        self._baseline = self._engine.baseline_heap
        self._mr.set_hard_memory_limit(self._baseline + self._budget)
        self._running = True
        state = self._initial_state()
        reply = await self._evaluate(f"__kw.init({_dumps(state)})")
        if reply is None:
            return
        try:
            await self._v8(code)
        except TimeoutError:
            await self._crash(ScriptErrorKind.CRASHED, "script ran too long at top level")
            return
        except JSEvalException as err:
            if not isinstance(err, JSOOMException):  # after OOM the isolate is terminated
                await self._flush_logs()
            await self._crash(classify_js_error(err), _first_line(err))
            return
        self._listen()
        if await self._evaluate(self._run_expr([])) is None:
            return
        self._worker = asyncio.create_task(self._work(), name=f"script:{self.script_id}")

    def _initial_state(self) -> dict[str, Any]:
        keys = list(_SINGLETON_KEYS)
        keys += [f"{name}:{i}" for name in _INDEXED_KEYS for i in range(_MAX_INDEX)]
        status: dict[str, Any] = {}
        config: dict[str, Any] = {}
        for key in keys:
            if (value := self._host.component_status(key)) is not None:
                status[key] = value
            if (conf := self._host.component_config(key)) is not None:
                config[key] = conf
        return {
            "id": self.script_id,
            "limits": {
                "timers": self._limits.timers,
                "calls": self._limits.calls,
                "status_handlers": self._limits.status_handlers,
                "event_handlers": self._limits.event_handlers,
                "mqtt_subscriptions": self._limits.mqtt_subscriptions,
            },
            "now": self._host.now(),
            "mqtt": self._host.mqtt_connected(),
            "info": self._host.device_info(),
            "st": status,
            "cfg": config,
        }

    def _listen(self) -> None:
        self._unsubscribe = [
            self._host.add_status_listener(self._on_status),
            self._host.add_event_listener(self._on_event),
            self._host.add_mqtt_connection_listener(self._on_connection),
        ]

    # --- deliveries from the host (sync callbacks: they only enqueue) -------------------------

    def _on_status(self, key: str, delta: dict[str, Any]) -> None:
        if not self._running:
            return
        self._mirror.dirty_status.add(key)
        if self._status_handlers:
            self._queue.put_nowait(("status", key, delta))

    def _on_event(self, info: dict[str, Any]) -> None:
        if not self._running:
            return
        if info.get("event") == "config_changed" and isinstance(info.get("component"), str):
            self._mirror.dirty_config.add(info["component"])
        if self._event_handlers:
            self._queue.put_nowait(("event", info))

    def _on_connection(self, connected: bool) -> None:
        if self._running:
            self._queue.put_nowait(("connection", connected))

    def _on_mqtt_message(self, topic_filter: str, topic: str, payload: str) -> None:
        if self._running:
            self._queue.put_nowait(("mqtt", topic_filter, topic, payload))

    # --- the worker ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while self._running:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._handle(batch)
            except Exception as err:  # a bug on our side or the host's must not leave a zombie
                logger.exception("script %s: delivery failed", self.script_id)
                await self._crash(ScriptErrorKind.INTERNAL_ERROR, f"{type(err).__name__}: {err}")
                self._fail_pending(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _handle(self, batch: list[_WorkItem]) -> None:
        deliveries: list[_Delivery] = []
        for item in batch:
            if isinstance(item, _EvalRequest):
                if deliveries:
                    await self._evaluate(self._run_expr(deliveries))
                    deliveries = []
                await self._eval_request(item)
            else:
                deliveries.append(item)
            if not self._running:
                break
        if deliveries and self._running:
            await self._evaluate(self._run_expr(deliveries))
        if not self._running:
            self._fail_pending(batch)

    async def _eval_request(self, request: _EvalRequest) -> None:
        expr = f"__kw.evaluate({_dumps(self._state())}, {_dumps(request.code)})"
        reply = await self._evaluate(expr, crash_on_throw=False)
        if request.future.done():
            return
        if reply is None:
            request.future.set_exception(
                RpcCallError(
                    NOT_RUNNING_CODE, "Script stopped while evaluating", method="Script.Eval"
                )
            )
        elif "error" in reply:
            error = reply["error"]
            request.future.set_exception(
                RpcCallError(
                    EVAL_ERROR_CODE, f"{error['type']}: {error['message']}", method="Script.Eval"
                )
            )
        else:
            request.future.set_result(reply.get("value"))

    def _fail_pending(self, batch: list[_WorkItem]) -> None:
        for item in batch:
            if isinstance(item, _EvalRequest) and not item.future.done():
                item.future.set_exception(
                    RpcCallError(NOT_RUNNING_CODE, "Script is not running", method="Script.Eval")
                )

    def _run_expr(self, deliveries: list[_Delivery]) -> str:
        return f"__kw.run({_dumps(self._state())}, {_dumps(deliveries)})"

    def _state(self) -> dict[str, Any]:
        mirror = self._mirror
        # Take the dirty sets first: reading a status may make the device report (and dirty)
        # more changes, which the next delivery then picks up.
        keys = mirror.status | mirror.dirty_status
        conf_keys = mirror.config | mirror.dirty_config
        mirror.dirty_status = set()
        mirror.dirty_config = set()
        state: dict[str, Any] = {"now": self._host.now(), "mqtt": self._host.mqtt_connected()}
        if keys:
            state["st"] = {key: self._host.component_status(key) for key in keys}
        state["cfg"] = {key: self._host.component_config(key) for key in conf_keys}
        if mirror.info:
            state["info"] = self._host.device_info()
        return state

    async def _evaluate(self, expr: str, *, crash_on_throw: bool = True) -> dict[str, Any] | None:
        """Run one bridge call; apply the script's requests; crash the script on failure.

        Returns the bridge's reply, or ``None`` if the script is no longer running.
        """
        assert self._mr is not None
        try:
            raw = await self._v8(expr)
        except TimeoutError:
            await self._crash(
                ScriptErrorKind.CRASHED, f"callback ran longer than {self._timeout_s} s"
            )
            return None
        except JSEvalException as err:
            await self._crash(classify_js_error(err), _first_line(err))
            return None
        if not isinstance(raw, str):
            await self._crash(
                ScriptErrorKind.INTERNAL_ERROR, f"bridge returned {type(raw).__name__}"
            )
            return None
        reply = _loads(raw)
        self._apply(reply["out"])
        self._apply_touch(reply["touch"])
        error = reply.get("error")
        if error is not None and crash_on_throw:
            kind = _BY_JS_TYPE.get(error["type"], ScriptErrorKind.CRASHED)
            await self._crash(kind, f"{error['type']}: {error['message']}")
            return None
        return reply

    async def _flush_logs(self) -> None:
        """After a top-level throw, still show what the script printed before it."""
        if self._mr is None:
            return
        with contextlib.suppress(JSEvalException, TimeoutError):
            raw = await self._v8(self._run_expr([]))
            if isinstance(raw, str):
                for entry in _loads(raw)["out"]:
                    if entry[0] == "log":
                        self._host.log(self.script_id, str(entry[1]))

    # --- requests from the script -------------------------------------------------------------

    def _apply(self, out: list[list[Any]]) -> None:
        for entry in out:
            kind = entry[0]
            if kind == "log":
                self._host.log(self.script_id, str(entry[1]))
            elif kind == "publish":
                self._host.mqtt_publish(entry[1], entry[2], int(entry[3]), bool(entry[4]))
            elif kind == "call":
                self._start_call(int(entry[1]), str(entry[2]), entry[3])
            elif kind == "timer_set":
                self._timer_set(int(entry[1]), float(entry[2]) / 1000.0, bool(entry[3]))
            elif kind == "timer_clear":
                self._timer_clear(int(entry[1]))
            elif kind == "emit":
                self._host.emit_event(self.script_id, str(entry[1]), entry[2])
            elif kind == "subscribe":
                self._subscribe(str(entry[1]))
            elif kind == "unsubscribe":
                self._subscriptions.discard(entry[1])
                self._host.mqtt_unsubscribe(str(entry[1]))
            elif kind == "handlers":
                if entry[1] == "status":
                    self._status_handlers = int(entry[2])
                else:
                    self._event_handlers = int(entry[2])

    def _apply_touch(self, touched: list[list[str]]) -> None:
        for kind, key in touched:
            if kind == "st":
                self._mirror.status.add(key)
            elif kind == "cfg":
                self._mirror.config.add(key)
            else:
                self._mirror.info = True

    def _subscribe(self, topic_filter: str) -> None:
        def deliver(topic: str, payload: str) -> None:
            self._on_mqtt_message(topic_filter, topic, payload)

        try:
            self._host.mqtt_subscribe(topic_filter, deliver)
        except RpcCallError as err:
            # The script checked MQTT was enabled from its mirror; the device disagreed since.
            self._host.log(self.script_id, f"MQTT.subscribe({topic_filter}) failed: {err.message}")
            return
        self._subscriptions.add(topic_filter)

    def _start_call(self, call_id: int, method: str, params: Any) -> None:
        task = asyncio.create_task(self._call(call_id, method, params))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, call_id: int, method: str, params: Any) -> None:
        args = params if isinstance(params, dict) else None
        try:
            result = await self._host.call(method, args)
        except RpcCallError as err:
            delivery: _Delivery = ("result", call_id, None, err.code, err.message)
        except Exception as err:  # a device answers every call, even when the handler has a bug
            logger.exception("script %s: %s failed", self.script_id, method)
            delivery = ("result", call_id, None, -113, f"{type(err).__name__}: {err}")
        else:
            delivery = ("result", call_id, result, 0, "")
        if self._running:
            self._queue.put_nowait(delivery)

    # --- timers on the simulated clock ---------------------------------------------------------

    def _timer_set(self, timer_id: int, period_s: float, repeat: bool) -> None:
        if repeat:
            period_s = max(period_s, MIN_REPEAT_PERIOD_S)
        timer = _Timer(period_s=period_s, repeat=repeat, deadline=self._host.now() + period_s)
        self._timers[timer_id] = timer
        self._arm(timer_id, timer)

    def _arm(self, timer_id: int, timer: _Timer) -> None:
        delay = max(0.0, timer.deadline - self._host.now())
        timer.handle = self._host.call_later(delay, lambda: self._timer_due(timer_id))

    def _timer_due(self, timer_id: int) -> None:
        timer = self._timers.get(timer_id)
        if timer is None or not self._running:
            return
        deadline = timer.deadline
        if timer.repeat:
            # Keep the grid of the first deadline, so a late host does not make the timer drift;
            # ticks the host missed entirely are coalesced into this one, as on a busy device.
            now = self._host.now()
            missed = max(0, math.floor((now - deadline) / timer.period_s))
            timer.deadline = deadline + (missed + 1) * timer.period_s
            self._arm(timer_id, timer)
        else:
            del self._timers[timer_id]
        self._queue.put_nowait(("timer", timer_id, timer.deadline if timer.repeat else deadline))

    def _timer_clear(self, timer_id: int) -> None:
        timer = self._timers.pop(timer_id, None)
        if timer is not None and timer.handle is not None:
            timer.handle.cancel()

    # --- failure and teardown --------------------------------------------------------------------

    async def _crash(self, kind: ScriptErrorKind, detail: str) -> None:
        if not self._running:
            return
        self._errors = [kind.value]
        self._running = False
        self._host.log(
            self.script_id,
            f"Uncaught {detail}" if kind != ScriptErrorKind.OUT_OF_MEMORY else "Out of memory",
        )
        logger.info("script %s stopped with %s: %s", self.script_id, kind.value, detail)
        await self._teardown()

    async def _teardown(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for timer in self._timers.values():
            if timer.handle is not None:
                timer.handle.cancel()
        self._timers.clear()
        for topic_filter in sorted(self._subscriptions):
            self._host.mqtt_unsubscribe(topic_filter)
        self._subscriptions.clear()
        current = asyncio.current_task()
        pending = [task for task in self._calls if task is not current and not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queue.task_done()
            if isinstance(item, _EvalRequest) and not item.future.done():
                item.future.set_exception(
                    RpcCallError(NOT_RUNNING_CODE, "Script is not running", method="Script.Eval")
                )
        if self._mr is not None:
            self._mr.close()
            self._mr = None
        self._engine._forget(self)

    async def _v8(self, code: str) -> Any:
        """Evaluate ``code``; ``TimeoutError`` (and V8 terminated) past the time limit.

        The limit is meant for the script, not for a congested event loop: V8's answer reaches
        Python through a loop callback, so before giving up we let callbacks that are already
        queued run, and a deadline the loop itself overslept is extended (at most twice).
        """
        assert self._mr is not None
        loop = asyncio.get_running_loop()
        self._in_v8 = True
        task = asyncio.ensure_future(self._mr.eval_cancelable(code))
        try:
            deadline = loop.time() + self._timeout_s
            extensions = 0
            while True:
                await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
                for _ in range(_GRACE_YIELDS):
                    if task.done():
                        return task.result()
                    await asyncio.sleep(0)
                overslept = loop.time() - deadline
                if overslept > _LOOP_LAG_S and extensions < 2:
                    extensions += 1
                    deadline = loop.time() + self._timeout_s
                    continue
                raise TimeoutError
        finally:
            if not task.done():
                task.cancel()  # terminates the JavaScript that is still running
                with contextlib.suppress(asyncio.CancelledError, JSEvalException):
                    await task
            self._in_v8 = False

    def _sample_heap(self, *, max_age_s: float) -> None:
        now = time.monotonic()
        if self._mr is None or self._in_v8 or now - self._sampled_at < max_age_s:
            return
        self._sampled_at = now
        self._mr.low_memory_notification()
        used_v8 = int(self._mr.heap_stats()["used_heap_size"]) - self._baseline
        self._mem_used = max(0, math.ceil(used_v8 / V8_BYTES_PER_DEVICE_BYTE))
        self._mem_peak = max(self._mem_peak, self._mem_used)


class ScriptEngine:
    """Starts scripts in V8; one engine serves every device of a fleet.

    Use it as an async context manager (or call :meth:`aclose`) so every runtime it started is
    stopped and its V8 context freed.
    """

    def __init__(
        self,
        *,
        callback_timeout_s: float = CALLBACK_TIMEOUT_S,
        heap_budget_bytes: int = DEVICE_SCRIPT_HEAP * V8_BYTES_PER_DEVICE_BYTE,
        limits: ScriptLimits | None = None,
    ) -> None:
        self.callback_timeout_s = callback_timeout_s
        self.heap_budget_bytes = heap_budget_bytes
        self.limits = limits or ScriptLimits()
        self.baseline_heap: int | None = None
        """V8 heap of a context holding only the prelude (measured by the first start)."""
        self._runtimes: set[ScriptRuntime] = set()

    @property
    def runtimes(self) -> frozenset[ScriptRuntime]:
        """The runtimes that are still running."""
        return frozenset(self._runtimes)

    async def start(self, script_id: int, code: str, host: ScriptHost) -> ScriptRuntime:
        """Start ``code`` as script ``script_id`` of the device behind ``host``.

        A script that fails to parse or throws at top level still returns a runtime; its
        ``status()`` shows ``running: False`` and the ``errors``, as on a device.
        """
        runtime = ScriptRuntime(script_id, host, self)
        self._runtimes.add(runtime)
        try:
            await runtime._boot(code)
        except BaseException:
            await runtime.stop()
            raise
        return runtime

    async def aclose(self) -> None:
        """Stop every runtime this engine started."""
        for runtime in list(self._runtimes):
            await runtime.stop()

    async def __aenter__(self) -> ScriptEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _forget(self, runtime: ScriptRuntime) -> None:
        self._runtimes.discard(runtime)


__all__ = [
    "CALLBACK_TIMEOUT_S",
    "DEVICE_SCRIPT_HEAP",
    "V8_BYTES_PER_DEVICE_BYTE",
    "ScriptEngine",
    "ScriptErrorKind",
    "ScriptLimits",
    "ScriptRuntime",
    "classify_js_error",
]
