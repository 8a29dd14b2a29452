"""A fleet of simulated devices in one process: ``async with Fleet(...) as fleet``.

The fleet owns the shared simulated clock, the ground truth, every device, the HTTP/WebSocket
server, each device's MQTT client, the multi-vendor MQTT publishers and the ticker that integrates
energy. Tests, ``kilowatch simulate``, ``kilowatch demo`` and the bench all run fleets this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from shellysim.clock import SimClock
from shellysim.device import Device
from shellysim.errors import SimConfigError
from shellysim.faults import Fault, run_faults
from shellysim.host import ScriptEngineLike
from shellysim.meter import Truth
from shellysim.models import mac_for, model_spec
from shellysim.mqtt import DeviceMqtt
from shellysim.profiles import LoadKind
from shellysim.server import DeviceServer

log = logging.getLogger(__name__)

TICK_S = 0.5
"""Real seconds between two metering ticks of the whole fleet."""
TICK_CHUNK = 50
"""Devices integrated between two yields to the event loop."""
TRUTH_EVERY_S = 5.0
"""Real seconds between two writes of the truth file (at least)."""
TRUTH_DUTY = 20
"""The truth file is written at most once per TRUTH_DUTY times the last write's duration, so a big
fleet's file (megabytes after simulated weeks) never takes more than 5 % of the event loop."""
AUTO = "auto"


def parse_broker(url: str) -> dict[str, Any]:
    """``mqtt://user:pass@host:port`` / ``mqtts://...`` → the ``MQTT.SetConfig`` a device gets."""
    if url == "embedded":
        raise SimConfigError(
            "the simulator connects to a broker by URL; pass the URL kilowatch's embedded broker "
            "listens on, e.g. --broker mqtt://127.0.0.1:1883"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SimConfigError(f"invalid broker URL {url!r}: expected mqtt://[user:pass@]host[:port]")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    return {
        "enable": True,
        "server": f"{parts.hostname}:{port}",
        "user": unquote(parts.username) if parts.username else None,
        "pass": unquote(parts.password) if parts.password else None,
        "ssl_ca": "*" if tls else None,
    }


def _default_engine() -> ScriptEngineLike | None:
    try:
        module = importlib.import_module("shellysim.scripting")
    except ImportError:
        return None
    engine: ScriptEngineLike = module.ScriptEngine()
    return engine


class Fleet:
    """N simulated devices sharing one clock, one HTTP server and one event loop."""

    def __init__(
        self,
        *,
        devices: int = 1,
        models: Sequence[str] = ("pm1",),
        broker: str | None = None,
        speed: float = 1.0,
        start: float | None = None,
        seed: int = 0,
        http: bool = True,
        http_host: str = "127.0.0.1",
        http_port_base: int | None = None,
        unprovisioned: bool = False,
        truth_path: Path | None = None,
        engine: ScriptEngineLike | str | None = AUTO,
        script: str | None = None,
        tick_s: float = TICK_S,
        report_every_s: float | None = None,
        vendors: Sequence[str] = (),
        clock: SimClock | None = None,
        loads: Sequence[tuple[LoadKind, ...] | None] = (),
        faults: Sequence[Fault] = (),
    ) -> None:
        """``clock`` replaces the fleet's own ``SimClock(start, speed)`` (``kilowatch demo`` uses a
        clock that catches up with real time); ``loads[i % len(loads)]`` overrides device i's
        model-default loads (``None`` keeps them)."""
        if devices < 0:
            raise SimConfigError(f"--devices must be 0 or more, got {devices}")
        specs = [model_spec(m) for m in models]
        if not specs:
            raise SimConfigError("--models needs at least one model")
        self.clock = clock if clock is not None else SimClock(start=start, speed=speed)
        self.truth = Truth()
        self.truth_path = truth_path
        self.broker_config = parse_broker(broker) if broker else None
        self.http = http
        self.tick_s = tick_s
        self.script = script
        self.unprovisioned = unprovisioned
        self.engine: ScriptEngineLike | None = (
            _default_engine() if engine == AUTO else engine if not isinstance(engine, str) else None
        )
        self.devices: list[Device] = []
        for i in range(devices):
            dev = Device(
                specs[i % len(specs)],
                mac=mac_for(seed, i + 1),
                clock=self.clock,
                seed=seed,
                truth=self.truth,
                engine=self.engine,
                loads=loads[i % len(loads)] if loads else None,
            )
            dev.report_every_s = report_every_s
            self.devices.append(dev)
        self.mqtt: dict[str, DeviceMqtt] = {}
        self.faults = list(faults)
        from shellysim.vendors import make_publishers

        self.publishers = make_publishers(
            vendors, clock=self.clock, truth=self.truth, seed=seed, broker=broker
        )
        self._server = DeviceServer(self.devices, host=http_host, port_base=http_port_base)
        self._stack = contextlib.AsyncExitStack()
        self._tasks: asyncio.TaskGroup | None = None
        self._jobs: list[asyncio.Task[None]] = []
        self._truth_write_s = 0.0

    # ------------------------------------------------------------------ lookups

    def device(self, device_id: str) -> Device:
        """The device with this id."""
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)

    def url(self, device: Device) -> str:
        """``http://host:port`` of a device."""
        return self._server.url(device)

    def port(self, device: Device) -> int:
        """HTTP port of a device."""
        return self._server.ports[device.id]

    # ------------------------------------------------------------------ lifecycle

    def _provision(self, dev: Device) -> None:
        if self.broker_config is not None:
            cfg = dict(self.broker_config)
            dev.mqtt_pass = cfg.pop("pass")
            dev.config["mqtt"].update(cfg)
        if self.script is not None:
            sid = dev.scripts.create({"name": "kilowatch"})["id"]
            dev.scripts.put_code({"id": sid, "code": self.script})
            dev.scripts.slots[sid].enable = True

    async def __aenter__(self) -> Self:
        try:
            if self.engine is not None and hasattr(self.engine, "__aenter__"):
                await self._stack.enter_async_context(self.engine)  # type: ignore[arg-type]
            for dev in self.devices:
                if not self.unprovisioned:
                    self._provision(dev)
                self.mqtt[dev.id] = DeviceMqtt(dev)
                await self._stack.enter_async_context(dev)
            if self.http:
                await self._stack.enter_async_context(self._server)
            self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._jobs.append(self._tasks.create_task(self._ticker()))
            for link in self.mqtt.values():
                self._jobs.append(self._tasks.create_task(link.run()))
            for pub in self.publishers:
                self._jobs.append(self._tasks.create_task(pub.run()))
            if self.faults:
                plan = run_faults(self.faults, self.devices, self.clock)
                self._jobs.append(self._tasks.create_task(plan))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.tick()
        for task in self._jobs:
            task.cancel()
        try:
            await self._stack.aclose()
        finally:
            self.write_truth()

    def tick(self) -> None:
        """Integrate every device up to now and emit what changed."""
        for dev in self.devices:
            dev.tick()
        for pub in self.publishers:
            pub.tick()

    async def _ticker(self) -> None:
        last_truth = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.tick_s)
            # Tick in chunks, yielding in between: sockets are served while 500 devices integrate.
            for i in range(0, len(self.devices), TICK_CHUNK):
                for dev in self.devices[i : i + TICK_CHUNK]:
                    dev.tick()
                await asyncio.sleep(0)
            for pub in self.publishers:
                pub.tick()
            now = asyncio.get_running_loop().time()
            if now - last_truth >= max(TRUTH_EVERY_S, TRUTH_DUTY * self._truth_write_s):
                last_truth = now
                self.write_truth()

    def write_truth(self) -> None:
        """Write the truth file now (if the fleet has one)."""
        if self.truth_path is not None:
            t = time.perf_counter()
            self.truth.write(self.truth_path)
            self._truth_write_s = time.perf_counter() - t

    # ------------------------------------------------------------------ waiting

    async def wait_until(self, sim_ts: float) -> None:
        """Sleep until the simulated clock reaches ``sim_ts``, then tick."""
        await self.clock.sleep_until(sim_ts)
        self.tick()

    async def wait_connected(self, timeout: float = 20.0) -> None:
        """Wait until every device with MQTT enabled is connected to its broker."""
        async with asyncio.timeout(timeout):
            while True:
                pending = [
                    d.id
                    for d in self.devices
                    if d.active_mqtt.get("enable") and not self.mqtt[d.id].connected()
                ]
                if not pending:
                    return
                await asyncio.sleep(0.05)


__all__ = ["Fleet", "parse_broker"]
