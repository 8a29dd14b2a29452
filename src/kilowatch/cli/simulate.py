"""``kilowatch simulate``: run a fleet of simulated Shelly devices (and Gen1/Tasmota plugs).

The simulator (``shellysim``) needs the ``sim`` extra, so it is imported only when the command runs,
after :func:`~kilowatch.cli.app.require_simulator`: ``--help`` works on a base install.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from kilowatch.cli.app import missing_simulator, require_simulator
from kilowatch.errors import ConfigError

CHAOS_HORIZON_S = 30 * 86400
"""How far ahead --chaos plans faults when the run has no --duration."""

HELP = (
    "Run N simulated Shelly Gen2/Gen3 devices in this process: each answers HTTP and WebSocket RPC "
    "on its own port (digest auth once Shelly.SetAuth is called), meters deterministic loads into "
    "aenergy counters on an accelerated clock, and, with --broker, publishes over MQTT exactly as "
    "the real firmware does. --truth writes the exact energy per channel and 15-minute slot.\n\n"
    "Examples:\n\n"
    "kilowatch simulate --devices 5 --broker mqtt://127.0.0.1:1883 --speed 60\n\n"
    "kilowatch simulate --devices 500 --models pm1,switch,3em,em --http-port-base 20000 "
    "--broker mqtt://127.0.0.1:1883 --duration 600 --truth truth.json\n\n"
    "kilowatch simulate --devices 2 --unprovisioned --http-port-base 8081\n\n"
    "kilowatch simulate --devices 200 --unprovisioned --http-hosts 127.0.1.0/24\n\n"
    "(--http-hosts: each device on port 80 of its own address, as a real one; needs root)"
)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _start(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--start {value!r}: use unix seconds or ISO 8601") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


async def _run_until_stopped(
    resource: AbstractAsyncContextManager[Any],
    duration: float | None,
    started: Callable[[], Iterable[str]],
) -> None:
    """Hold ``resource`` (a fleet) open for ``duration`` real seconds (forever when ``None``; Ctrl-C
    or SIGTERM stops it earlier), echoing ``started()`` once it is open."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with resource:
        for line in started():
            typer.echo(line)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()


def _choices() -> tuple[str, str]:
    """The simulator's model and vendor names for --help (": pm1, switch, ..."); where to read them
    when the simulator cannot be imported (no ``sim`` extra): help must work all the same."""
    try:
        if missing_simulator() is None:
            from shellysim.models import MODELS
            from shellysim.vendors import VENDORS

            return f": {', '.join(MODELS)}", f": {', '.join(VENDORS)}"
    except ImportError:
        pass  # a broken simulator: running the command reports it
    return " (see docs/simulator.md)", " (see docs/simulator.md)"


def _read_script(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read --script {path}: {err.strerror}") from err


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""
    model_names, vendor_names = _choices()

    @app.command("simulate", help=HELP)
    def simulate(
        devices: int = typer.Option(1, "--devices", min=0, help="How many Shelly devices."),
        models: str = typer.Option(
            "pm1",
            "--models",
            help=f"Comma-separated models, assigned round-robin{model_names}.",
        ),
        broker: str | None = typer.Option(
            None, "--broker", help="MQTT broker URL the devices connect to (mqtt:// or mqtts://)."
        ),
        speed: float = typer.Option(
            1.0, "--speed", min=0.001, help="Simulated seconds per real second."
        ),
        duration: float | None = typer.Option(
            None,
            "--duration",
            min=0.0,
            help="Stop after this many real seconds (default: run until Ctrl-C).",
        ),
        truth: str | None = typer.Option(
            None,
            "--truth",
            help="Write exact energy per device/channel/15-minute slot to this JSON file.",
        ),
        http_host: str = typer.Option(
            "127.0.0.1", "--http-host", help="Address the devices listen on."
        ),
        http_port_base: int | None = typer.Option(
            None,
            "--http-port-base",
            min=1,
            max=65535,
            help="Device i listens on P+i (default: free ports).",
        ),
        http_hosts: str | None = typer.Option(
            None,
            "--http-hosts",
            help="Stand device i on the i-th address of this network, range or list "
            "(127.0.1.0/24, 127.0.1.1-127.0.2.244, a,b,c), on port 80 like a real device "
            "(--http-port-base P: port P of each address).",
        ),
        mdns: bool = typer.Option(
            False,
            "--mdns",
            help="Advertise every device over mDNS (_shelly._tcp, _http._tcp): multicast on "
            "your network; best with --http-hosts.",
        ),
        mdns_interfaces: str | None = typer.Option(
            None,
            "--mdns-interfaces",
            help="Comma-separated addresses of the interfaces to advertise on (implies --mdns; "
            "default: every interface).",
        ),
        unprovisioned: bool = typer.Option(
            False, "--unprovisioned", help="Start like new devices: MQTT disabled, no script."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of MACs and load profiles."),
        start: str | None = typer.Option(
            None, "--start", help="Simulated start time (unix seconds or ISO 8601; default: now)."
        ),
        vendors: str = typer.Option(
            "", "--vendors", help=f"Also run MQTT-only plugs, comma-separated{vendor_names}."
        ),
        chaos: bool = typer.Option(
            False,
            "--chaos",
            help="Inject faults from the seed: a daily reboot per device, some counter resets, "
            "30-minute outages and hours of duplicate publishes.",
        ),
        script: str | None = typer.Option(
            None,
            "--script",
            help="JavaScript file installed and enabled on every provisioned device.",
        ),
    ) -> None:
        require_simulator("simulate")  # before importing the simulator, which needs the sim extra
        from shellysim.faults import chaos_plan
        from shellysim.fleet import Fleet

        if http_hosts is None and http_port_base is not None and http_port_base + devices > 65536:
            raise ConfigError(
                f"--http-port-base {http_port_base} leaves no room for {devices} ports"
            )
        fleet = Fleet(
            devices=devices,
            models=_split(models),
            broker=broker,
            speed=speed,
            start=_start(start),
            seed=seed,
            http_host=http_host,
            http_port_base=http_port_base,
            http_hosts=http_hosts,
            mdns=mdns,
            mdns_interfaces=_split(mdns_interfaces) if mdns_interfaces is not None else None,
            unprovisioned=unprovisioned,
            truth_path=Path(truth) if truth else None,
            script=_read_script(script),
            vendors=_split(vendors),
        )
        if chaos:
            begin = fleet.clock.now()
            span = duration * speed if duration is not None else CHAOS_HORIZON_S
            ids = [d.id for d in fleet.devices]
            fleet.faults = chaos_plan(ids, start=begin, end=begin + span, seed=seed)

        def describe() -> list[str]:
            """Human summary of the running fleet."""
            count = len(fleet.devices)
            lines = [f"simulating {count} device(s) at {fleet.clock.speed:g}x real time"]
            if fleet.faults:
                lines.append(f"fault plan: {len(fleet.faults)} fault(s)")
            for dev in fleet.devices[:10]:
                where = fleet.url(dev) if fleet.http else "(no HTTP)"
                lines.append(f"  {dev.id}  {dev.spec.model}  {where}")
            if count > 10:
                lines.append(f"  ... and {count - 10} more")
            lines += [f"  {pub.id}  (MQTT only)" for pub in fleet.publishers]
            if fleet.broker_config and not fleet.unprovisioned:
                lines.append(f"MQTT: {fleet.broker_config['server']}")
            if fleet.truth_path:
                lines.append(f"truth: {fleet.truth_path}")
            if fleet.mdns:
                lines.append("mDNS: advertising _shelly._tcp and _http._tcp")
            return lines

        asyncio.run(_run_until_stopped(fleet, duration, describe))
