"""Helpers for the service tests: a real publisher, kilowatch in-process and as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from kilowatch.service.config import Settings
from kilowatch.service.server import Running, WebStarter, serve

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT_S = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class Publisher:
    """A paho client publishing at QoS 1 and waiting for each PUBACK."""

    def __init__(self, port: int, *, user: str | None = None, password: str | None = None):
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub-"))
        self.client.max_inflight_messages_set(0)
        if user:
            self.client.username_pw_set(user, password)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(TIMEOUT_S)

    def publish_many(self, items: list[tuple[str, Any]]) -> None:
        infos = [
            self.client.publish(t, p if isinstance(p, bytes) else json.dumps(p).encode(), qos=1)
            for t, p in items
        ]
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def forget_session(port: int, client_id: str) -> None:
    """End a persistent session, so the shared broker stops queueing for it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


async def poll(check: Callable[[], Any], *, timeout: float = TIMEOUT_S, what: str = "") -> Any:
    """Await until ``check()`` is truthy (it may be a coroutine function); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, *, web: WebStarter | None = None
) -> AsyncIterator[Running]:
    """kilowatch's serve() in this event loop (without the web app unless ``web`` starts it),
    stopped gracefully on exit."""
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(serve(settings, stop, on_ready=ready.set_result, web=web))
        done, _ = await asyncio.wait(
            {ready, task}, timeout=TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            stop.set()
            raise AssertionError("kilowatch did not become ready")
        try:
            yield ready.result()
        finally:
            stop.set()


@dataclass
class ServeProcess:
    """``python -m kilowatch serve ...`` as a subprocess, with its log in a file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"kilowatch exited {self.proc.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in kilowatch's log:\n{self.text()}")
            time.sleep(0.02)

    def terminate(self, timeout: float = TIMEOUT_S) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT_S)


def cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment for kilowatch subprocesses: src on the path, no user config or data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILOWATCH_")}
    env["PYTHONPATH"] = str(SRC)
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def run_cli(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "kilowatch", *args],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kilowatch {' '.join(args)} exited {out.returncode}: {out.stderr}")
    return out
