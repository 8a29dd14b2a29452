"""``kilowatch demo``: kilowatch plus a simulated home, with days of history, in one command.

The demo (:mod:`kilowatch.demo`) runs the simulator, which needs the ``sim`` extra: it is imported
only when the command runs, after :func:`~kilowatch.cli.app.require_simulator`, so ``--help`` works
on a base install.
"""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer

from kilowatch.cli.app import one_line_errors, require_simulator
from kilowatch.errors import BrokerError

DEFAULT_DAYS = 3.0
DEFAULT_SPEED = 14_400.0
"""--days and --speed by default: kilowatch.demo.DemoOptions' defaults (a test checks they agree),
repeated here so that ``kilowatch demo --help`` needs no simulator."""

HELP = (
    "Run kilowatch on its embedded defaults (embedded MQTT broker, SQLite store, web dashboard) "
    "together with a simulated home: a boiler (Shelly PM Mini Gen3), an air conditioner (Plus "
    "1PM), the mains (Pro 3EM, three phases), a balcony PV plug feeding in (Plus Plug S) and a "
    "Tasmota plug. The devices first replay --days of history on an accelerated clock (--speed "
    "simulated seconds per real second), then run in real time. It prints the dashboard URL, the "
    "login and commands to try. Ctrl-C stops everything cleanly.\n\n"
    "The default store (<data dir>/demo/kilowatch.db) starts afresh on every run; nothing from "
    "KILOWATCH_* variables or the config file is used, so the demo never writes into your real "
    "store. If port 1883 or 8000 is taken, pass --mqtt-port / --http-port (0 = any free port).\n\n"
    "Examples:\n\n"
    "kilowatch demo\n\n"
    "kilowatch demo --days 7 --speed 43200 --tz Europe/Sofia\n\n"
    "kilowatch demo --mqtt-port 0 --http-port 8080 --data-dir /tmp/kw-demo"
)


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""

    @app.command("demo", help=HELP)
    def demo(
        days: float = typer.Option(
            DEFAULT_DAYS, "--days", help="Days of history to back-fill (fractions allowed)."
        ),
        speed: float = typer.Option(
            DEFAULT_SPEED,
            "--speed",
            help="Back-fill speed: simulated seconds per real second (must be > 1).",
        ),
        store: str | None = typer.Option(
            None, "--store", help="Store URL (default: sqlite in the demo data dir)."
        ),
        data_dir: str | None = typer.Option(
            None,
            "--data-dir",
            help="Directory of the demo's SQLite file (default: the data dir's demo/).",
        ),
        mqtt_host: str = typer.Option(
            "127.0.0.1", "--mqtt-host", help="Address the embedded broker binds."
        ),
        mqtt_port: int = typer.Option(
            1883, "--mqtt-port", help="Port the embedded broker binds (0 = any free port)."
        ),
        http_host: str = typer.Option(
            "127.0.0.1", "--http-host", help="Address the web app binds."
        ),
        http_port: int = typer.Option(
            8000, "--http-port", help="Port the web app binds (0 = any free port)."
        ),
        tz: str | None = typer.Option(
            None, "--tz", help="Site time zone (IANA name; default: this machine's)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the device MACs and load profiles."),
        log_level: str = typer.Option(
            "WARNING", "--log-level", help="Log level on stderr: DEBUG, INFO, WARNING, ERROR."
        ),
    ) -> None:
        require_simulator("demo")  # before importing the demo, which needs the sim extra
        from kilowatch.demo import DemoOptions, demo_settings, run_demo
        from kilowatch.service.server import setup_logging

        options = DemoOptions(
            days=days,
            speed=speed,
            store=store,
            data_dir=Path(data_dir) if data_dir else None,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            http_host=http_host,
            http_port=http_port,
            tz=tz,
            seed=seed,
            log_level=log_level,
        )
        setup_logging(demo_settings(options))
        try:
            asyncio.run(_until_signalled(lambda stop: run_demo(options, stop, echo=typer.echo)))
        except BaseExceptionGroup as group:
            raise _for_demo(_reportable(group), mqtt_port) from None
        except asyncio.CancelledError:
            raise typer.Exit(130) from None


def _reportable(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in ``group`` that the CLI prints as one line (kilowatch's or the
    simulator's), else the group itself."""
    found: BaseException | None = group.subgroup(one_line_errors())
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found or group


def _for_demo(err: BaseException, mqtt_port: int) -> BaseException:
    """The broker's "port in use" advice names serve's --broker; the demo only has --mqtt-port."""
    cause = err.__cause__
    if (
        isinstance(err, BrokerError)
        and isinstance(cause, OSError)
        and cause.errno == errno.EADDRINUSE
    ):
        return BrokerError(
            f"port {mqtt_port} is in use (another MQTT broker?); pass --mqtt-port 0 "
            "to run the demo's embedded broker on any free port, or --mqtt-port N"
        )
    return err


async def _until_signalled(run: Callable[[asyncio.Event], Awaitable[object]]) -> None:
    """Run ``run(stop)``; the first Ctrl-C (or SIGTERM) sets ``stop``, a second one cancels."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main is not None:
            main.cancel()  # a second Ctrl-C: stop now, without waiting for the commit
            return
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        await run(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
