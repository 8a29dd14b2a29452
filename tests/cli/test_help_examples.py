"""Every ``kilowatch ...`` example in a command's ``--help`` parses: its options exist and nothing
required is missing (``kilowatch energy --by day`` once failed with ``Missing option '--from'``)."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import typer
import typer.core
import typer.main

from kilowatch.cli.app import app

ROOT = typer.main.get_command(app)


def _commands(group: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every command under ``group`` by its path of names (``("token", "create")``)."""
    out: dict[tuple[str, ...], Any] = {}
    for name, command in sorted(group.commands.items()):
        if isinstance(command, typer.core.TyperGroup):
            out |= _commands(command, (*path, name))
        else:
            out[(*path, name)] = command
    return out


COMMANDS = _commands(ROOT)
EXAMPLE = re.compile(r"(?:^|\|\s*)kilowatch\s+(.*)$")
"""A command line: a help line that starts with ``kilowatch``, or pipes into it."""


def examples(help_text: str) -> list[list[str]]:
    """The ``kilowatch ...`` command lines in ``help_text`` (also after a ``|``), as argv."""
    found = []
    for line in help_text.splitlines():
        example = EXAMPLE.search(line.strip())
        if example is not None:
            found.append(shlex.split(example.group(1)))
    return found


def parse(path: tuple[str, ...], args: list[str]) -> None:
    """Parse ``args`` as command ``path`` would, without running it (a usage error raises)."""
    COMMANDS[path].make_context(" ".join(("kilowatch", *path)), list(args))


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_example_in_the_help_parses(path: tuple[str, ...]) -> None:
    found = examples(COMMANDS[path].help or "")
    assert found, f"kilowatch {' '.join(path)} --help has no example"
    for argv in found:
        assert tuple(argv[: len(path)]) == path, f"an example of another command: {argv}"
        parse(path, argv[len(path) :])


def test_usage_errors_would_be_caught() -> None:
    with pytest.raises(typer.BadParameter, match="Missing parameter: user"):
        parse(("token", "create"), ["--name", "backup"])
    with pytest.raises(typer.TyperException, match="No such option"):
        parse(("energy",), ["--by", "day", "--form", "2026-03-01"])
