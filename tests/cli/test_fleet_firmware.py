"""``kilowatch fleet firmware check`` and ``update``: the real command in a subprocess on
simulated devices registered in a real store; the table and JSON, a halted rollout's exit code and
report, a second run finishing the rest, the audit entry, and clear errors for bad options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cliproc import run_kilowatch

from kilowatch.store import open_store
from kilowatch.store.protocol import Registration
from shellysim import Fleet

if TYPE_CHECKING:
    from conftest import Run


async def test_check_then_a_halted_update_then_one_that_finishes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    where = ["--store", url, "--data-dir", str(tmp_path / "data")]
    async with Fleet(devices=3, models=["pm1"], unprovisioned=True, engine=None) as fleet:
        ids = [d.id for d in fleet.devices]
        async with open_store(url) as store:
            await store.register(
                [
                    Registration(device=d.id, model=d.spec.model, gen=d.spec.gen,
                                 address=f"127.0.0.1:{fleet.port(d)}", transport="lan",
                                 room="lab")
                    for d in fleet.devices
                ]
            )  # fmt: skip

        code, out, err = await run_kilowatch("fleet", "firmware", "check", *where)
        assert code == 0, err
        assert "1.4.4" in out and "1.5.1" in out and "1.6.0-beta2" in out
        assert "3 devices: 3 offered a stable update, 3 a beta, 0 not read" in out
        code, out, err = await run_kilowatch("fleet", "firmware", "check", "--json",
                                             f"--select={ids[0]}", *where)  # fmt: skip
        assert code == 0, err
        assert [(s["device"], s["current"], s["stable"]) for s in json.loads(out)] == [
            (ids[0], "1.4.4", "1.5.1")
        ]

        code, out, err = await run_kilowatch("fleet", "firmware", "update", "--stage", "stable",
                                             "--dry-run", *where)  # fmt: skip
        assert code == 0, err
        assert "3 planned" in out and all(d.update_requests == [] for d in fleet.devices)

        fleet.devices[0].fail_updates = True  # the canary fails
        report = tmp_path / "report.json"
        code, out, err = await run_kilowatch("fleet", "firmware", "update", "--stage", "stable",
                                             "--report", str(report), "--select", "room=lab",
                                             *where)  # fmt: skip
        assert code == 1, (out, err)
        assert "halted" in out and "ota_error: Update failed: bad checksum" in out
        body = json.loads(report.read_text())
        assert body["halted"] and body["summary"]["failed"] == 1 and body["summary"]["skipped"] == 2
        assert [d["outcome"] for d in body["devices"]] == ["failed", "skipped", "skipped"]
        assert all(d.update_requests == [] for d in fleet.devices[1:])

        fleet.devices[0].fail_updates = False
        code, out, err = await run_kilowatch("fleet", "firmware", "update", "--stage", "stable",
                                             "--canary", "3", "--json", *where)  # fmt: skip
        assert code == 0, err
        assert [d["outcome"] for d in json.loads(out)["devices"]] == ["updated"] * 3
        assert all(d.ver == "1.5.1" for d in fleet.devices)

        async with open_store(url) as store:
            ends = [e for e in await store.audit() if e.result != "started"]
        assert [e.result for e in ends] == ["ok", "halted"]  # newest first
        assert all(e.action == "firmware.update" and e.actor.startswith("cli:") for e in ends)


def test_bad_options_say_what_is_wrong(kilowatch: Run, tmp_path: Path) -> None:
    where = ["--store", f"sqlite:///{tmp_path}/k.db", "--data-dir", str(tmp_path)]
    result = kilowatch("fleet", "firmware", "update", "--stage", "nightly", *where)
    assert result.returncode == 1 and "unknown --stage 'nightly'" in result.stderr
    result = kilowatch("fleet", "firmware", "update", "--stage", "beta", "--canary", "0", *where)
    assert result.returncode == 1 and "canary must be 1 or more" in result.stderr
    result = kilowatch("fleet", "firmware", "check", "--select", "colour=red", *where)
    assert result.returncode == 1 and "unknown key 'colour'" in result.stderr
    result = kilowatch("fleet", "firmware", "check", *where)
    assert result.returncode == 1 and "no registered device matches" in result.stderr
