"""The script engine: every API function, limits, errors, timers on the simulated clock.

The host here is a small in-process device (:class:`LabHost`): a clock that moves only when the
test advances it, a KVS (the simulator's own), status/event/MQTT plumbing recorded in lists. It
implements the ScriptHost interface the real device implements; it is not a mock of anything.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from kilowatch.fleet.scripts import HOURLY_ENERGY, read_script
from kilowatch.mqtt.topics import topic_matches
from shellysim.errors import RpcCallError
from shellysim.kvs import Kvs
from shellysim.scripting import DEVICE_SCRIPT_HEAP, ScriptEngine, ScriptRuntime

HOUR = 3600.0
T0 = 1_720_717_200.0  # 2024-07-11 17:00:00 UTC, a full hour


@dataclass(order=True)
class _Scheduled:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class LabHost:
    """A device as a script sees it, with a clock the test moves by hand."""

    def __init__(self, *, now: float = T0, mqtt_enabled: bool = True) -> None:
        self.clock = now
        self.device_id = "shellypmminig3-ecda3bc4ddb0"
        self.statuses: dict[str, dict[str, Any]] = {
            "sys": {"mac": "ECDA3BC4DDB0", "unixtime": int(now), "uptime": 10},
            "mqtt": {"connected": False},
            "pm1:0": {
                "id": 0,
                "apower": 0.0,
                "aenergy": {"total": 1000.0, "by_minute": [0, 0, 0], "minute_ts": int(now)},
                "ret_aenergy": {"total": 0.0, "by_minute": [0, 0, 0], "minute_ts": int(now)},
            },
        }
        self.configs: dict[str, dict[str, Any]] = {
            "mqtt": {"enable": mqtt_enabled, "server": "127.0.0.1:1883"},
            "pm1:0": {"id": 0, "name": None},
        }
        self.kvs = Kvs()
        self.connected = False
        self.power_w = 0.0
        self.logs: list[str] = []
        self.published: list[tuple[str, str, int, bool]] = []
        self.emitted: list[tuple[int, str, Any]] = []
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.subscriptions: dict[str, Callable[[str, str], None]] = {}
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()
        self._status_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.hour_reports = True
        """Report pm1:0's counters at every full hour, as a device's minute rollover does."""
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._conn_listeners: list[Callable[[bool], None]] = []
        self.runtimes: list[ScriptRuntime] = []

    # --- ScriptHost -------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
        self.calls.append(method)
        p = params or {}
        name = method.lower()
        if name == "kvs.set":
            return self.kvs.set(p)
        if name == "kvs.get":
            return self.kvs.get(p)
        if name == "kvs.delete":
            return self.kvs.delete(p)
        if name == "shelly.getdeviceinfo":
            return self.device_info()
        if name == "test.wait":
            await self.gate.wait()
            return {"waited": True}
        raise RpcCallError(404, f"No handler for {method}", method=method)

    def component_status(self, key: str) -> dict[str, Any] | None:
        status = self.statuses.get(key)
        if key == "sys" and status is not None:
            status = {**status, "unixtime": int(self.clock)}
        return status

    def component_config(self, key: str) -> dict[str, Any] | None:
        return self.configs.get(key)

    def device_info(self) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "mac": "ECDA3BC4DDB0",
            "ver": "1.4.0",
            "gen": 3,
            "model": "S3PM-001PCEU16",
            "app": "MiniPMG3",
        }

    def emit_event(self, script_id: int, name: str, data: Any) -> None:
        self.emitted.append((script_id, name, data))
        self.fire_event(
            {
                "component": f"script:{script_id}",
                "id": script_id,
                "event": name,
                "data": data,
                "ts": self.clock,
            }
        )

    def mqtt_connected(self) -> bool:
        return self.connected

    def mqtt_publish(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        if not self.connected:
            return False
        self.published.append((topic, payload, qos, retain))
        return True

    def mqtt_subscribe(self, topic_filter: str, callback: Callable[[str, str], None]) -> None:
        if not self.configs["mqtt"]["enable"]:
            raise RpcCallError(-109, "MQTT is disabled")
        self.subscriptions[topic_filter] = callback

    def mqtt_unsubscribe(self, topic_filter: str) -> bool:
        return self.subscriptions.pop(topic_filter, None) is not None

    def add_mqtt_connection_listener(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        self._conn_listeners.append(listener)
        return lambda: (
            self._conn_listeners.remove(listener) if listener in self._conn_listeners else None
        )

    def now(self) -> float:
        return self.clock

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _Scheduled:
        item = _Scheduled(self.clock + delay_s, next(self._seq), callback)
        heapq.heappush(self._queue, item)
        return item

    def log(self, script_id: int, text: str) -> None:
        self.logs.append(text)

    def add_status_listener(
        self, listener: Callable[[str, dict[str, Any]], None]
    ) -> Callable[[], None]:
        self._status_listeners.append(listener)
        return lambda: (
            self._status_listeners.remove(listener) if listener in self._status_listeners else None
        )

    def add_event_listener(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        self._event_listeners.append(listener)
        return lambda: (
            self._event_listeners.remove(listener) if listener in self._event_listeners else None
        )

    # --- the test's side ----------------------------------------------------------------------

    @property
    def listener_count(self) -> int:
        return len(self._status_listeners) + len(self._event_listeners) + len(self._conn_listeners)

    @property
    def pending_timers(self) -> int:
        return sum(1 for item in self._queue if not item.cancelled)

    def energy(self) -> float:
        return float(self.statuses["pm1:0"]["aenergy"]["total"])

    def _integrate(self, until: float) -> None:
        # Like a device, report the counters at every full hour (minute_ts = the hour): the
        # metering script takes them as the hour's boundary.
        while (boundary := (self.clock // HOUR + 1) * HOUR) <= until:
            self._add_energy(boundary)
            if self.hour_reports:
                report = {
                    "total": self.energy(),
                    "by_minute": [0, 0, 0],
                    "minute_ts": int(boundary),
                }
                self.change_status("pm1:0", {"aenergy": report})
        self._add_energy(until)

    def _add_energy(self, until: float) -> None:
        meter = self.statuses["pm1:0"]
        meter["aenergy"]["total"] = round(
            meter["aenergy"]["total"] + self.power_w * (until - self.clock) / HOUR, 6
        )
        self.clock = until

    async def settle(self) -> None:
        for runtime in self.runtimes:
            await runtime.settle()

    async def advance(self, seconds: float) -> None:
        """Move the clock; run every due callback at its own instant and let the scripts react."""
        end = self.clock + seconds
        await self.settle()
        while self._queue and self._queue[0].when <= end:
            item = heapq.heappop(self._queue)
            if item.cancelled:
                continue
            self._integrate(max(self.clock, item.when))
            item.callback()
            await self.settle()
        self._integrate(end)
        await self.settle()

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.statuses["mqtt"] = {"connected": connected}
        for listener in list(self._conn_listeners):
            listener(connected)

    def change_status(self, key: str, delta: dict[str, Any]) -> None:
        self.statuses.setdefault(key, {}).update(delta)
        for listener in list(self._status_listeners):
            listener(key, delta)

    def fire_event(self, info: dict[str, Any]) -> None:
        for listener in list(self._event_listeners):
            listener(info)

    def deliver(self, topic: str, payload: str) -> None:
        for topic_filter, callback in list(self.subscriptions.items()):
            if topic_matches(topic_filter, topic):
                callback(topic, payload)


@pytest.fixture
async def engine() -> AsyncIterator[ScriptEngine]:
    async with ScriptEngine(callback_timeout_s=0.5) as eng:
        yield eng


@pytest.fixture
def host() -> LabHost:
    return LabHost()


async def start(
    engine: ScriptEngine, host: LabHost, code: str, script_id: int = 1
) -> ScriptRuntime:
    runtime = await engine.start(script_id, code, host)
    host.runtimes.append(runtime)
    await host.settle()
    return runtime


# --- starting, printing, errors ---------------------------------------------------------------


async def test_print_and_console_log_go_to_the_debug_log(
    engine: ScriptEngine, host: LabHost
) -> None:
    rt = await start(
        engine,
        host,
        'print("hello", 42, {a: 1}); console.log("id", Shelly.getCurrentScriptId(), Script.id);',
    )
    assert rt.running
    assert host.logs == ['hello 42 {"a":1}', "id 1 1"]
    status = rt.status()
    assert status["running"] is True
    assert status["mem_used"] + status["mem_free"] == DEVICE_SCRIPT_HEAP
    assert 0 <= status["mem_used"] <= status["mem_peak"]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("let x = ;", "syntax_error"),
        ("undefinedFunction();", "reference_error"),
        ("let o = null; o.field = 1;", "type_error"),
        ('throw new Error("boom");', "crashed"),
        ("function f() { return f() + 1; } f();", "crashed"),
    ],
)
async def test_a_script_that_throws_at_load_stops_with_errors(
    engine: ScriptEngine, host: LabHost, code: str, error: str
) -> None:
    rt = await engine.start(1, code, host)
    assert not rt.running
    assert rt.status() == {"running": False, "mem_free": DEVICE_SCRIPT_HEAP, "errors": [error]}
    assert host.logs and host.logs[-1].startswith("Uncaught")
    assert engine.runtimes == frozenset()


async def test_output_before_a_throw_is_still_logged(engine: ScriptEngine, host: LabHost) -> None:
    rt = await engine.start(1, 'print("before"); missing.x = 1;', host)
    assert rt.status()["errors"] == ["reference_error"]
    assert host.logs[0] == "before"


async def test_a_throw_in_a_callback_stops_the_script_and_frees_everything(
    engine: ScriptEngine, host: LabHost
) -> None:
    code = """
    MQTT.subscribe("a/b", function () {});
    Shelly.addStatusHandler(function () {});
    Timer.set(1000, true, function () { print("tick"); });
    Timer.set(5000, false, function () { null.boom(); });
    """
    rt = await start(engine, host, code)
    await host.advance(4.5)
    assert host.logs.count("tick") == 4
    await host.advance(1)
    assert not rt.running
    assert rt.status()["errors"] == ["type_error"]
    assert host.subscriptions == {}
    assert host.listener_count == 0
    assert host.pending_timers == 0
    await host.advance(10)
    assert host.logs.count("tick") == 4  # the one-shot at t=5 was due first and crashed the script


async def test_a_runaway_script_is_killed_and_the_loop_stays_free(
    engine: ScriptEngine, host: LabHost
) -> None:
    rt = await start(engine, host, "Timer.set(1000, false, function () { while (true) {} });")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        await host.advance(2)
    finally:
        task.cancel()
    assert not rt.running
    assert rt.status()["errors"] == ["crashed"]
    assert ticks >= 10  # the event loop kept running while V8 spun


async def test_a_runaway_top_level_is_killed(engine: ScriptEngine, host: LabHost) -> None:
    rt = await engine.start(1, "for (;;) {}", host)
    assert rt.status()["errors"] == ["crashed"]


async def test_heap_exhaustion_is_out_of_memory(engine: ScriptEngine, host: LabHost) -> None:
    rt = await engine.start(
        1, 'let keep = []; while (true) keep.push("some text " + keep.length);', host
    )
    assert rt.status()["errors"] == ["out_of_memory"]


async def test_memory_figures_grow_with_what_the_script_keeps(
    engine: ScriptEngine, host: LabHost
) -> None:
    small = await start(engine, host, "let a = 1;", script_id=1)
    big = await start(
        engine,
        host,
        'let keep = []; for (let i = 0; i < 3000; i++) keep.push("v" + i);',
        script_id=2,
    )
    assert big.status()["mem_used"] > small.status()["mem_used"] + 500
    assert big.status()["mem_free"] < small.status()["mem_free"]


async def test_scripts_are_isolated_from_each_other(engine: ScriptEngine, host: LabHost) -> None:
    one = await start(engine, host, "var shared = 'one';", script_id=1)
    two = await start(engine, host, "var shared = 'two';", script_id=2)
    assert await one.eval("shared") == "one"
    assert await two.eval("shared") == "two"
    assert await two.eval("Shelly.getCurrentScriptId()") == 2


async def test_stop_is_idempotent_and_frees_the_context(
    engine: ScriptEngine, host: LabHost
) -> None:
    rt = await start(engine, host, "Timer.set(1000, true, function () { print('x'); });")
    await rt.stop()
    await rt.stop()
    assert not rt.running
    assert rt.status() == {"running": False, "mem_free": DEVICE_SCRIPT_HEAP}
    assert host.pending_timers == 0
    assert host.listener_count == 0
    with pytest.raises(RpcCallError) as err:
        await rt.eval("1")
    assert err.value.code == -109


# --- Script.Eval -----------------------------------------------------------------------------


async def test_eval_sees_globals_and_returns_values(engine: ScriptEngine, host: LabHost) -> None:
    rt = await start(
        engine, host, "let counter = 41; function bump() { counter++; return counter; }"
    )
    assert await rt.eval("bump()") == 42
    assert await rt.eval("({a: [1, 2], b: 'x'})") == {"a": [1, 2], "b": "x"}
    assert await rt.eval("undefined") is None
    assert await rt.eval("print('from eval'); 'ok'") == "ok"
    assert "from eval" in host.logs


async def test_eval_error_is_an_rpc_error_and_the_script_keeps_running(
    engine: ScriptEngine, host: LabHost
) -> None:
    rt = await start(engine, host, "let v = 1;")
    with pytest.raises(RpcCallError) as err:
        await rt.eval("nope()")
    assert err.value.code == -103
    assert "ReferenceError" in err.value.message
    assert rt.running
    assert await rt.eval("v + 1") == 2


async def test_a_runaway_eval_stops_the_script(engine: ScriptEngine, host: LabHost) -> None:
    rt = await start(engine, host, "let v = 1;")
    with pytest.raises(RpcCallError):
        await rt.eval("while (true) {}")
    assert rt.status()["errors"] == ["crashed"]


# --- timers on the simulated clock ------------------------------------------------------------


async def test_timers_fire_on_the_simulated_clock(engine: ScriptEngine, host: LabHost) -> None:
    code = """
    let seen = [];
    Timer.set(60000, true, function (ud) { seen.push([ud, Date.now() / 1000]); }, "rep");
    Timer.set(90000, false, function (ud) { seen.push([ud, Date.now() / 1000]); }, "once");
    """
    rt = await start(engine, host, code)
    await host.advance(3 * 60)
    seen = await rt.eval("seen")
    assert seen == [
        ["rep", T0 + 60],
        ["once", T0 + 90],
        ["rep", T0 + 120],
        ["rep", T0 + 180],
    ]
    assert await rt.eval("new Date().getTime() / 1000") == T0 + 180
    assert await rt.eval("Date.now() / 1000 === new Date().valueOf() / 1000") is True


async def test_a_day_of_minute_timers_is_cheap(engine: ScriptEngine, host: LabHost) -> None:
    rt = await start(engine, host, "let n = 0; Timer.set(60000, true, function () { n++; });")
    # CPU time of the process (Python and the V8 threads): stable on a busy machine, unlike
    # wall time. One fire costs well under a millisecond; 4 ms would mean something is wrong.
    began = time.process_time()
    await host.advance(24 * HOUR)
    cpu = time.process_time() - began
    assert await rt.eval("n") == 24 * 60
    assert cpu < 24 * 60 * 0.004, f"{24 * 60} timer fires took {cpu:.2f} s of CPU"


async def test_timer_clear_and_limits(engine: ScriptEngine, host: LabHost) -> None:
    code = """
    let fired = 0;
    let handles = [];
    for (let i = 0; i < 5; i++) handles.push(Timer.set(1000, false, function () { fired++; }));
    let sixth = "none";
    try { Timer.set(1000, false, function () {}); } catch (e) { sixth = e.message; }
    let cleared = Timer.clear(handles[0]);
    let again = Timer.clear(handles[0]);
    let bogus = Timer.clear("x");
    """
    rt = await start(engine, host, code)
    assert await rt.eval("sixth") == "Too many timers"
    assert await rt.eval("[cleared, again, bogus === undefined]") == [True, False, True]
    await host.advance(2)
    assert await rt.eval("fired") == 4
    # one-shot timers that fired free their slots
    assert await rt.eval("Timer.set(1000, false, function () {}) > 0") is True


# --- Shelly.call and KVS ------------------------------------------------------------------------


async def test_shelly_call_kvs_round_trip(engine: ScriptEngine, host: LabHost) -> None:
    code = """
    let got = null;
    Shelly.call("KVS.Set", {key: "k", value: "v1"}, function (res, code, msg, ud) {
      Shelly.call("KVS.Get", {key: "k"}, function (r2, c2, m2, ud2) {
        got = [r2.value, c2, m2, ud2];
      }, "u2");
    });
    let missing = null;
    Shelly.call("KVS.Get", {key: "absent"}, function (res, code, msg) {
      missing = [res, code, msg];
    });
    let unknown = null;
    Shelly.call("No.Such", {}, function (res, code, msg) { unknown = [code, msg]; });
    """
    rt = await start(engine, host, code)
    assert await rt.eval("got") == ["v1", 0, "", "u2"]
    assert await rt.eval("missing") == [None, -105, "Key 'absent' not found!"]
    assert await rt.eval("unknown") == [404, "No handler for No.Such"]
    assert host.kvs.items["k"][0] == "v1"


async def test_at_most_five_calls_in_flight(engine: ScriptEngine, host: LabHost) -> None:
    code = """
    let done = 0;
    for (let i = 0; i < 5; i++) Shelly.call("Test.Wait", {}, function () { done++; });
    let sixth = "none";
    try { Shelly.call("Test.Wait", {}); } catch (e) { sixth = e.message; }
    """
    rt = await engine.start(1, code, host)
    assert await rt.eval("sixth") == "Too many calls in progress"
    host.gate.set()
    await rt.settle()
    assert await rt.eval("done") == 5
    assert host.calls.count("Test.Wait") == 5
    await rt.eval('Shelly.call("Test.Wait", {}, function () { done++; })')
    await rt.settle()
    assert await rt.eval("done") == 6


# --- component status/config, device info -------------------------------------------------------


async def test_component_status_config_and_device_info(engine: ScriptEngine, host: LabHost) -> None:
    rt = await start(engine, host, "let a = 1;")
    assert await rt.eval('Shelly.getComponentStatus("pm1", 0).aenergy.total') == 1000.0
    assert await rt.eval('Shelly.getComponentStatus("PM1:0").id') == 0
    assert await rt.eval('Shelly.getComponentStatus("switch", 0)') is None
    assert await rt.eval('Shelly.getComponentConfig("mqtt").server') == "127.0.0.1:1883"
    assert await rt.eval("Shelly.getDeviceInfo().id") == host.device_id
    host.statuses["pm1:0"]["aenergy"]["total"] = 1234.5  # changed without a notification
    assert await rt.eval('Shelly.getComponentStatus("pm1:0").aenergy.total') == 1234.5
    assert await rt.eval('Shelly.getComponentStatus("sys").unixtime') == int(T0)
    await host.advance(30)
    assert await rt.eval('Shelly.getComponentStatus("sys").unixtime') == int(T0 + 30)


async def test_status_handlers(engine: ScriptEngine, host: LabHost) -> None:
    code = """
    let seen = [];
    let h = Shelly.addStatusHandler(function (ev, ud) {
      seen.push([ev.component, ev.name, ev.id, ev.delta, ud]);
    }, "u");
    let extra = [];
    for (let i = 0; i < 4; i++) extra.push(Shelly.addStatusHandler(function () {}));
    let sixth = "none";
    try { Shelly.addStatusHandler(function () {}); } catch (e) { sixth = e.message; }
    """
    rt = await start(engine, host, code)
    assert await rt.eval("sixth") == "Too many status handlers"
    host.change_status("pm1:0", {"apower": 55.0})
    host.change_status("sys", {"uptime": 11})
    await rt.settle()
    assert await rt.eval("seen") == [
        ["pm1:0", "pm1", 0, {"apower": 55.0}, "u"],
        ["sys", "sys", None, {"uptime": 11}, "u"],
    ]
    assert await rt.eval("Shelly.removeStatusHandler(h)") is True
    assert await rt.eval("Shelly.removeStatusHandler(h)") is False
    host.change_status("pm1:0", {"apower": 60.0})
    await rt.settle()
    assert len(await rt.eval("seen")) == 2


async def test_event_handlers_and_emit_event(engine: ScriptEngine, host: LabHost) -> None:
    listener = await start(
        engine,
        host,
        """let got = [];
        Shelly.addEventHandler(function (ev, ud) {
          got.push([ev.component, ev.name, ev.id, ev.now, ev.info.event, ev.info.data, ud]);
        }, 7);""",
        script_id=1,
    )
    emitter = await start(engine, host, 'Shelly.emitEvent("hello", {n: 1});', script_id=2)
    await host.settle()
    assert host.emitted == [(2, "hello", {"n": 1})]
    assert await listener.eval("got") == [["script:2", "script", 2, T0, "hello", {"n": 1}, 7]]
    await emitter.eval(
        "Shelly.addEventHandler(function () {}); Shelly.addEventHandler(function () {});"
        "Shelly.addEventHandler(function () {}); Shelly.addEventHandler(function () {});"
        "Shelly.addEventHandler(function () {});"
    )
    with pytest.raises(RpcCallError, match="Too many event handlers"):
        await emitter.eval("Shelly.addEventHandler(function () {})")


async def test_config_changed_refreshes_the_config_a_script_reads(
    engine: ScriptEngine, host: LabHost
) -> None:
    rt = await start(engine, host, "let a = 1;")
    host.configs["pm1:0"] = {"id": 0, "name": "boiler"}
    host.fire_event({"component": "pm1:0", "id": 0, "event": "config_changed", "ts": T0})
    assert await rt.eval('Shelly.getComponentConfig("pm1", 0).name') == "boiler"


# --- MQTT -------------------------------------------------------------------------------------


async def test_mqtt_publish_subscribe_and_connection_handlers(
    engine: ScriptEngine, host: LabHost
) -> None:
    code = """
    let log = [];
    MQTT.setConnectHandler(function () {
      log.push(["up", MQTT.isConnected()]);
      MQTT.publish("t/up", "hi", 1, true);
    });
    MQTT.setDisconnectHandler(function () { log.push(["down", MQTT.isConnected()]); });
    MQTT.subscribe("cmd/+/set", function (topic, message, ud) {
      log.push([topic, message, ud]);
    }, "u");
    let offline = MQTT.publish("t/x", "lost");
    """
    rt = await start(engine, host, code)
    assert await rt.eval("offline") is False
    assert host.published == []
    host.set_connected(True)
    await rt.settle()
    assert host.published == [("t/up", "hi", 1, True)]
    host.deliver("cmd/lamp/set", "on")
    host.deliver("cmd/other", "ignored")
    await rt.settle()
    host.set_connected(False)
    await rt.settle()
    assert await rt.eval("log") == [["up", True], ["cmd/lamp/set", "on", "u"], ["down", False]]
    assert await rt.eval('MQTT.publish("t/obj", {a: 1})') is False
    host.set_connected(True)
    assert await rt.eval('MQTT.publish("t/obj", {a: 1})') is True
    assert host.published[-1] == ("t/obj", '{"a":1}', 0, False)
    assert await rt.eval('MQTT.unsubscribe("cmd/+/set")') is True
    assert host.subscriptions == {}
    assert await rt.eval('MQTT.unsubscribe("cmd/+/set")') is False


async def test_mqtt_subscription_limit(engine: ScriptEngine, host: LabHost) -> None:
    code = """
    for (let i = 0; i < 10; i++) MQTT.subscribe("t/" + i, function () {});
    MQTT.subscribe("t/0", function () {});  // same filter again: replaces, does not count
    let eleventh = "none";
    try { MQTT.subscribe("t/10", function () {}); } catch (e) { eleventh = e.message; }
    """
    rt = await start(engine, host, code)
    assert await rt.eval("eleventh") == "Too many MQTT subscriptions"
    assert len(host.subscriptions) == 10


async def test_mqtt_subscribe_throws_when_mqtt_is_disabled(engine: ScriptEngine) -> None:
    host = LabHost(mqtt_enabled=False)
    rt = await engine.start(1, 'MQTT.subscribe("a", function () {});', host)
    assert rt.status()["errors"] == ["crashed"]
    assert "MQTT is not enabled" in host.logs[-1]


async def test_no_real_time_timers_leak_into_scripts(engine: ScriptEngine, host: LabHost) -> None:
    rt = await start(engine, host, "let a = 1;")
    assert await rt.eval("typeof setTimeout") == "undefined"
    assert await rt.eval("Object.keys(globalThis).indexOf('__kw')") == -1


# --- the metering script kilowatch ships ---------------------------------------------------------

HOURLY = read_script(HOURLY_ENERGY)


def hourly_messages(host: LabHost) -> list[dict[str, Any]]:
    topic = f"/system/{host.device_id}/status"
    return [json.loads(payload) for t, payload, qos, _ in host.published if t == topic and qos == 1]


async def run_hours(host: LabHost, powers: list[float]) -> None:
    for power in powers:
        host.power_w = power
        await host.advance(HOUR)


def test_the_hourly_script_fits_the_device_limit() -> None:
    assert len(HOURLY.encode()) < 15_000


async def test_hourly_script_publishes_every_full_hour(engine: ScriptEngine) -> None:
    host = LabHost(now=T0 + 1200)  # installed 20 minutes into an hour
    host.set_connected(True)
    await start(engine, host, HOURLY)
    host.power_w = 600.0
    await host.advance(HOUR - 1200)  # to T0 + 1 h: the partial first hour is not reported
    assert hourly_messages(host) == []
    await run_hours(host, [1000.0, 250.0, 0.0])
    await host.advance(1)  # the script reads the counters just after the hour turns
    got = hourly_messages(host)
    # the meter's counters at each hour's end: consecutive ones differ by the hour's energy
    totals = [(m.pop("total_energy"), m.pop("total_ret_energy")) for m in got]
    assert [totals[i + 1][0] - totals[i][0] for i in range(2)] == pytest.approx([250.0, 0.0])
    assert {r for _, r in totals} == {0}
    assert got == [
        {
            "fw_ver": "1.4.0",
            "hourly_energy_usage": expected,
            "hourly_ret_energy_usage": 0,
            "id": host.device_id,
            "mac": "ECDA3BC4DDB0",
            "operational": True,
            "timestamp": int(T0 + HOUR * (i + 1)),
        }
        for i, expected in enumerate([1000.0, 250.0, 0.0])
    ]
    assert list(json.loads(host.published[0][1])) == sorted(json.loads(host.published[0][1]))


async def test_hourly_script_stores_and_forwards_across_an_outage_and_a_restart(
    engine: ScriptEngine,
) -> None:
    host = LabHost(now=T0 - 60)
    host.set_connected(True)
    rt = await start(engine, host, HOURLY)
    await host.advance(60)  # T0: the partial first hour closes unreported just after it
    powers = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    for i, power in enumerate(powers):  # hour T0 + i h; MQTT down from T0 + 2 h to T0 + 6 h
        host.power_w = power
        if i == 2:
            host.set_connected(False)
        if i == 3:  # the script restarts in the middle of the outage (Script.Stop/Start, reboot)
            await host.advance(HOUR / 2)
            await rt.stop()
            host.runtimes.remove(rt)
            rt = await start(engine, host, HOURLY)
            await host.advance(HOUR / 2)
        else:
            await host.advance(HOUR)
        if i == 4:
            assert any(key.startswith("kwh_q") for key in host.kvs.items), "backlog in KVS"
    await host.advance(1)  # the last hour closes while MQTT is still down
    assert len(hourly_messages(host)) == 1  # hour 1 ended 1 ms after MQTT went down
    host.set_connected(True)
    await host.settle()
    got = hourly_messages(host)
    stamps = [m["timestamp"] for m in got]
    assert stamps == [int(T0 + HOUR * i) for i in range(len(powers))], "each hour once, in order"
    assert [m["hourly_energy_usage"] for m in got] == pytest.approx(powers, abs=0.002)
    assert not any(key.startswith("kwh_q") for key in host.kvs.items), "backlog cleared"


async def test_hourly_script_backlog_is_bounded_in_kvs(engine: ScriptEngine) -> None:
    host = LabHost(now=T0)
    await start(engine, host, HOURLY)
    host.power_w = 43_000.0  # large numbers: the longest encoding
    await host.advance(130 * HOUR + 1)
    values = {k: v for k, (v, _) in host.kvs.items.items() if k.startswith("kwh_")}
    assert all(len(v) <= 253 for v in values.values())
    assert len(values) <= 11  # kwh_base and at most 10 queue keys
    assert any("dropping" in line for line in host.logs)
    host.set_connected(True)
    await host.settle()
    got = hourly_messages(host)
    assert 70 <= len(got) <= 96  # 7 of the longest entries per key
    assert got[-1]["timestamp"] == int(T0 + 129 * HOUR)
    assert {m["hourly_energy_usage"] for m in got} == {43_000.0}


async def test_hourly_script_counts_from_zero_after_a_counter_reset(engine: ScriptEngine) -> None:
    host = LabHost(now=T0 - 1)
    host.set_connected(True)
    await start(engine, host, HOURLY)
    host.power_w = 1000.0
    await host.advance(1 + HOUR / 2)
    host.statuses["pm1:0"]["aenergy"]["total"] = 0.0  # firmware update reset the counter
    await host.advance(HOUR / 2 + 0.002)
    assert [m["hourly_energy_usage"] for m in hourly_messages(host)] == pytest.approx([500.0])


async def test_remove_event_handler_timer_info_and_dates(
    engine: ScriptEngine, host: LabHost
) -> None:
    code = """
    let got = 0;
    let h = Shelly.addEventHandler(function () { got++; });
    let t = Timer.set(30000, true, function () {});
    """
    rt = await start(engine, host, code)
    host.fire_event({"component": "sys", "event": "x", "ts": T0})
    await rt.settle()
    assert await rt.eval("[Shelly.removeEventHandler(h), Shelly.removeEventHandler(h)]") == [
        True,
        False,
    ]
    host.fire_event({"component": "sys", "event": "y", "ts": T0})
    await rt.settle()
    assert await rt.eval("got") == 1
    await host.advance(30)
    assert await rt.eval("Timer.getInfo(t)") == {"interval": 30000, "next": T0 + 60}
    assert await rt.eval("Timer.getInfo(12345) === undefined") is True
    assert await rt.eval("new Date(0).getTime()") == 0
    assert await rt.eval("new Date(2024, 0, 2).getFullYear()") == 2024
    assert await rt.eval("new Date() instanceof Date") is True
    assert await rt.eval("typeof Date()") == "string"


async def test_lone_surrogates_and_host_failures_do_not_leave_a_zombie(
    engine: ScriptEngine, host: LabHost
) -> None:
    rt = await start(engine, host, 'print("bad \\uD800 string"); let a = 1;')
    assert rt.running
    assert host.logs[0].startswith("bad ")

    def broken_emit(script_id: int, name: str, data: Any) -> None:
        raise RuntimeError("device bug")

    host.emit_event = broken_emit  # type: ignore[method-assign]
    with pytest.raises(RpcCallError):
        await rt.eval('Shelly.emitEvent("x", 1)')
    assert rt.status()["errors"] == ["internal_error"]


async def test_hourly_script_resends_what_it_published_just_before_a_disconnect(
    engine: ScriptEngine,
) -> None:
    host = LabHost(now=T0 - 10)
    host.set_connected(True)
    await start(engine, host, HOURLY)
    host.power_w = 800.0
    await host.advance(10 + 2 * HOUR + 30)  # hours T0 (800 Wh) and T0+1h published
    assert [m["timestamp"] for m in hourly_messages(host)] == [int(T0), int(T0 + HOUR)]
    host.set_connected(False)  # 30 s after the last publish: it may not have reached the broker
    await host.advance(600)
    host.set_connected(True)
    await host.settle()
    got = hourly_messages(host)
    assert [m["timestamp"] for m in got] == [int(T0), int(T0 + HOUR), int(T0 + HOUR)]
    assert got[1] == got[2]


async def test_hourly_script_without_the_hours_report_waits_then_reads_the_counters(
    engine: ScriptEngine,
) -> None:
    host = LabHost(now=T0 - 1)
    host.set_connected(True)
    await start(engine, host, HOURLY)
    await host.advance(1)  # T0: the partial first hour closes unreported
    host.hour_reports = False  # a device that was busy at the next full hour: no report of it
    await run_hours(host, [1000.0])
    host.power_w = 0.0
    await host.advance(1)
    assert hourly_messages(host) == [], "waits for the meter's report of the full hour"
    await host.advance(90)  # CFG.markWaitS: then the counters as they are now
    assert [m["hourly_energy_usage"] for m in hourly_messages(host)] == pytest.approx([1000.0])


async def test_hourly_script_counter_reset_and_restart_during_an_outage(
    engine: ScriptEngine,
) -> None:
    host = LabHost(now=T0 - 1)
    host.set_connected(True)
    rt = await start(engine, host, HOURLY)
    host.power_w = 1000.0
    await host.advance(1)  # T0: the partial first hour closes unreported
    host.set_connected(False)
    await host.advance(HOUR + HOUR / 2)  # hour 0 queued; half of hour 1
    host.statuses["pm1:0"]["aenergy"]["total"] = 0.0  # a firmware update zeroed the counter
    await rt.stop()  # ... and rebooted the device
    host.runtimes.remove(rt)
    await host.advance(HOUR / 4)
    await start(engine, host, HOURLY)
    await host.advance(HOUR / 4 + 2 * HOUR + 1)  # hours 1, 2 and 3 close, MQTT still down
    assert hourly_messages(host) == []
    host.set_connected(True)
    await host.settle()
    got = hourly_messages(host)
    assert [m["timestamp"] for m in got] == [int(T0 + i * HOUR) for i in range(4)]
    # hour 1 counts what flowed after the reset only; nothing twice
    assert [m["hourly_energy_usage"] for m in got] == pytest.approx(
        [1000.0, 500.0, 1000.0, 1000.0], abs=0.002
    )
