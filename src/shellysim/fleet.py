"""A fleet of simulated devices in one process: ``async with Fleet(...) as fleet``.

The fleet owns the shared simulated clock, the ground truth, every device, the HTTP/WebSocket
server, each device's MQTT client, the multi-vendor MQTT publishers and the ticker that integrates
energy. Tests, ``kilowatch simulate``, ``kilowatch demo`` and the bench all run fleets this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
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


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(spec: str) -> tuple[Iterator[Address], int]:
    """The usable host addresses ``spec`` names, lazily, and how many there are."""
    spec = spec.strip()
    try:
        if "/" in spec:
            try:
                net = ipaddress.ip_network(spec)
            except ValueError as err:
                if "host bits set" not in str(err):
                    raise
                base = ipaddress.ip_network(spec, strict=False)
                raise SimConfigError(
                    f"--http-hosts {spec!r} has host bits set: did you mean {base}?"
                ) from None
            # hosts() leaves out the network and broadcast addresses (except in /31 and /32)
            count = net.num_addresses - (2 if net.num_addresses > 2 else 0)
            return iter(net.hosts()), count
        if "-" in spec:
            first_s, _, last_s = spec.partition("-")
            first, last = (
                ipaddress.ip_address(first_s.strip()),
                ipaddress.ip_address(last_s.strip()),
            )
            if first.version != last.version or last < first:  # type: ignore[operator]
                raise SimConfigError(
                    f"--http-hosts {spec!r}: a range goes from a lower to a higher address "
                    "of the same IP version"
                )
            count = int(last) - int(first) + 1
            return (ipaddress.ip_address(int(first) + k) for k in range(count)), count
        return iter([ipaddress.ip_address(spec)]), 1
    except ValueError as err:
        raise SimConfigError(
            f"--http-hosts {spec!r}: {err}; expected a network (127.0.1.0/24), a range "
            "(127.0.1.1-127.0.2.244) or an address"
        ) from None


def parse_hosts(spec: str | Sequence[str], count: int) -> list[str]:
    """The first ``count`` usable host addresses of ``spec``, one per device.

    ``spec`` is a network (``"127.0.1.0/24"``: its usable hosts, .1 to .254), an inclusive range
    (``"127.0.1.1-127.0.2.244"``), a single address, a comma-separated list of those, or a
    sequence of them. Raises :class:`SimConfigError` when it holds fewer than ``count`` addresses
    or names one twice.
    """
    parts = [p for p in spec.split(",") if p.strip()] if isinstance(spec, str) else list(spec)
    if not parts:
        raise SimConfigError("--http-hosts is empty: give a network, a range or addresses")
    iterators, total = [], 0
    for part in parts:
        it, n = _addresses(part)
        iterators.append(it)
        total += n
    shown = spec if isinstance(spec, str) else ",".join(spec)
    if total < count:
        raise SimConfigError(
            f"--http-hosts {shown} has {total} usable address(es), {count} devices need "
            f"{count}: give a larger range (a /24 holds 254)"
        )
    hosts = [str(a) for a in itertools.islice(itertools.chain(*iterators), count)]
    seen: set[str] = set()
    for host in hosts:
        if host in seen:
            raise SimConfigError(f"--http-hosts {shown} names {host} twice")
        seen.add(host)
    return hosts


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
        http_hosts: str | Sequence[str] | None = None,
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
        mdns: bool = False,
        mdns_interfaces: Sequence[str] | None = None,
    ) -> None:
        """``clock`` replaces the fleet's own ``SimClock(start, speed)`` (``kilowatch demo`` uses a
        clock that catches up with real time); ``loads[i % len(loads)]`` overrides device i's
        model-default loads (``None`` keeps them).

        ``http_hosts`` stands each device on its own address (:func:`parse_hosts`: device *i* gets
        the *i*-th usable address), on port 80 like a real device, or on port ``http_port_base``
        of each address when that is given; without it every device listens on ``http_host``,
        port ``http_port_base + i`` (default: ports the OS hands out). ``mdns`` advertises every
        device over mDNS (:class:`shellysim.mdns.Advertiser`, on ``mdns_interfaces``, given as
        addresses; default: every interface) while the fleet runs; it needs ``http``."""
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
        hosts = parse_hosts(http_hosts, devices) if http_hosts is not None else None
        self._server = DeviceServer(
            self.devices, host=http_host, port_base=http_port_base, hosts=hosts
        )
        self.mdns = mdns or mdns_interfaces is not None
        if self.mdns and not http:
            raise SimConfigError("mDNS advertises the devices' HTTP addresses: it needs http")
        self.mdns_interfaces = list(mdns_interfaces) if mdns_interfaces is not None else None
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
        """``http://`` + :meth:`address` of a device."""
        return self._server.url(device)

    def address(self, device: Device) -> str:
        """Where a device listens: ``host`` when its port is 80, else ``host:port``."""
        return self._server.address(device)

    def host(self, device: Device) -> str:
        """The address a device listens on."""
        return self._server.hosts[device.id]

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
            if self.mdns:
                from shellysim.mdns import Advertiser  # needs zeroconf, only when asked for

                advertiser = Advertiser(
                    self.devices,
                    [self.host(d) for d in self.devices],
                    ports=[self.port(d) for d in self.devices],
                    interfaces=self.mdns_interfaces,
                )
                await self._stack.enter_async_context(advertiser)
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


__all__ = ["Fleet", "parse_broker", "parse_hosts"]
