"""Fixtures of the service tests (helpers live in svchelpers.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# importlib import mode: make this folder's helper module importable by the test files.
sys.path.insert(0, str(Path(__file__).parent))

from svchelpers import ServeProcess, cli_env, unique

from kilowatch.service.config import Settings, load_settings


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        log = tmp_path / f"serve-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kilowatch", "serve", "--http-port", "0", *args],
            env=cli_env(tmp_path),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        sp = ServeProcess(proc, log)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        if sp.proc.poll() is None:
            sp.kill()


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for an in-process kilowatch on ``broker`` and ``store`` (env and files ignored)."""

    def make(broker: str, store: str | None = None, **more: Any) -> Settings:
        values = {
            "broker": broker,
            "store": store or f"sqlite:///{tmp_path}/kilowatch.db",
            "mqtt_client_id": unique("kw-test-"),
            "data_dir": str(tmp_path / "data"),
            "tz": "UTC",
            **more,
        }
        return load_settings(values, env={})

    return make
