"""The command line in this process (typer's runner), ending as ``kilowatch.cli.app.main`` does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# importlib import mode: make this folder's helper module (cliproc) importable by the test files.
sys.path.insert(0, str(Path(__file__).parent))

Run = Callable[..., subprocess.CompletedProcess[str]]
"""The fixture's type (the test files, imported by importlib, repeat it)."""


def _kilowatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    from typer.testing import CliRunner

    from kilowatch.cli.app import app
    from kilowatch.errors import KilowatchError

    # settings from the machine running the tests must not leak in
    clean = {"KILOWATCH_STORE": "", "KILOWATCH_CONFIG": "", **(env or {})}
    result = CliRunner().invoke(app, list(args), env=clean, terminal_width=200)
    if isinstance(result.exception, KilowatchError):
        return subprocess.CompletedProcess(args, 1, result.stdout, f"error: {result.exception}\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def kilowatch() -> Run:
    """``kilowatch(*args, env=...)``: exit code 1 and ``error: ...`` on stderr for our errors."""
    return _kilowatch
