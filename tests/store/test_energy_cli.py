"""``kilowatch energy`` and ``kilowatch devices``, run as a user would (a subprocess)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kilowatch.model.slots import SlotEnergy
from kilowatch.store import Batch, DeviceUpdate, open_store

SRC = str(Path(__file__).resolve().parents[2] / "src")
DEV = "shellypmminig3-ecda3bc4ddb0"
T0 = 1774735200  # 2026-03-28T22:00:00Z = 2026-03-29T00:00+02:00 in Sofia


def subprocess_kilowatch(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line (slow to start: used for a few tests only)."""
    full = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kilowatch", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def kilowatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in this process (typer's runner); a KilowatchError ends it like main() does."""
    from typer.testing import CliRunner

    from kilowatch.cli.app import app
    from kilowatch.errors import KilowatchError

    result = CliRunner().invoke(app, list(args), env=env)
    if isinstance(result.exception, KilowatchError):
        return subprocess.CompletedProcess(args, 1, result.stdout, f"error: {result.exception}\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, "")


async def commit(url: str, batch: Batch) -> None:
    async with open_store(url) as store:
        await store.commit(batch)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    asyncio.run(
        commit(
            url,
            Batch(
                slots=[SlotEnergy(DEV, "pm1:0", T0 + i * 900, 1000, 10, i == 5) for i in range(96)],
                devices=[
                    DeviceUpdate(DEV, last_seen=float(T0), fw_ver="1.4.0", model="S3PM-001PCEU16")
                ],
            ),
        )
    )
    return url


def test_energy_json_over_a_23_hour_day(url: str) -> None:
    done = subprocess_kilowatch(
        "energy",
        "--by",
        "hour",
        "--tz",
        "Europe/Sofia",
        "--from",
        "2026-03-29",
        "--to",
        "2026-03-30",
        "--format",
        "json",
        "--store",
        url,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 23
    assert rows[0] == {
        "device": DEV,
        "channel": "pm1:0",
        "start": "2026-03-29T00:00:00+02:00",
        "end": "2026-03-29T01:00:00+02:00",
        "energy_wh": 4.0,
        "returned_energy_wh": 0.04,
        "estimated": False,
    }
    assert rows[1]["estimated"] is True
    assert rows[3]["start"] == "2026-03-29T04:00:00+03:00"


def test_energy_csv_total_by_day_with_datetime_range(url: str) -> None:
    done = kilowatch(
        "energy",
        "--by",
        "day",
        "--tz",
        "Europe/Sofia",
        "--from",
        "2026-03-29T12:00",
        "--to",
        "2026-03-31",
        "--group",
        "total",
        "--format",
        "csv",
        "--store",
        url,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    # 96 slots from 00:00 local: the 23-hour day holds 92, 12:00 on excludes the first 11 hours
    assert [(r["device"], r["start"], r["energy_wh"]) for r in rows] == [
        ("", "2026-03-29T12:00:00+03:00", str((92 - 44) * 1.0)),
        ("", "2026-03-30T00:00:00+03:00", "4.0"),
    ]


def test_devices_json(url: str) -> None:
    done = kilowatch("devices", "--format", "json", "--store", url)
    assert done.returncode == 0, done.stderr
    [device] = json.loads(done.stdout)
    assert (device["device"], device["fw_ver"], device["channels"]) == (DEV, "1.4.0", ["pm1:0"])


def test_devices_from_redis(redis_url: str) -> None:
    asyncio.run(commit(redis_url, Batch(devices=[DeviceUpdate(DEV, name="Boiler")])))
    done = kilowatch("devices", "--format", "csv", "--store", redis_url)
    assert done.returncode == 0, done.stderr
    [row] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert (row["device"], row["name"]) == (DEV, "Boiler")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-02-30", "--to", "2026-03-01"], "bad --from '2026-02-30'"),
        (["--from", "2026-03-01", "--to", "2026-03-01"], "empty time range"),
        (
            ["--from", "2026-03-01", "--to", "2026-03-02", "--tz", "Europe/Atlantis"],
            "unknown time zone",
        ),
        (["--from", "2026-03-01", "--to", "2026-03-02", "--by", "week"], "unknown --by 'week'"),
        (["--from", "2026-03-01", "--to", "2026-03-02", "--store", "mongodb://x"], "store URL"),
    ],
)
def test_energy_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = kilowatch(
        "energy",
        "--tz",
        "UTC",
        *args,
        env={"KILOWATCH_DATA_DIR": str(tmp_path), "KILOWATCH_STORE": ""},
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_errors_exit_1_with_one_line_from_the_real_command(tmp_path: Path) -> None:
    done = subprocess_kilowatch(
        "energy",
        "--from",
        "2026-03-01",
        "--to",
        "tomorrow",
        "--tz",
        "UTC",
        "--store",
        f"sqlite:///{tmp_path / 'kw.db'}",
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: bad --to 'tomorrow': use a date (2026-03-28) or a date and time (2026-03-28T10:00)"
    )


def test_default_store_is_in_the_data_dir(tmp_path: Path) -> None:
    env = {"KILOWATCH_DATA_DIR": str(tmp_path / "data"), "KILOWATCH_STORE": ""}
    missing = kilowatch("devices", "--format", "json", env=env)
    assert missing.returncode == 1
    assert f"no store at {tmp_path / 'data' / 'kilowatch.db'}" in missing.stderr
    assert not (tmp_path / "data").exists(), "reading commands create no store"
    asyncio.run(commit(f"sqlite:///{tmp_path / 'data' / 'kilowatch.db'}", Batch()))
    done = kilowatch("devices", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
