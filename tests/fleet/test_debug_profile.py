"""Turning a device's debug log over MQTT on (and off) through a profile, against simulated
devices: planned as a change when it differs, applied with one ``Sys.SetConfig``, verified, and a
second apply writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kilowatch.errors import FleetError
from kilowatch.fleet.apply import Status
from kilowatch.fleet.plan import Step
from kilowatch.fleet.profile import parse_profile

from .test_plan_apply import Lab, lab_of


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with lab_of(tmp_path, 2) as lab:
        yield lab


async def test_debug_mqtt_is_planned_applied_verified_and_idempotent(
    lab: Lab, tmp_path: Path
) -> None:
    on = parse_profile(tmp_path / "debug.toml", "[system]\ndebug_mqtt = true\n", env={})
    plans = await lab.plan(on)
    for plan in plans:
        assert plan.error is None
        assert [str(c) for c in plan.changes] == ["sys.debug.mqtt.enable: false → true"]
        assert plan.changes[0].step is Step.SYSTEM and plan.steps == (Step.SYSTEM,)
    assert lab.writes() == [], "a plan only reads"

    report = await lab.apply(on)
    assert report.summary()["ok"] == 2, report.to_json()
    for result in report.devices:
        assert result.status is Status.OK and result.steps == ("system", "verify")
    assert lab.writes() == ["Sys.SetConfig", "Sys.SetConfig"]
    for dev in lab.fleet.devices:
        debug = dev.config["sys"]["debug"]
        assert debug["mqtt"] == {"enable": True}
        assert debug["websocket"] == {"enable": False} and debug["level"] == 2, "only that key"

    lab.sent.clear()
    again = await lab.apply(on)
    assert again.summary()["unchanged"] == 2 and lab.writes() == []
    assert all(p.changes == () for p in await lab.plan(on))

    off = parse_profile(tmp_path / "debug.toml", "[system]\ndebug_mqtt = false\n", env={})
    assert [str(c) for c in (await lab.plan(off))[0].changes] == [
        "sys.debug.mqtt.enable: true → false"
    ]
    assert (await lab.apply(off)).summary()["ok"] == 2
    assert all(not d.config["sys"]["debug"]["mqtt"]["enable"] for d in lab.fleet.devices)


def test_the_key_takes_only_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"system\.debug_mqtt must be true or false"):
        parse_profile(tmp_path / "p.toml", '[system]\ndebug_mqtt = "yes"\n', env={})
    system = parse_profile(tmp_path / "p.toml", "[system]\n", env={}).system
    assert system is None or system.debug_mqtt is None, "left out: left as the device has it"
