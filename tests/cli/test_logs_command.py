"""``kilowatch logs``: a device's log lines or events from a real SQLite store, oldest first; with
``--follow`` (a real process, stopped with Ctrl-C) the lines stored after it started, each once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kilowatch.model.messages import Event, LogLine
from kilowatch.store import Batch, DeviceUpdate, open_store

Run = Callable[..., subprocess.CompletedProcess[str]]
DEV = "shellypmminig3-ecda3bc4ddb0"
OTHER = "shellyplugsg3-aabbccddeeff"
T0 = 1_773_500_000.0


def lines_of(n: int, *, start: int = 0) -> list[LogLine]:
    return [
        LogLine(DEV, T0 + i, f"line {i}", level=2, seq=i, source="shelly_notification.c:164")
        for i in range(start, start + n)
    ]


async def seed(url: str, *batches: Batch) -> None:
    async with open_store(url) as store:
        for batch in batches:
            await store.commit(batch)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    events = [
        Event(DEV, T0 + 1.5, "sys", "ota_progress", {"progress_percent": 40}),
        Event(DEV, T0 + 2.5, "sys", "ota_success"),
    ]
    devices = [DeviceUpdate(DEV, last_seen=T0), DeviceUpdate(OTHER, last_seen=T0)]
    asyncio.run(seed(url, Batch(devices=devices, logs=lines_of(30), events=events)))
    return url


def test_prints_the_newest_oldest_first_like_tail(kilowatch: Run, url: str) -> None:
    r = kilowatch("logs", DEV, "--store", url, "--limit", "3")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert [line.rsplit(" ", 2)[-2:] for line in out] == [["line", "27"], ["line", "28"],
                                                          ["line", "29"]]  # fmt: skip
    assert out[0] == ("2026-03-14 14:53:47.000 info  shelly_notification.c:164  line 27"), (
        "UTC time with ms, level, where, message"
    )
    default = kilowatch("logs", DEV, "--store", url).stdout.splitlines()
    assert len(default) == 20 and default[-3:] == out


def test_events_and_json(kilowatch: Run, url: str) -> None:
    r = kilowatch("logs", DEV, "--events", "--store", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        '2026-03-14 14:53:21.500 sys  ota_progress  {"progress_percent":40}',
        "2026-03-14 14:53:22.500 sys  ota_success",
    ]
    r = kilowatch("logs", DEV, "--json", "-n", "2", "--store", url)
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert objs == [
        {"kind": "log", "device": DEV, "ts": T0 + 28, "message": "line 28", "level": 2,
         "seq": 28, "source": "shelly_notification.c:164", "time": "2026-03-14T14:53:48+00:00"},
        {"kind": "log", "device": DEV, "ts": T0 + 29, "message": "line 29", "level": 2,
         "seq": 29, "source": "shelly_notification.c:164", "time": "2026-03-14T14:53:49+00:00"},
    ]  # fmt: skip
    r = kilowatch("logs", OTHER, "--store", url)
    assert (r.returncode, r.stdout) == (0, "")


def test_unknown_device_says_how_to_find_ids(kilowatch: Run, url: str) -> None:
    r = kilowatch("logs", "shellypmminig3-000000000000", "--store", url)
    assert r.returncode == 1
    assert "no device 'shellypmminig3-000000000000'" in r.stderr
    assert f"the store knows: {OTHER}, {DEV} (kilowatch devices" in r.stderr


def test_a_missing_store_is_not_created(kilowatch: Run, tmp_path: Path) -> None:
    r = kilowatch("logs", DEV, "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "none.db").exists()


def read_lines(proc: subprocess.Popen[str], n: int, timeout: float = 20.0) -> list[str]:
    assert proc.stdout is not None
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {got} after {timeout} s"
        line = proc.stdout.readline()  # the command flushes after each batch
        assert line, f"the command ended after {got}: {proc.stderr.read() if proc.stderr else ''}"
        got.append(line.rstrip("\n"))
    return got


def test_follow_prints_each_line_stored_after_it_started_once(url: str) -> None:
    env = {**os.environ, "KILOWATCH_STORE": "", "KILOWATCH_CONFIG": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kilowatch", "logs", DEV, "--follow", "-n", "2", "--store", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = read_lines(proc, 2)
        assert [x.split()[-1] for x in first] == ["28", "29"]
        # Two lines equal to lines already printed (same time, same text: only their place
        # tells them apart) and a new one, in two commits.
        again = LogLine(
            DEV, T0 + 29, "line 29", level=2, seq=29, source="shelly_notification.c:164"
        )
        asyncio.run(seed(url, Batch(logs=[again]), Batch(logs=[again, *lines_of(1, start=30)])))
        later = read_lines(proc, 3)
        assert [x.split()[-1] for x in later] == ["29", "29", "30"]
        # 150 lines at once: more than one short read holds, yet none missed
        asyncio.run(seed(url, Batch(logs=lines_of(150, start=31))))
        many = read_lines(proc, 150)
        assert [int(x.split()[-1]) for x in many] == list(range(31, 181))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert out == "", "nothing printed twice after the last line"
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
