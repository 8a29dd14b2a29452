"""The ``kilowatch`` command: a thin shell over the library.

Each command lives in its own module under ``kilowatch.cli`` and exposes ``register(app)``; this
module only assembles them. A command parses its options, opens the same services the server
uses, calls one function and renders the result. Errors derived from :class:`KilowatchError`
become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from kilowatch import __version__
from kilowatch.errors import KilowatchError

COMMAND_MODULES: tuple[str, ...] = (
    # one module per command (or command group); each defines ``register(app: typer.Typer) -> None``
    "decode",
    "serve",
    "deadletters",
    "user",
    "token",
    "energy",
    "devices",
    "simulate",
    "demo",
)

app = typer.Typer(
    name="kilowatch",
    help="Self-hosted energy monitor and fleet manager for smart power meters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kilowatch {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Self-hosted energy monitor and fleet manager for smart power meters."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"kilowatch.cli.{name}")
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=True)
    except KilowatchError as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
