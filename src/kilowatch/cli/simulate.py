"""``kilowatch simulate``: run a fleet of simulated Shelly devices (and Gen1/Tasmota plugs)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from pathlib import Path

import typer

from kilowatch.errors import ConfigError
from shellysim.faults import chaos_plan
from shellysim.fleet import Fleet
from shellysim.models import MODELS
from shellysim.vendors import VENDORS

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
    "kilowatch simulate --devices 2 --unprovisioned --http-port-base 8081"
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


async def run_fleet(fleet: Fleet, duration: float | None, echo: bool = True) -> None:
    """Run ``fleet`` for ``duration`` real seconds (forever when ``None``; Ctrl-C stops it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with fleet:
        if echo:
            for line in describe(fleet):
                typer.echo(line)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()


def describe(fleet: Fleet) -> list[str]:
    """Human summary of a running fleet."""
    lines = [f"simulating {len(fleet.devices)} device(s) at {fleet.clock.speed:g}x real time"]
    if fleet.faults:
        lines.append(f"fault plan: {len(fleet.faults)} fault(s)")
    for dev in fleet.devices[:10]:
        where = fleet.url(dev) if fleet.http else "(no HTTP)"
        lines.append(f"  {dev.id}  {dev.spec.model}  {where}")
    if len(fleet.devices) > 10:
        lines.append(f"  ... and {len(fleet.devices) - 10} more")
    for pub in fleet.publishers:
        lines.append(f"  {pub.id}  (MQTT only)")
    if fleet.broker_config and not fleet.unprovisioned:
        lines.append(f"MQTT: {fleet.broker_config['server']}")
    if fleet.truth_path:
        lines.append(f"truth: {fleet.truth_path}")
    return lines


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""

    @app.command("simulate", help=HELP)
    def simulate(
        devices: int = typer.Option(1, "--devices", min=0, help="How many Shelly devices."),
        models: str = typer.Option(
            "pm1",
            "--models",
            help=f"Comma-separated models, assigned round-robin: {', '.join(MODELS)}.",
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
        unprovisioned: bool = typer.Option(
            False, "--unprovisioned", help="Start like new devices: MQTT disabled, no script."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of MACs and load profiles."),
        start: str | None = typer.Option(
            None, "--start", help="Simulated start time (unix seconds or ISO 8601; default: now)."
        ),
        vendors: str = typer.Option(
            "", "--vendors", help=f"Also run MQTT-only plugs: comma-separated {', '.join(VENDORS)}."
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
        if http_port_base is not None and http_port_base + devices - 1 > 65535:
            raise ConfigError(
                f"--http-port-base {http_port_base} leaves no room for {devices} ports"
            )
        code = None
        if script is not None:
            try:
                code = Path(script).read_text()
            except OSError as err:
                raise ConfigError(f"cannot read --script {script}: {err.strerror}") from err
        fleet = Fleet(
            devices=devices,
            models=_split(models),
            broker=broker,
            speed=speed,
            start=_start(start),
            seed=seed,
            http_host=http_host,
            http_port_base=http_port_base,
            unprovisioned=unprovisioned,
            truth_path=Path(truth) if truth else None,
            script=code,
            vendors=_split(vendors),
        )
        if chaos:
            begin = fleet.clock.now()
            span = duration * speed if duration is not None else CHAOS_HORIZON_S
            ids = [d.id for d in fleet.devices]
            fleet.faults = chaos_plan(ids, start=begin, end=begin + span, seed=seed)
        asyncio.run(run_fleet(fleet, duration))
