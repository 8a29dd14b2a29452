"""``kilowatch energy``: the web API's default range, and unknown devices said out loud."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kilowatch.cli.energy import build_query as cli_query
from kilowatch.model.slots import SlotEnergy
from kilowatch.store import Batch, DeviceUpdate, open_store
from kilowatch.web.energy import build_query as api_query

Run = Callable[..., subprocess.CompletedProcess[str]]
"""The ``kilowatch`` fixture (conftest.py)."""
DEV = "shellypmminig3-ecda3bc4ddb0"


def seed(url: str, devices: list[str], slot: int) -> None:
    """A store holding ``devices``, each with 1 Wh in the 15 minutes from ``slot``."""

    async def commit() -> None:
        async with open_store(url) as store:
            await store.commit(
                Batch(
                    slots=[SlotEnergy(d, "pm1:0", slot, 1000, 0, False) for d in devices],
                    devices=[DeviceUpdate(d, last_seen=float(slot)) for d in devices],
                )
            )

    asyncio.run(commit())


@pytest.mark.parametrize("by", ["15min", "hour", "day", "month"])
@pytest.mark.parametrize(
    ("tz", "now"),
    [
        ("Europe/Sofia", datetime(2026, 10, 25, 10, tzinfo=UTC)),  # a 25-hour day
        ("America/New_York", datetime(2027, 1, 1, 3, tzinfo=UTC)),  # still 2026 there
        ("UTC", datetime(2026, 3, 31, 23, 59, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize("given", ["nothing", "from", "to"])
def test_the_cli_and_the_api_fill_in_the_same_range(
    by: str, tz: str, now: datetime, given: str
) -> None:
    start = (now - timedelta(days=10)).date().isoformat() if given == "from" else None
    end = (now + timedelta(days=1)).date().isoformat() if given == "to" else None
    ts = now.timestamp()
    cli = cli_query(
        by=by, tz=tz, start=start, end=end, now=ts, devices=[], channels=[], group="channel"
    )
    api = api_query(by=by, tz=tz, start=start, end=end, now=ts)
    assert (cli.start, cli.end) == (api.start, api.end)


def test_energy_by_day_needs_no_range(tmp_path: Path, kilowatch: Run) -> None:
    """The README's example: ``kilowatch energy --by day`` is this month, by day."""
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    slot = int(time.time()) // 900 * 900
    seed(url, [DEV], slot)
    done = kilowatch("energy", "--by", "day", "--tz", "UTC", "--format", "json", "--store", url)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    day = datetime.fromtimestamp(slot, UTC).date()
    assert (row["device"], row["start"][:10], row["energy_wh"]) == (DEV, day.isoformat(), 1.0)
    table = kilowatch("energy", "--by", "day", "--tz", "UTC", "--store", url)
    assert table.returncode == 0, table.stderr
    assert f"{day.replace(day=1).isoformat()}T00:00+00:00 to" in table.stdout


def test_energy_from_only_is_one_period(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    seed(url, [DEV], int(datetime(2026, 3, 31, 23, 45, tzinfo=UTC).timestamp()))
    args = ("energy", "--by", "hour", "--tz", "UTC", "--format", "json", "--store", url)
    [row] = json.loads(kilowatch(*args, "--from", "2026-03-31").stdout)
    assert row["start"] == "2026-03-31T23:00:00+00:00"
    assert json.loads(kilowatch(*args, "--from", "2026-03-30").stdout) == []


@pytest.mark.parametrize(
    ("known", "message"),
    [
        (
            [DEV, "shellyplusplugs-aa"],
            f"error: unknown --device 'nope'; the store knows: shellyplusplugs-aa, {DEV}\n",
        ),
        (
            [f"plug-{i:02}" for i in range(21)],
            "error: unknown --device 'nope': not among the store's 21 devices; "
            "kilowatch devices lists them\n",
        ),
    ],
    ids=["few", "many"],
)
def test_an_unknown_device_is_an_error(
    known: list[str], message: str, tmp_path: Path, kilowatch: Run
) -> None:
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    seed(url, known, 1774735200)
    done = kilowatch(
        "energy", "--by", "day", "--device", known[0], "--device", "nope", "--store", url
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", message)


def test_a_known_device_is_answered(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    seed(url, [DEV, "plug-b"], 1774735200)
    done = kilowatch(
        "energy", "--tz", "UTC", "--from", "2026-03-28", "--device", DEV,
        "--format", "json", "--store", url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["device"] for r in json.loads(done.stdout)] == [DEV]
