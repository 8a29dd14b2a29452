"""The real ``kilowatch`` command in a subprocess, for tests whose simulated devices or brokers
run in the test's own event loop (typer's runner in this process would block it)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


async def run_kilowatch(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m kilowatch ARGS`` (this checkout's source, the machine's settings left out,
    200 columns, ``env`` added) for at most 120 s: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kilowatch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC, "KILOWATCH_STORE": "", "KILOWATCH_CONFIG": "",
             "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
