"""``kilowatch fleet plan`` and ``kilowatch fleet apply``: the real command in a subprocess on
simulated devices registered in a real store, with a real mosquitto; exit 1 when one device
fails while the others succeed; the JSON report; a dry run writes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cliproc import run_kilowatch

from kilowatch.fleet.secrets import SecretBox
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration
from kilowatch.testing import MosquittoServer
from shellysim import Fleet, ha1_for

if TYPE_CHECKING:
    from conftest import Run

SCRIPT = "let who = '{{ device.name }}';\nprint(who);\n"


def profile_text(port: int) -> str:
    return f"""
[select]
match = ["room=lab"]

[mqtt]
server = "127.0.0.1:{port}"
topic_prefix = "lab/{{{{ device.id }}}}"
status_ntf = true

[system]
name = "{{{{ device.name }}}}"
tz = "Europe/Vienna"

[auth]
password = "generate"

[[scripts]]
name = "hello"
file = "hello.js"
"""


async def _register(url: str, fleet: Fleet, *, room: str = "lab") -> list[Registration]:
    regs = [
        Registration(
            device=dev.id,
            mac=dev.mac,
            model=dev.spec.model,
            address=f"127.0.0.1:{fleet.port(dev)}",
            transport="lan",
            credentials=dev.id,
            name=f"Meter {i}",
            room=room,
        )
        for i, dev in enumerate(fleet.devices)
    ]
    async with open_store(url) as store:
        await store.register(regs)
    return regs


async def test_plan_apply_report_and_a_device_offline(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    (tmp_path / "hello.js").write_text(SCRIPT)
    profile = tmp_path / "lab.toml"
    profile.write_text(profile_text(mosquitto.port))
    url = f"sqlite:///{tmp_path}/k.db"
    where = ["--store", url, "--data-dir", str(tmp_path / "data")]
    async with Fleet(devices=3, models=["pm1"], unprovisioned=True, tick_s=0.05) as fleet:
        await _register(url, fleet)
        ids = [d.id for d in fleet.devices]

        code, out, err = await run_kilowatch("fleet", "plan", str(profile), *where)
        assert code == 0, err
        assert "mqtt.server" in out and "sys.device.name" in out and "script:hello" in out
        assert "3 devices: 3 to change, 0 in sync, 0 not read" in out

        code, out, err = await run_kilowatch("fleet", "apply", str(profile), "--dry-run", *where)
        assert code == 0, err
        assert "3 planned" in out
        assert all(not d.config["mqtt"]["enable"] for d in fleet.devices)  # nothing written

        down = fleet.devices[2]
        down.fault_outage(3600)
        report = tmp_path / "report.json"
        code, out, err = await run_kilowatch(
            "fleet", "apply", str(profile), "--report", str(report), *where
        )
        assert code == 1, (out, err)
        body = json.loads(report.read_text())
        statuses = {d["device"]: d["status"] for d in body["devices"]}
        assert statuses == {ids[0]: "ok", ids[1]: "ok", ids[2]: "failed"}
        assert body["summary"]["ok"] == 2 and body["summary"]["failed"] == 1
        failed = next(d for d in body["devices"] if d["status"] == "failed")
        assert failed["error"]["type"] == "DeviceConnectionError" and failed["attempts"] > 1
        done = next(d for d in body["devices"] if d["status"] == "ok")
        assert done["steps"] == ["mqtt", "system", "scripts", "auth", "reboot", "verify"]
        assert done["error"] is None and done["seconds"] > 0
        for dev in fleet.devices[:2]:
            held = SecretBox.in_data_dir(tmp_path / "data").get(dev.id)
            assert held is not None and held.device_password is not None
            assert held.device_password not in out + err + report.read_text()
            assert dev.auth_ha1 == ha1_for(dev.id, held.device_password)
            assert dev.config["mqtt"]["topic_prefix"] == f"lab/{dev.id}"

        async with open_store(url) as store:
            registry = {r.device: r for r in await store.registry()}
        assert registry[ids[0]].prefix == f"lab/{ids[0]}" and registry[ids[2]].prefix is None
        scripts = {device: r.script for device, r in registry.items()}
        assert scripts[ids[2]] is None
        for dev in fleet.devices[:2]:
            (slot,) = dev.scripts.slots.values()
            held_script = scripts[dev.id]
            assert held_script is not None and held_script.name == "hello"
            assert held_script.script_id == slot.id and held_script.deployed_at
            assert held_script.sha256 == hashlib.sha256(slot.code.encode()).hexdigest()

        down.outage_until = 0.0  # back online: the next apply converges it, the rest unchanged
        code, out, err = await run_kilowatch(
            "fleet", "apply", str(profile), "--format", "json", "--concurrency", "2", *where
        )
        assert code == 0, err
        statuses = {d["device"]: d["status"] for d in json.loads(out)["devices"]}
        assert statuses == {ids[0]: "unchanged", ids[1]: "unchanged", ids[2]: "ok"}

        code, out, err = await run_kilowatch(
            "fleet", "plan", str(profile), "--format", "json", *where
        )
        assert code == 0, err
        assert all(p["changes"] == [] and p["error"] is None for p in json.loads(out))


async def test_select_and_what_is_refused(tmp_path: Path, kilowatch: Run) -> None:
    (tmp_path / "hello.js").write_text(SCRIPT)
    profile = tmp_path / "lab.toml"
    profile.write_text(profile_text(1883))
    url = f"sqlite:///{tmp_path}/k.db"
    where = ["--store", url, "--data-dir", str(tmp_path / "data")]
    async with Fleet(devices=2, models=["pm1"], unprovisioned=True, tick_s=0.05) as fleet:
        await _register(url, fleet, room="attic")
        # The profile's own [select] matches no device in the attic.
        code, _, err = await run_kilowatch("fleet", "plan", str(profile), *where)
        assert code == 1 and "no registered device matches room=lab" in err
        one = fleet.devices[0].id
        code, out, err = await run_kilowatch(
            "fleet", "plan", str(profile), "--select", f"id={one}", *where
        )
        assert code == 0, err
        assert one in out and fleet.devices[1].id not in out
    result = kilowatch("fleet", "plan", str(tmp_path / "nope.toml"), *where)
    assert result.returncode == 1 and "nope.toml: cannot read the profile" in result.stderr
    result = kilowatch("fleet", "apply", str(profile), "--select", "colour=red", *where)
    assert result.returncode == 1 and "unknown key 'colour'" in result.stderr
    result = kilowatch("fleet", "plan", str(profile), "--format", "yaml", *where)
    assert result.returncode == 1 and "--format" in result.stderr


async def test_an_unreadable_device_makes_plan_exit_1(tmp_path: Path) -> None:
    (tmp_path / "hello.js").write_text(SCRIPT)
    profile = tmp_path / "lab.toml"
    profile.write_text(profile_text(1883))
    url = f"sqlite:///{tmp_path}/k.db"
    where = ["--store", url, "--data-dir", str(tmp_path / "data")]
    async with Fleet(devices=2, models=["pm1"], unprovisioned=True, tick_s=0.05) as fleet:
        await _register(url, fleet)
        locked = fleet.devices[0]
        locked.auth_ha1 = ha1_for(locked.id, "not-known-to-kilowatch")
        code, out, err = await run_kilowatch(
            "fleet", "plan", str(profile), "--format", "json", *where
        )
        assert code == 1, (out, err)
        plans = {p["device"]: p for p in json.loads(out)}
        assert plans[locked.id]["error"]["type"] == "InvalidAuthError"
        assert plans[fleet.devices[1].id]["error"] is None
