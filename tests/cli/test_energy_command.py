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


PRO3EM = "shellypro3em-a0b1c2d3e4f5"


def totals_line(table: str) -> tuple[str, str]:
    """Import and export of the table's ``total`` line."""
    [line] = [ln for ln in table.splitlines() if ln.strip("│┃ ").startswith("total ")]
    cells = [c.strip() for c in line.strip("│┃").split("│")]
    return cells[4], cells[5]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_totals_count_a_three_phase_meter_once(
    backend: str, tmp_path: Path, kilowatch: Run, request: pytest.FixtureRequest
) -> None:
    """A Pro 3EM's em:0 holds its phases em:0/a|b|c: the table's totals count it once, by
    channel as by total (the rows by channel still show all four)."""
    url = (
        f"sqlite:///{tmp_path / 'kw.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("redis_url")
    )
    t0 = int(datetime(2026, 3, 28, 10, tzinfo=UTC).timestamp())

    async def commit() -> None:
        async with open_store(url) as store:
            phases = [(f"em:0/{p}", 1000, 100 if p == "a" else 0) for p in "abc"]
            await store.commit(
                Batch(
                    slots=[
                        SlotEnergy(PRO3EM, channel, t0 + 900 * i, imp, exp, False)
                        for channel, imp, exp in [("em:0", 3000, 100), *phases]
                        for i in range(4)
                    ],
                    devices=[DeviceUpdate(PRO3EM, last_seen=float(t0))],
                )
            )

    asyncio.run(commit())
    args = ("energy", "--tz", "UTC", "--from", "2026-03-28", "--device", PRO3EM, "--store", url)
    by_channel = kilowatch(*args, "--group", "channel")
    assert by_channel.returncode == 0, by_channel.stderr
    assert totals_line(by_channel.stdout) == ("12.000", "0.400")
    for group in ("device", "total"):
        done = kilowatch(*args, "--group", group)
        assert totals_line(done.stdout) == ("12.000", "0.400"), group
    rows = json.loads(kilowatch(*args, "--format", "json").stdout)
    assert sorted(r["channel"] for r in rows) == ["em:0", "em:0/a", "em:0/b", "em:0/c"]
