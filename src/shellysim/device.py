"""A simulated Shelly Gen2/Gen3 device: identity, components, RPC dispatch and notifications.

The device is transport-free: HTTP/WebSocket (:mod:`shellysim.server`) and MQTT
(:mod:`shellysim.mqtt`) call :meth:`Device.call` / :meth:`Device.handle_frame` and
register sinks for notifications and debug-log lines. Time comes from the injected clock; energy
is integrated by :meth:`Device.tick`, which the fleet calls periodically.

Faithfulness notes (shelly-api.md): error codes and messages §2.4, SetConfig merge and ``cfg_rev``
§7.1/§11, ``Shelly.*`` §10, ``Sys`` §11, metering §13, scripts §14, KVS §15, TLS §16, OTA §17.
The system components' config lives in :mod:`shellysim.system`, firmware versions in
:mod:`shellysim.firmware`.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self

import shellysim.firmware as fw
import shellysim.rpcutil as r
import shellysim.system as system
from kilowatch.model.slots import SLOT_SECONDS, slot_of
from shellysim.channels import EM, EM1, PM1, Component, EM1Data, EMData, Switch
from shellysim.clock import Clock
from shellysim.errors import RpcCallError
from shellysim.host import ScriptEngineLike
from shellysim.kvs import Kvs
from shellysim.meter import MeterChannel, Truth
from shellysim.models import ModelSpec
from shellysim.profiles import LoadKind, LoadProfile
from shellysim.scripthost import DeviceScriptHost
from shellysim.scripts import ScriptManager
from shellysim.tls import TlsStore

log = logging.getLogger(__name__)

Sink = Callable[[str, dict[str, Any]], None]
"""Receives ``(method, params)`` of every notification (NotifyStatus / NotifyEvent / ...)."""
LogSink = Callable[[str], None]
LifecycleListener = Callable[[bool], None]
Handler = Callable[[r.Params], Any]

REBOOT_DEFAULT_MS = 1000
REBOOT_MIN_MS = 500
BOOT_TIME_S = 0.3
"""Real seconds a rebooting device stays unreachable."""
OTA_STEP_S = 0.05
"""Real seconds between ``ota_progress`` events."""


class Device:
    """One simulated Shelly device. Use as an async context manager (it owns reboot/OTA tasks)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        mac: str,
        clock: Clock,
        seed: int = 0,
        loads: tuple[LoadKind, ...] | None = None,
        truth: Truth | None = None,
        engine: ScriptEngineLike | None = None,
        name: str | None = None,
        boot_time_s: float = BOOT_TIME_S,
    ) -> None:
        if not re.fullmatch(r"[0-9A-F]{12}", mac):
            raise ValueError(f"mac must be 12 upper-case hex digits, got {mac!r}")
        self.spec = spec
        self.mac = mac
        self.id = f"{spec.prefix}-{mac.lower()}"
        self.clock = clock
        self.seed = seed
        self.truth = truth
        self.boot_time_s = boot_time_s
        self.ver, self.fw_id = spec.ver, spec.fw_id
        self.name = name
        self.skew = 0
        self.report_every_s: float | None = None
        self.minute_reports_from: float | None = None
        """From this simulated time on, every minute rollover is reported with its own timestamp,
        power included, also when the clock runs faster than the fleet ticks (``None``: only slot
        boundaries are; see :meth:`tick`). A demo's catch-up sets it to real now - 24 h, so the
        last day has one-minute power like a device that ran in real time."""
        self._last_forced = clock.now()
        self.online = False
        self.outage_until = 0.0
        self.duplicate_publishes = False
        self.fail_next_update = False
        self.reset_counters_on_update = False
        self.fail_updates = False
        """Every ``Shelly.Update`` fails half-way with ``ota_error`` until this is cleared (a
        persistent fault, where ``fail_next_update`` fails one)."""
        self.ota_step_s = OTA_STEP_S
        self.update_requests: list[dict[str, Any]] = []
        """The params of every ``Shelly.Update`` received, in order (tests check who got one)."""
        self._ota_running = False
        self.boot_ts = clock.now()
        self.restart_required = False
        self.auth_ha1: str | None = None
        self.mqtt_pass: str | None = None
        self.kvs = Kvs()
        self.tls = TlsStore()
        self.scripts = ScriptManager(engine)
        self._cfg_rev = 0
        self._log_seq = itertools.count(1)
        self.log_ring: deque[str] = deque(maxlen=200)
        self._sinks: list[Sink] = []
        self._log_sinks: list[LogSink] = []
        self._lifecycle: list[LifecycleListener] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._loads = loads or spec.default_loads
        self.config: dict[str, dict[str, Any]] = self._default_config()
        self.channels: dict[str, Component] = self._build_channels()
        self._channel_defaults = {k: copy.deepcopy(c.config) for k, c in self.channels.items()}
        self.active_mqtt: dict[str, Any] = copy.deepcopy(self.config["mqtt"])
        self._methods = self._build_methods()
        self.script_host = DeviceScriptHost(self)

    # ------------------------------------------------------------------ construction

    def _default_config(self) -> dict[str, dict[str, Any]]:
        return system.default_config(
            self.spec, device_id=self.id, mac=self.mac, name=self.name, fw_id=self.fw_id
        )

    def _meter(self, index: int, truth_keys: tuple[str, ...]) -> MeterChannel:
        kind = self._loads[index % len(self._loads)]
        salt = int.from_bytes(self.mac.encode()[-6:], "big")
        profile = LoadProfile(kind, seed=(self.seed * 1_000_003 + salt * 31 + index) & (2**63 - 1))
        return MeterChannel(
            profile,
            device_id=self.id,
            truth_keys=truth_keys,
            truth=self.truth,
            start=self.clock.now(),
        )

    def _build_channels(self) -> dict[str, Component]:
        comps: list[Component] = []
        now = self.clock.now()
        key = self.spec.key
        if key == "pm1":
            comps.append(PM1(0, self._meter(0, ("pm1:0",))))
        elif key in ("switch", "plug"):
            comps.append(Switch(0, self._meter(0, ("switch:0",))))
        elif key == "3em":
            phases = tuple(self._meter(i, (f"em:0/{p}", "em:0")) for i, p in enumerate("abc"))
            em = EM(0, (phases[0], phases[1], phases[2]))
            comps += [em, EMData(0, em, now)]
        elif key == "em":
            for i in range(self.spec.channels):
                em1 = EM1(i, self._meter(i, (f"em1:{i}",)))
                comps += [em1, EM1Data(i, em1, now)]
        return {c.key: c for c in comps}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        await self.boot()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.go_down()
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            for task in list(self._jobs):
                task.cancel()
            await tasks.__aexit__(None, None, None)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background job (reboot, OTA) owned by this device's task group."""
        if self._tasks is None:
            raise RuntimeError("the device is not running (use `async with device:`)")

        async def run() -> None:
            # One failing job (a bad RPC over MQTT, say) must not take the device down with it.
            try:
                await coro
            except Exception:
                log.exception("%s: background job failed", self.id)

        task = self._tasks.create_task(run())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        # a job cancelled before it started never awaited its coroutine: close it quietly
        task.add_done_callback(lambda t: coro.close() if t.cancelled() else None)

    async def boot(self) -> None:
        """Come up: uptime restarts, pending config applies, enabled scripts start."""
        self.tick()
        self.boot_ts = self.clock.now()
        self.restart_required = False
        self.active_mqtt = copy.deepcopy(self.config["mqtt"])
        self.online = True
        self.log("shelly_main.c:1024", f"Booting {self.id} fw {self.fw_id}")
        for listener in list(self._lifecycle):
            listener(True)
        for slot in list(self.scripts.slots.values()):
            if slot.enable and self.scripts.engine is not None:
                try:
                    await self.scripts.run(slot, self.script_host)
                except RpcCallError as err:
                    self.log("shelly_script.c:320", f"script {slot.id} failed to start: {err}")

    async def go_down(self) -> None:
        """Go down: scripts stop, connections drop (without a clean MQTT disconnect)."""
        if not self.online:
            return
        self.tick()
        self.online = False
        for comp in self.channels.values():
            if isinstance(comp, Switch) and comp.timer is not None:
                comp.timer[2].cancel()  # a toggle_after timer does not survive a reboot
                comp.timer = None
        await self.scripts.halt_all()
        for listener in list(self._lifecycle):
            listener(False)

    async def reboot(self, delay_s: float = 0.0) -> None:
        """Reboot after ``delay_s`` real seconds; counters persist (as on real devices)."""
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await self.go_down()
        await asyncio.sleep(self.boot_time_s)
        await self.boot()

    def network_up(self) -> bool:
        """Whether the device is reachable now (booted and not in a simulated outage)."""
        return self.online and self.clock.now() >= self.outage_until

    # ------------------------------------------------------------------ listeners

    def add_sink(self, sink: Sink) -> Callable[[], None]:
        """Receive every notification; returns a function that removes the sink."""
        self._sinks.append(sink)
        return lambda: self._sinks.remove(sink) if sink in self._sinks else None

    def add_log_sink(self, sink: LogSink) -> Callable[[], None]:
        """Receive every debug-log line."""
        self._log_sinks.append(sink)
        return lambda: self._log_sinks.remove(sink) if sink in self._log_sinks else None

    def add_lifecycle_listener(self, listener: LifecycleListener) -> Callable[[], None]:
        """Be told ``True`` when the device has booted and ``False`` when it goes down."""
        self._lifecycle.append(listener)
        return lambda: self._lifecycle.remove(listener) if listener in self._lifecycle else None

    def now(self) -> float:
        """The device's own clock (simulated time plus any injected skew)."""
        return self.clock.now() + self.skew

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification to every sink (WebSocket clients, MQTT, scripts)."""
        if not self.online:
            return
        for sink in list(self._sinks):
            sink(method, params)

    def emit_status(self, deltas: dict[str, dict[str, Any]], ts: float | None = None) -> None:
        """NotifyStatus with partial component deltas (and status listeners of scripts)."""
        if not deltas:
            return
        self.script_host.status_changed(deltas)
        if self.config["sys"]["debug"]["mqtt"]["enable"]:
            for key in deltas:
                self.log("shelly_notification.c:164", f"Status change of {key}")
        self.notify(
            "NotifyStatus", {"ts": round(float(ts if ts is not None else self.now()), 2), **deltas}
        )

    def emit_event(self, component: str, event: str, **fields: Any) -> None:
        """NotifyEvent with one event item."""
        ts = round(float(self.now()), 2)
        cid = int(component.split(":")[1]) if ":" in component else None
        item: dict[str, Any] = {
            "component": component,
            "id": cid,
            "event": event,
            "ts": ts,
            **fields,
        }
        if cid is None:
            item.pop("id")
        self.script_host.event_emitted(item)
        self.notify("NotifyEvent", {"ts": ts, "events": [item]})

    def log(self, where: str, message: str, level: int = system.LOG_LEVEL_INFO) -> None:
        """One debug-log line: ``<id> <seq> <unix ts with ms> <level>|<file:line> <message>``."""
        line = f"{self.id} {next(self._log_seq)} {self.now():.3f} {level}|{where} {message}"
        self.log_ring.append(line)
        if self.online:
            for sink in list(self._log_sinks):
                sink(line)

    # ------------------------------------------------------------------ metering

    def meters(self) -> list[MeterChannel]:
        """Every meter of this device."""
        return [m for c in self.channels.values() for m in c.meters()]

    def meter_behind(self, meters: Sequence[MeterChannel]) -> None:
        """Measure ``meters``' loads too, as a mains meter measures the sub-meters behind it: the
        *i*-th of them is wired behind this device's meter ``i % n`` (a Pro 3EM: phases a, b, c
        in turn). Their power adds to that meter's power, counters and truth from the meter's
        current time on; a meter cannot be behind itself, directly or through others."""
        own = self.meters()
        if not own:
            raise ValueError(f"{self.id} meters nothing: nothing can be behind it")
        for i, m in enumerate(meters):
            if _reaches(m, set(map(id, own))):
                raise ValueError(f"a meter of {self.id} would be behind itself")
            own[i % len(own)].behind.append(m)

    def _get_status(self, params: r.Params) -> dict[str, Any]:
        """``Shelly.GetStatus``: the counters as of now, as a device reads its meter when asked
        (not as of the fleet's last tick: a poller stamping them with ``sys.unixtime`` would see
        energy up to a tick late)."""
        self.tick()
        return self.status()

    def tick(self) -> None:
        """Integrate energy up to now and notify changes.

        Counters are reported at every minute rollover; when the clock runs faster than the fleet
        ticks, rollovers inside one tick are coalesced, except at 15-minute slot boundaries, which
        are always reported with the boundary's timestamp (so hour totals stay exact downstream),
        and, from :attr:`minute_reports_from` on, every minute rollover, each with the power of
        every channel at that minute.
        """
        target = self.clock.now()
        meters = self.meters()
        if not meters:
            return
        minutes_from = self.minute_reports_from
        while True:
            t = meters[0].t
            boundary = slot_of(t) + SLOT_SECONDS
            if minutes_from is not None and boundary > minutes_from:
                # this slot is reported minute by minute from the first whole minute on
                first = math.ceil(minutes_from / 60) * 60
                boundary = min(boundary, max(int(t // 60) * 60 + 60, first))
            step = min(boundary, target)
            rolled = 0
            for m in meters:
                rolled = max(rolled, m.advance(step))
            if step >= target:
                break
            if minutes_from is not None and step >= minutes_from:
                self._emit_minute(step + self.skew)
            else:
                self._emit_energy(step + self.skew)
        if rolled:
            # stamped with the time the counters were integrated to, not a later clock read: at a
            # high speed factor "now" may already be past the next slot boundary
            self._emit_energy(target + self.skew)
        self._emit_power()

    def _emit_energy(self, ts: float | None) -> None:
        if not self.online:
            return
        deltas: dict[str, dict[str, Any]] = {}
        for comp in self.channels.values():
            d = comp.energy_delta(self.now(), self.skew)
            if d:
                deltas[comp.key] = d
        self.emit_status(deltas, ts)

    def _emit_minute(self, ts: float) -> None:
        """Counters and the power of every channel (changed or not) in one notification
        stamped ``ts``: a minute of a fast-running clock, reported as a device reports it."""
        if not self.online:
            return
        deltas: dict[str, dict[str, Any]] = {}
        for comp in self.channels.values():
            comp._last_power = None
            delta: dict[str, Any] = dict(comp.power_delta(self.now(), self.skew) or {})
            delta.update(comp.energy_delta(self.now(), self.skew) or {})
            if delta:
                deltas[comp.key] = delta
        self.emit_status(deltas, ts)

    def _emit_power(self) -> None:
        if not self.online:
            return
        now = self.clock.now()
        every = self.report_every_s
        if every is not None and now // every != self._last_forced // every:
            # benches ask for a steady message rate: report power even without a change
            self._last_forced = now
            for comp in self.channels.values():
                comp._last_power = None
        deltas: dict[str, dict[str, Any]] = {}
        for comp in self.channels.values():
            delta: dict[str, Any] = {}
            if isinstance(comp, Switch):
                delta.update(comp.take_pending() or {})
            delta.update(comp.power_delta(self.now(), self.skew) or {})
            if delta:
                deltas[comp.key] = delta
        self.emit_status(deltas)

    # ------------------------------------------------------------------ status and config

    def device_info(self) -> dict[str, Any]:
        """``Shelly.GetDeviceInfo``."""
        info: dict[str, Any] = {
            "name": self.config["sys"]["device"]["name"],
            "id": self.id,
            "mac": self.mac,
            "slot": 0,
            "model": self.spec.model,
            "gen": self.spec.gen,
            "fw_id": self.fw_id,
            "ver": self.ver,
            "app": self.spec.app,
        }
        if self.spec.profile:
            info["profile"] = self.spec.profile
        info["auth_en"] = self.auth_ha1 is not None
        info["auth_domain"] = self.id if self.auth_ha1 is not None else None
        return info

    def available_updates(self) -> dict[str, fw.Firmware]:
        """Firmware stages newer than the running one."""
        return fw.available_updates(self.spec.ver, self.ver)

    def sys_status(self) -> dict[str, Any]:
        """``Sys.GetStatus``."""
        now = self.now()
        hhmm, offset = system.local_time(now, self.config["sys"]["location"]["tz"])
        return {
            "mac": self.mac,
            "restart_required": self.restart_required,
            "time": hhmm,
            "unixtime": int(now),
            "last_sync_ts": int(self.boot_ts + self.skew),
            "uptime": int(self.clock.now() - self.boot_ts),
            "ram_size": 259944,
            "ram_free": 150696,
            "ram_min_free": 140000,
            "fs_size": 1048576,
            "fs_free": 716800 - sum(len(s.code) for s in self.scripts.slots.values()),
            "cfg_rev": self._cfg_rev,
            "kvs_rev": self.kvs.rev,
            "schedule_rev": 0,
            "webhook_rev": 0,
            "btrelay_rev": 0,
            "available_updates": {
                s: {"version": v} for s, (v, _) in self.available_updates().items()
            },
            "reset_reason": 3,
            "utc_offset": offset,
        }

    def component_status(self, key: str) -> dict[str, Any] | None:
        """Status of one component by key, or ``None``."""
        key = key.lower()
        if key in self.channels:
            return self.channels[key].status(self.now(), self.skew)
        if key.startswith("script:"):
            slot = self.scripts.slots.get(_key_id(key))
            return slot.status() if slot else None
        simple: dict[str, Callable[[], dict[str, Any]]] = {
            "ble": dict,
            "cloud": lambda: {"connected": False},
            "mqtt": lambda: {"connected": self.script_host.mqtt_connected()},
            "sys": self.sys_status,
            "wifi": lambda: {
                "sta_ip": "127.0.0.1",
                "status": "got ip",
                "ssid": "kilowatch-sim",
                "rssi": -55,
            },
            "ws": lambda: {"connected": False},
        }
        fn = simple.get(key)
        return fn() if fn else None

    def component_config(self, key: str) -> dict[str, Any] | None:
        """Config of one component by key, or ``None``."""
        key = key.lower()
        if key in self.channels:
            return copy.deepcopy(self.channels[key].config)
        if key.startswith("script:"):
            slot = self.scripts.slots.get(_key_id(key))
            return slot.config() if slot else None
        if key in self.config:
            cfg = copy.deepcopy(self.config[key])
            if key == "sys":
                cfg["cfg_rev"] = self._cfg_rev
            return cfg
        return None

    def component_keys(self) -> list[str]:
        """Every component key, in GetStatus order."""
        scripts = [s.key for s in sorted(self.scripts.slots.values(), key=lambda s: s.id)]
        return sorted([*self.config, *self.channels]) + scripts

    def status(self) -> dict[str, Any]:
        """``Shelly.GetStatus``."""
        return {k: v for k in self.component_keys() if (v := self.component_status(k)) is not None}

    def full_config(self) -> dict[str, Any]:
        """``Shelly.GetConfig``."""
        return {k: v for k in self.component_keys() if (v := self.component_config(k)) is not None}

    def _config_changed(self, key: str, restart: bool) -> None:
        self._cfg_rev += 1
        if restart:
            self.restart_required = True
        self.emit_event(key, "config_changed", restart_required=restart, cfg_rev=self._cfg_rev)

    # ------------------------------------------------------------------ RPC

    async def handle_frame(self, frame: dict[str, Any], *, source: str) -> dict[str, Any] | None:
        """Execute a request frame; returns the response frame (``None`` for a notification)."""
        src = frame.get("src")
        out: dict[str, Any] = {"id": frame.get("id"), "src": self.id}
        if src is not None:
            out["dst"] = src
        method = frame.get("method")
        params = frame.get("params")
        try:
            if not isinstance(method, str) or not method:
                raise r.missing("method")
            if params is not None and not isinstance(params, dict):
                raise r.invalid("Invalid argument 'params': expected object")
            out["result"] = await self.call(method, params, source=source)
        except RpcCallError as err:
            out["error"] = {"code": err.code, "message": err.message}
        if "id" not in frame:
            return None
        return out

    async def call(
        self, method: str, params: dict[str, Any] | None, *, source: str = "http"
    ) -> Any:
        """Run one RPC method (case-insensitive name); raises :class:`RpcCallError`."""
        entry = self._methods.get(method.lower())
        if entry is None:
            self.log("mg_rpc.c:314", f"{method} via {source}: no handler")
            raise r.no_handler(method)
        canonical, handler = entry
        self.log("shelly_notification.c:164", f"{canonical} via {source}")
        result = handler({**(params or {}), "__source": source})
        if inspect.isawaitable(result):
            result = await result
        return result

    def method_names(self) -> list[str]:
        """``Shelly.ListMethods`` spelling of every method."""
        return [name for name, _ in self._methods.values()]

    def _build_methods(self) -> dict[str, tuple[str, Handler]]:
        table: dict[str, Handler] = {}
        for comp_type, api in sorted({(c.type, c.api_name) for c in self.channels.values()}):
            table[f"{api}.GetStatus"] = self._comp_handler(comp_type, "status")
            table[f"{api}.GetConfig"] = self._comp_handler(comp_type, "config")
            table[f"{api}.SetConfig"] = self._comp_handler(comp_type, "set_config")
            sample = next(c for c in self.channels.values() if c.type == comp_type)
            for verb in sample.methods():
                table[f"{api}.{verb}"] = self._comp_handler(comp_type, verb)
            if isinstance(sample, Switch):
                table["Switch.Set"] = self._switch_set
                table["Switch.Toggle"] = self._switch_toggle
        for api, key in system.SYSTEM_COMPONENTS.items():
            table[f"{api}.GetStatus"] = self._sys_comp(key, "status")
            table[f"{api}.GetConfig"] = self._sys_comp(key, "config")
            table[f"{api}.SetConfig"] = self._sys_comp(key, "set_config")
        table.update(
            {
                "Sys.SetTime": lambda p: None,
                "KVS.Set": self.kvs.set,
                "KVS.Get": self.kvs.get,
                "KVS.GetMany": self.kvs.get_many,
                "KVS.List": self.kvs.list,
                "KVS.Delete": self.kvs.delete,
                "Script.Create": self.scripts.create,
                "Script.PutCode": self.scripts.put_code,
                "Script.GetCode": self.scripts.get_code,
                "Script.Start": lambda p: self.scripts.start(p, self.script_host),
                "Script.Stop": self.scripts.stop,
                "Script.Eval": self.scripts.eval,
                "Script.List": self.scripts.list,
                "Script.Delete": self.scripts.delete,
                "Script.GetConfig": lambda p: self.scripts.slot(p).config(),
                "Script.SetConfig": self.scripts.set_config,
                "Script.GetStatus": lambda p: self.scripts.slot(p).status(),
                "Shelly.GetDeviceInfo": lambda p: self.device_info(),
                "Shelly.GetStatus": self._get_status,
                "Shelly.GetConfig": lambda p: self.full_config(),
                "Shelly.GetComponents": self._get_components,
                "Shelly.ListMethods": lambda p: {"methods": self.method_names()},
                "Shelly.Reboot": self._rpc_reboot,
                "Shelly.FactoryReset": self._factory_reset,
                "Shelly.ResetWiFiConfig": lambda p: None,
                "Shelly.SetAuth": self._set_auth,
                "Shelly.CheckForUpdate": self._check_for_update,
                "Shelly.Update": self._update,
                "Shelly.PutUserCA": lambda p: self.tls.put("user_ca", p),
                "Shelly.PutTLSClientCert": lambda p: self.tls.put("client_cert", p),
                "Shelly.PutTLSClientKey": lambda p: self.tls.put("client_key", p),
                "Shelly.Identify": lambda p: None,
                "RPC.Ping": lambda p: None,
            }
        )
        return {name.lower(): (name, fn) for name, fn in table.items()}

    def _component(self, comp_type: str, params: r.Params) -> Component:
        cid = r.get_int(params, "id", required=True)
        comp = self.channels.get(f"{comp_type}:{cid}")
        if comp is None:
            raise r.id_not_found(cid)
        return comp

    def _comp_handler(self, comp_type: str, verb: str) -> Handler:
        def handler(params: r.Params) -> Any:
            comp = self._component(comp_type, params)
            if verb == "status":
                return comp.status(self.now(), self.skew)
            if verb == "config":
                return copy.deepcopy(comp.config)
            if verb == "set_config":
                patch = r.get_obj(params, "config")
                patch = {k: v for k, v in patch.items() if k != "id"}
                restart = comp.restart_required_for(patch)
                if r.merge_config(comp.config, patch):
                    comp.apply_config()
                    self._config_changed(comp.key, restart)
                return {"restart_required": restart}
            method = comp.methods()[verb]
            return method(params)

        return handler

    def _sys_comp(self, key: str, verb: str) -> Handler:
        def handler(params: r.Params) -> Any:
            if verb == "status":
                return self.component_status(key)
            if verb == "config":
                return self.component_config(key)
            patch = copy.deepcopy(r.get_obj(params, "config"))
            restart = system.check_patch(key, patch)
            if key == "mqtt" and "pass" in patch:
                self.mqtt_pass = patch.pop("pass")  # write-only: never in GetConfig (§7.1)
            changed = r.merge_config(self.config[key], patch)
            if key == "mqtt":
                system.fill_mqtt_defaults(self.config["mqtt"], self.id)
            if changed:
                self._config_changed(key, restart)
            return {"restart_required": restart}

        return handler

    def _switch(self, params: r.Params) -> Switch:
        comp = self._component("switch", params)
        assert isinstance(comp, Switch)
        return comp

    def _switch_set(self, params: r.Params) -> dict[str, Any]:
        sw = self._switch(params)
        on = r.get_bool(params, "on")
        after = params.get("toggle_after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int | float)):
            raise r.invalid("Invalid argument 'toggle_after': expected number of seconds")
        was = sw.set_output(on, _source_name(params))
        if after is not None and after > 0:
            loop = asyncio.get_running_loop()

            def flip_back() -> None:
                sw.timer = None
                sw.set_output(not on, "timer")
                self._emit_power()

            handle = loop.call_later(after / self.clock.speed, flip_back)
            sw.timer = (self.now(), float(after), handle)
        self._emit_power()
        return {"was_on": was}

    def _switch_toggle(self, params: r.Params) -> dict[str, Any]:
        sw = self._switch(params)
        was = sw.set_output(not sw.output, _source_name(params))
        self._emit_power()
        return {"was_on": was}

    def _get_components(self, params: r.Params) -> dict[str, Any]:
        include = params.get("include") or ["status", "config"]
        keys = params.get("keys")
        offset = r.get_int(params, "offset", 0)
        if not isinstance(include, list) or (keys is not None and not isinstance(keys, list)):
            raise r.invalid("Invalid argument 'include'/'keys': expected lists")
        selected = [] if params.get("dynamic_only") else self.component_keys()
        if keys is not None:
            selected = [k for k in selected if k in keys]
        items = []
        for k in selected[offset:]:
            item: dict[str, Any] = {"key": k}
            if "status" in include:
                item["status"] = self.component_status(k)
            if "config" in include:
                item["config"] = self.component_config(k)
            items.append(item)
        return {
            "components": items,
            "cfg_rev": self._cfg_rev,
            "offset": offset,
            "total": len(selected),
        }

    def _rpc_reboot(self, params: r.Params) -> None:
        delay = max(REBOOT_MIN_MS, r.get_int(params, "delay_ms", REBOOT_DEFAULT_MS))
        self.spawn(self.reboot(delay / 1000.0))

    def _factory_reset(self, params: r.Params) -> None:
        self.spawn(self.factory_reset())

    async def factory_reset(self) -> None:
        """Back to the state out of the box: config, scripts, KVS, auth, TLS, counters."""
        await asyncio.sleep(REBOOT_MIN_MS / 1000.0)
        await self.go_down()
        self.config = self._default_config()
        for comp in self.channels.values():
            comp.config = copy.deepcopy(self._channel_defaults[comp.key])
            comp.apply_config()
        self.scripts.slots.clear()
        self.kvs.clear()
        self.tls.files.clear()
        self.auth_ha1 = None
        self.mqtt_pass = None
        self.reset_counters()
        self._cfg_rev += 1
        await asyncio.sleep(self.boot_time_s)
        await self.boot()

    def reset_counters(self) -> None:
        """Zero every energy counter (factory reset, some firmware updates, fault injection)."""
        self.tick()
        for m in self.meters():
            m.reset_counters()

    def _set_auth(self, params: r.Params) -> None:
        user = r.get_str(params, "user")
        realm = r.get_str(params, "realm")
        if user != "admin":
            raise r.invalid("Invalid argument 'user': only 'admin' is supported")
        if realm != self.id:
            raise r.invalid(f"Invalid argument 'realm': must be '{self.id}'")
        ha1 = params.get("ha1")
        if ha1 is not None and (not isinstance(ha1, str) or not re.fullmatch(r"[0-9a-f]{64}", ha1)):
            raise r.invalid("Invalid argument 'ha1': expected 64 lower-case hex digits or null")
        self.auth_ha1 = ha1

    def _check_for_update(self, params: r.Params) -> dict[str, Any]:
        return fw.check_for_update(self.available_updates())

    def _update(self, params: r.Params) -> None:
        """``Shelly.Update``: parameters it does not know are ignored, as by the firmware (no
        ``stage`` installs stable, §17); one update at a time."""
        self.update_requests.append({k: v for k, v in params.items() if not k.startswith("__")})
        target = fw.update_target(params, self.available_updates())
        if self._ota_running:
            raise r.precondition("An update is already in progress")
        self._ota_running = True
        self.spawn(self._ota(*target))

    async def _ota(self, ver: str, fw_id: str) -> None:
        try:
            await self._download(ver, fw_id)
        finally:
            self._ota_running = False

    async def _download(self, ver: str, fw_id: str) -> None:
        self.emit_event("sys", "ota_begin", msg="Waiting for data")
        for pct in (0, 25, 50, 75, 100):
            await asyncio.sleep(self.ota_step_s)
            self.emit_event("sys", "ota_progress", msg="Downloading", progress_percent=pct)
            if (self.fail_next_update or self.fail_updates) and pct >= 50:
                self.fail_next_update = False
                self.emit_event("sys", "ota_error", msg="Update failed: bad checksum")
                return
        self.emit_event("sys", "ota_success", msg="Update applied, rebooting")
        await asyncio.sleep(self.ota_step_s)
        await self.go_down()
        self.ver, self.fw_id = ver, fw_id
        self.config["sys"]["device"]["fw_id"] = fw_id
        if self.reset_counters_on_update:
            self.reset_counters()
        await asyncio.sleep(self.boot_time_s)
        await self.boot()

    # ------------------------------------------------------------------ faults

    def fault_outage(self, seconds: float) -> None:
        """Cut the network for ``seconds`` of simulated time (connections drop and stay down)."""
        self.outage_until = self.clock.now() + seconds
        for listener in list(self._lifecycle):
            listener(False)

    def fault_clock_skew(self, seconds: int) -> None:
        """Make the device's clock run ``seconds`` ahead (negative: behind) of true time."""
        self.skew = seconds

    def fault_counter_reset(self) -> None:
        """Zero the counters as a firmware update or factory reset would, after a last report."""
        self.tick()
        self._emit_energy(None)
        # not reset_counters(): its tick() would integrate past the report just sent, and that
        # energy would be zeroed without ever being reported
        for m in self.meters():
            m.reset_counters()
        self._emit_energy(None)


def _reaches(meter: MeterChannel, targets: set[int]) -> bool:
    """Whether ``meter`` is one of ``targets`` (by identity) or has one of them behind it."""
    if id(meter) in targets:
        return True
    return any(_reaches(m, targets) for m in meter.behind)


def _key_id(key: str) -> int:
    try:
        return int(key.split(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def _source_name(params: r.Params) -> str:
    return {"http": "http", "ws": "WS_in", "mqtt": "MQTT", "script": "loopback"}.get(
        str(params.get("__source")), "http"
    )


__all__ = ["Device"]
