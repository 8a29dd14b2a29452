"""The ``kilowatch`` command: a thin shell over the library.

Each command lives in its own module under ``kilowatch.cli`` and exposes ``register(app)``; this
module only assembles them. A command parses its options, opens the same services the server
uses, calls one function and renders the result. Errors derived from :class:`KilowatchError`
(and the simulator's own errors) become one line on stderr and a non-zero exit code.

``kilowatch demo`` and ``kilowatch simulate`` run the simulator (package ``shellysim``), whose
dependencies come with the ``sim`` extra. :func:`require_simulator` is the one check that they are
installed; those commands import the simulator only after it, so ``--help`` works without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence

import typer
from rich.console import Console
from rich.markup import escape

from kilowatch import __version__
from kilowatch.errors import ConfigError, KilowatchError

COMMAND_MODULES: tuple[str, ...] = (
    # one module per command (or command group); each defines ``register(app: typer.Typer) -> None``
    "decode",
    "serve",
    "deadletters",
    "user",
    "token",
    "energy",
    "devices",
    "broker",
    "fleet",
    "backfill",
    "logs",
    "alerts",
    "simulate",
    "demo",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kilowatch {__version__}")
        raise typer.Exit


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Self-hosted energy monitor and fleet manager for smart power meters."""


def build_app(commands: Iterable[str] = COMMAND_MODULES) -> typer.Typer:
    """The ``kilowatch`` app with ``commands`` (names from COMMAND_MODULES) registered."""
    app = typer.Typer(
        name="kilowatch",
        help="Self-hosted energy monitor and fleet manager for smart power meters.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for name in commands:
        module = importlib.import_module(f"kilowatch.cli.{name}")
        module.register(app)
    return app


def commands_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The command modules a command line needs.

    Commands pull in heavy libraries (FastAPI, aiohttp, V8): importing all of them costs seconds, so
    ``kilowatch energy ...`` imports only ``energy``. Help listings and unknown commands get all.
    """
    positional = [arg for arg in argv if not arg.startswith("-")]
    if not positional:
        return () if "--version" in argv else COMMAND_MODULES
    return (positional[0],) if positional[0] in COMMAND_MODULES else COMMAND_MODULES


def missing_simulator() -> str | None:
    """The first dependency of the simulator that is missing (a name for pip), or ``None``.

    ``shellysim`` imports aiohttp and cryptography (base dependencies too, for the fleet and the
    broker's CA); scripts on simulated devices run in mini-racer's V8 (module ``py_mini_racer``),
    looked up without loading it. The ``sim`` extra names aiohttp and mini-racer.
    """
    try:
        importlib.import_module("shellysim")
    except ModuleNotFoundError as err:
        if err.name is None or err.name.startswith("shellysim."):
            raise  # a module of the simulator itself is missing: a broken install, not an extra
        return err.name.partition(".")[0]
    try:
        engine = importlib.util.find_spec("py_mini_racer")
    except ModuleNotFoundError:
        engine = None
    return None if engine is not None else "mini-racer"


def require_simulator(command: str) -> None:
    """Stop ``kilowatch COMMAND`` with one line on how to install the simulator if it is missing."""
    missing = missing_simulator()
    if missing is not None:
        raise ConfigError(
            f"kilowatch {command} needs the simulator's dependencies ({missing} is not installed): "
            f"pip install 'kilowatch[sim]', or in a checkout: bash scripts/run.sh {command}"
        )


def one_line_errors() -> tuple[type[Exception], ...]:
    """The errors :func:`main` prints as one line: kilowatch's, and the simulator's once it is
    loaded (naming its base class must not import shellysim, which needs the ``sim`` extra)."""
    sim_errors = sys.modules.get("shellysim.errors")
    if sim_errors is None:
        return (KilowatchError,)
    return (KilowatchError, sim_errors.SimulatorError)


_full_app: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    # ``from kilowatch.cli.app import app`` (tests, docs checks) gets every command, built once.
    global _full_app
    if name != "app":
        raise AttributeError(name)
    if _full_app is None:
        _full_app = build_app()
    return _full_app


def main() -> None:
    """Console-script entry point."""
    app = build_app(commands_for(sys.argv[1:]))
    try:
        app(standalone_mode=True)
    except Exception as err:
        if not isinstance(err, one_line_errors()):
            raise
        # escaped: a message may hold brackets ("kilowatch[sim]", "[::1]") that are not markup
        message = escape(str(err))
        Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        sys.exit(1)
