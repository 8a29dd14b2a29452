"""``kilowatch fleet audit`` and what leaves entries in the log: ``fleet adopt`` (the real command
against kilowatch serve with its managed mosquitto and simulated devices, one of which fails),
``fleet apply`` (a dry run and ``fleet plan`` leave none, and keep compliance), ``broker user
add|rotate|revoke``; the filters, the table and the refusals."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kilowatch.broker.mosquitto import find_mosquitto
from kilowatch.cli.fleet_audit import cli_actor, detail_text, devices_text
from kilowatch.fleet.adopt import ha1
from kilowatch.fleet.compliance import State, compliance
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration
from kilowatch.testing.service import running_service, service_settings

if TYPE_CHECKING:
    from conftest import Run

SRC = Path(__file__).resolve().parents[2] / "src"
HOST = "127.0.93.10"
T0 = 1_767_258_000
PROFILE = """\
[system]
tz = "Europe/Vienna"
"""
needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto 2.x is not installed"
)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILOWATCH_")}
    env |= {"PYTHONPATH": str(SRC), "HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "kilowatch", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@needs_mosquitto
async def test_adopt_and_apply_leave_entries_plans_and_dry_runs_do_not(tmp_path: Path) -> None:
    from shellysim import Fleet

    settings = service_settings(tmp_path)
    where = ["--store", settings.store_url, "--data-dir", str(settings.data_dir)]
    store = where[:2]
    profile = tmp_path / "vienna.toml"
    profile.write_text(PROFILE)
    me = cli_actor()
    assert me == f"cli:{getpass.getuser()}"
    async with (
        running_service(settings) as running,
        Fleet(devices=3, models=("pm1",), unprovisioned=True, start=T0, speed=60.0, engine=None,
              http_host=HOST) as fleet,
    ):  # fmt: skip
        good_a, good_b, locked = fleet.devices
        locked.auth_ha1 = ha1(locked.id, "owners-password")
        await running.store.register([
            Registration(device=d.id, address=fleet.url(d).removeprefix("http://"), gen=3)
            for d in fleet.devices
        ])  # fmt: skip
        server = f"127.0.0.1:{running.mqtt_port}"
        adopted = await asyncio.to_thread(
            _cli, tmp_path, "fleet", "adopt", "--all", "--mqtt-server", server, "--wait", "20",
            *where,
        )  # fmt: skip
        assert adopted.returncode == 1, adopted.stdout + adopted.stderr  # the locked one failed

        out = await asyncio.to_thread(_cli, tmp_path, "fleet", "audit", "--json", *store)
        assert out.returncode == 0, out.stderr
        entries = _lines(out.stdout)
        adopt = [e for e in entries if e["action"] == "fleet.adopt"]
        assert [e["result"] for e in adopt] == ["partial", "started"]
        end, start = adopt
        assert end["actor"] == me and end["detail"]["started"] == start["id"]
        assert sorted(end["devices"]) == sorted(d.id for d in fleet.devices)
        assert end["detail"]["adopted"] == 2 and end["detail"]["failed"] == 1
        # devices answering together share a write of the broker users: one entry per write
        added = [e for e in entries if e["action"] == "credentials.add" and e["result"] == "ok"]
        assert sorted(d for e in added for d in e["devices"]) == sorted([good_a.id, good_b.id])
        assert "password" not in json.dumps(entries)

        # plan and a dry run: compliance kept, nothing audited (the locked device is unreadable)
        plan = await asyncio.to_thread(_cli, tmp_path, "fleet", "plan", str(profile), *where)
        assert plan.returncode == 1, plan.stderr
        dry = await asyncio.to_thread(
            _cli, tmp_path, "fleet", "apply", str(profile), "--dry-run", *where
        )
        assert dry.returncode == 1, dry.stderr
        async with open_store(settings.store_url) as db:
            assert await db.audit(action="fleet.apply") == []
            checks = await compliance(db)
        assert {checks[d.id].state for d in (good_a, good_b)} == {State.DRIFTED}
        assert checks[locked.id].state is State.UNREADABLE

        applied = await asyncio.to_thread(_cli, tmp_path, "fleet", "apply", str(profile), *where)
        assert applied.returncode == 1, applied.stdout + applied.stderr
        async with open_store(settings.store_url) as db:
            applied_end, applied_start = await db.audit(action="fleet.apply")
            checks = await compliance(db)
        assert (applied_end.result, applied_start.result) == ("partial", "started")
        assert applied_end.actor == me and applied_end.detail["profile"] == "vienna.toml"
        assert applied_end.detail["ok"] == 2 and applied_end.detail["failed"] == 1
        assert {checks[d.id].state for d in (good_a, good_b)} == {State.IN_SYNC}

        # the filters and the table
        by_device = await asyncio.to_thread(
            _cli, tmp_path, "fleet", "audit", "--json", "--device", locked.id, *store
        )
        assert {e["action"] for e in _lines(by_device.stdout)} == {"fleet.adopt", "fleet.apply"}
        newest = await asyncio.to_thread(
            _cli, tmp_path, "fleet", "audit", "--json", "--limit", "1", *store
        )
        assert [e["action"] for e in _lines(newest.stdout)] == ["fleet.apply"]
        table = await asyncio.to_thread(_cli, tmp_path, "fleet", "audit", *store)
        assert table.returncode == 0, table.stderr
        assert "fleet.apply" in table.stdout and "fleet.adopt" in table.stdout
        assert "partial" in table.stdout and me in table.stdout
        assert "newest first, times in" in table.stdout


def test_broker_user_changes_are_audited(tmp_path: Path, kilowatch: Run) -> None:
    where = ["--store", f"sqlite:///{tmp_path}/k.db", "--data-dir", str(tmp_path / "data")]
    device = "shellypmminig3-aabbccddee01"
    printed = ""
    for args in (("add", device), ("rotate", device), ("revoke", device)):
        result = kilowatch("broker", "user", *args, *where)
        assert result.returncode == 0, result.stderr
        printed += result.stdout
    passwords = [line.rsplit(": ", 1)[1] for line in printed.splitlines()
                 if line.startswith(("password: ", "new password for"))]  # fmt: skip
    assert len(passwords) == 2
    assert kilowatch("broker", "user", "add", device, *where).returncode == 0  # back in
    refused = kilowatch("broker", "user", "add", device, *where)
    assert refused.returncode == 1  # it has credentials already: refused, and audited so
    result = kilowatch("fleet", "audit", "--json", "--action", "credentials", *where[:2])
    assert result.returncode == 0, result.stderr
    entries = _lines(result.stdout)
    ends = [(e["action"], e["result"]) for e in entries if e["result"] != "started"]
    assert ends == [
        ("credentials.add", "failed"),
        ("credentials.add", "ok"),
        ("credentials.revoke", "ok"),
        ("credentials.rotate", "ok"),
        ("credentials.add", "ok"),
    ]
    assert all(e["devices"] == [device] and e["actor"] == cli_actor() for e in entries)
    assert "already has credentials" in entries[0]["detail"]["error"]
    # a password is printed once by the command, and never kept in the log
    assert not any(password in result.stdout for password in passwords)


def test_empty_log_refusals_and_the_short_forms(tmp_path: Path, kilowatch: Run) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    asyncio.run(_create(url))
    result = kilowatch("fleet", "audit", "--store", url)
    assert result.returncode == 0 and "no audit entries yet" in result.stdout
    result = kilowatch("fleet", "audit", "--store", url, "--device", "x")
    assert "no audit entries match" in result.stdout
    result = kilowatch("fleet", "audit", "--store", url, "--limit", "0")
    assert result.returncode == 1 and "--limit" in result.stderr
    result = kilowatch("fleet", "audit", "--store", f"sqlite:///{tmp_path}/nothing.db")
    assert result.returncode == 1 and "no store at" in result.stderr
    assert not (tmp_path / "nothing.db").exists()

    assert devices_text(["a", "b", "c"]) == "a, b, c"
    assert devices_text([f"d{i}" for i in range(100)]) == "d0, d1, d2 +97"
    assert (
        detail_text({"started": "x", "profile": "home.toml", "ok": 2}) == "profile=home.toml ok=2"
    )
    assert len(detail_text({"error": "e" * 500})) == 80


async def _create(url: str) -> None:
    async with open_store(url):
        pass
