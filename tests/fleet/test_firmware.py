"""Firmware check and rollout against simulated devices: offers read, the stage sent explicitly,
up-to-date devices left alone, ``ota_error`` and timeouts failing a device with their reason,
offline devices, halting, dry runs, the audit log, Gen1 over HTTP and Gen2 over MQTT."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kilowatch.errors import RpcCallError
from kilowatch.fleet.firmware import (
    FirmwareStatus,
    RolloutOptions,
    RolloutProgress,
    RolloutReport,
    check_firmware,
    plan_waves,
    rollout,
)
from kilowatch.fleet.rpc.base import ShellyRpc, Transport
from kilowatch.fleet.rpc.lan import connect_lan, lan_session
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration, Store
from kilowatch.testing import MosquittoServer
from kilowatch.testing.servers import free_port
from shellysim import Fleet, ha1_for
from shellysim.gen1http import BETA_FW, STABLE_FW, Gen1HttpPlug

OLD, STABLE, BETA = "1.4.4", "1.5.1", "1.6.0-beta2"
FAST = {"poll_s": 0.05, "timeout_s": 5.0, "check_timeout_s": 2.0}
GEN1_HOST = "127.0.90.201"
"""The Gen1 plug's own address (port 80, as the device): this module's subnet is 127.0.90.0/24."""


def registration(fleet: Fleet, i: int) -> Registration:
    dev = fleet.devices[i]
    return Registration(
        device=dev.id,
        mac=dev.mac,
        model=dev.spec.model,
        gen=dev.spec.gen,
        fw_ver=OLD,
        address=f"127.0.0.1:{fleet.port(dev)}",
        transport="lan",
        credentials=dev.id,
    )


@dataclass
class Lab:
    fleet: Fleet
    store: Store
    box: SecretBox
    regs: list[Registration]
    seen: list[RolloutProgress] = field(default_factory=list)

    async def rollout(self, regs: list[Registration] | None = None, **kw: object) -> RolloutReport:
        options = RolloutOptions(**{**FAST, **kw})  # type: ignore[arg-type]
        return await rollout(
            self.store, self.regs if regs is None else regs, options, secrets=self.box,
            mqtt=None, actor="cli:tester", on_progress=self.seen.append,
        )  # fmt: skip


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with (
        Fleet(devices=4, models=["pm1"], unprovisioned=True, engine=None, tick_s=0.05) as fleet,
        open_store(f"sqlite:///{tmp_path}/kw.db") as store,
    ):
        regs = [registration(fleet, i) for i in range(4)]
        await store.register(regs)
        yield Lab(fleet, store, SecretBox(tmp_path / "secrets.json"), regs)


def outcomes(report: RolloutReport) -> list[str]:
    return [d.outcome.value for d in report.devices]


# --- pure ------------------------------------------------------------------------------------


def test_waves_start_with_the_canary_then_double_or_take_the_wave_size() -> None:
    assert plan_waves(20, canary=1, wave_size=None) == [1, 2, 4, 8, 5]
    assert plan_waves(10, canary=3, wave_size=None) == [3, 6, 1]
    assert plan_waves(10, canary=2, wave_size=5) == [2, 5, 3]
    assert plan_waves(0, canary=5, wave_size=None) == []
    assert plan_waves(2, canary=5, wave_size=None) == [2]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"stage": "nightly"}, "unknown stage 'nightly'"),
        ({"canary": 0}, "canary must be 1 or more"),
        ({"wave_size": 0}, "wave size must be 1 or more"),
        ({"max_failures": -1}, "max failures must be 0 or more"),
        ({"timeout_s": 0}, "must be positive"),
    ],
)
def test_bad_options_are_refused_with_what_is_wrong(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RolloutOptions(**kw)  # type: ignore[arg-type]


# --- check -----------------------------------------------------------------------------------


async def test_check_reads_versions_and_offers_and_says_why_a_device_was_not_read(
    lab: Lab,
) -> None:
    locked = lab.fleet.devices[1]
    locked.auth_ha1 = ha1_for(locked.id, "secret")
    offline = Registration(device="shellyplus1pm-gone", gen=2, address=f"127.0.0.1:{free_port()}")
    found = await check_firmware(
        lab.store, [*lab.regs[:2], offline], secrets=lab.box, mqtt=None, concurrency=2
    )
    assert found[0] == FirmwareStatus(
        lab.regs[0].device, model="S3PM-001PCEU16", gen=3, current=OLD, stable=STABLE, beta=BETA
    )
    assert found[1].error_type == "InvalidAuthError" and "password" in (found[1].error or "")
    assert not found[1].offline
    assert found[2].offline and found[2].error_type == "DeviceConnectionError"
    assert found[2].current is None and found[2].to_json()["error"]

    # with the password kilowatch holds, the locked device is read too
    lab.box.put(locked.id, DeviceSecrets(device_password="secret"))
    again = await check_firmware(lab.store, lab.regs[1:2], secrets=lab.box, mqtt=None)
    assert again[0].error is None and again[0].stable == STABLE

    # what was read is kept: the device record's available update
    record = await lab.store.device(lab.regs[0].device)
    assert record is not None and record.available_update == STABLE and record.fw_ver == OLD


class NoUpdateServer:
    """A real transport, except that ``Shelly.CheckForUpdate`` fails as on a device that cannot
    reach the update server."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    @property
    def label(self) -> str:
        return self.inner.label

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        if method == "Shelly.CheckForUpdate":
            raise RpcCallError(self.label, method, -114, "Failed to fetch update info")
        return await self.inner.call(method, params, timeout=timeout)

    async def close(self) -> None:
        await self.inner.close()


async def test_without_the_update_server_the_offers_of_the_last_daily_check_are_used(
    lab: Lab,
) -> None:
    @asynccontextmanager
    async def opener(reg: Registration) -> AsyncIterator[ShellyRpc]:
        assert reg.address is not None
        async with lan_session() as session:
            lan = await connect_lan(reg.address, session=session, device_id=reg.device)
            async with ShellyRpc(NoUpdateServer(lan.transport)) as rpc:
                yield rpc

    found = await check_firmware(None, lab.regs[:1], secrets=None, mqtt=None, opener=opener)
    assert (found[0].current, found[0].stable, found[0].beta) == (OLD, STABLE, BETA)


# --- rollout ---------------------------------------------------------------------------------


async def test_rollout_sends_the_stage_and_a_second_rollout_sends_nothing(lab: Lab) -> None:
    report = await lab.rollout(canary=1)
    assert outcomes(report) == ["updated"] * 4 and not report.failed and report.result == "ok"
    assert [len(w) for w in report.waves] == [1, 2, 1]
    assert [d.wave for d in report.devices] == [1, 2, 2, 3]
    first = report.devices[0]
    assert (first.before, first.after, first.target) == (OLD, STABLE, STABLE)
    for dev in lab.fleet.devices:
        assert dev.update_requests == [{"stage": "stable"}]
        assert dev.ver == STABLE
    # progress: every device went through updating to its outcome, waves were announced
    states = {(p.device, p.state) for p in lab.seen}
    assert all((d.id, "updating") in states and (d.id, "updated") in states
               for d in lab.fleet.devices)  # fmt: skip
    assert [p.wave for p in lab.seen if p.state == "wave"] == [1, 2, 3]
    assert lab.seen[-1].state == "done" and lab.seen[-1].counts["updated"] == 4
    assert any(p.state == "progress" for p in lab.seen)  # the WebSocket's ota_progress events

    second = await lab.rollout(canary=1)
    assert outcomes(second) == ["up-to-date"] * 4 and second.waves == ()
    assert all(d.update_requests == [{"stage": "stable"}] for d in lab.fleet.devices)

    # the registry and the device records know the new version; both rollouts are audited
    assert {r.fw_ver for r in await lab.store.registry()} == {STABLE}
    entries = await lab.store.audit()
    ends = [e for e in entries if e.action == "firmware.update" and e.result != "started"]
    assert [e.result for e in ends] == ["ok", "ok"]
    assert all(e.actor == "cli:tester" and e.detail["stage"] == "stable" for e in ends)


async def test_beta_is_asked_for_by_name_and_installed(lab: Lab) -> None:
    report = await lab.rollout(regs=lab.regs[:1], stage="beta")
    assert outcomes(report) == ["updated"] and report.devices[0].after == BETA
    dev = lab.fleet.devices[0]
    assert dev.update_requests == [{"stage": "beta"}]
    assert dev.device_info()["ver"] == BETA
    assert dev.sys_status()["available_updates"] == {}
    # stable is behind beta: nothing newer is offered there
    assert outcomes(await lab.rollout(regs=lab.regs[:1])) == ["up-to-date"]


async def test_an_ota_error_fails_the_device_with_its_reason_and_halts(lab: Lab) -> None:
    lab.fleet.devices[1].fail_updates = True
    began = time.monotonic()
    report = await lab.rollout(canary=1, max_failures=0, timeout_s=30.0)
    assert time.monotonic() - began < 10  # the event failed it, not the 30 s bound
    assert outcomes(report) == ["updated", "failed", "updated", "skipped"]
    failed = report.devices[1]
    assert failed.reason == "ota_error: Update failed: bad checksum"
    assert (failed.before, failed.after) == (OLD, OLD)
    assert report.halted and report.result == "halted" and report.failed
    assert report.halt_reason is not None and "1 device failed" in report.halt_reason
    skipped = report.devices[3]
    assert skipped.reason and "halted" in skipped.reason
    assert lab.fleet.devices[3].update_requests == [] and lab.fleet.devices[3].ver == OLD
    assert lab.seen[-1].halted


async def test_a_device_that_does_not_finish_in_time_fails_with_a_timeout(lab: Lab) -> None:
    lab.fleet.devices[0].ota_step_s = 2.0  # ten seconds of download
    report = await lab.rollout(regs=lab.regs[:1], timeout_s=0.5)
    assert outcomes(report) == ["failed"]
    reason = report.devices[0].reason or ""
    assert reason.startswith("timeout: still on 1.4.4") and "expected 1.5.1" in reason


async def test_devices_not_read_are_reported_and_do_not_count_as_failures(lab: Lab) -> None:
    gone = Registration(device="shellyplus1pm-gone", gen=2, address=f"127.0.0.1:{free_port()}")
    locked = lab.fleet.devices[2]
    locked.auth_ha1 = ha1_for(locked.id, "secret")  # and kilowatch does not hold it
    report = await lab.rollout(regs=[gone, lab.regs[2], *lab.regs[:2]], max_failures=0)
    assert outcomes(report) == ["offline", "failed", "updated", "updated"]
    assert not report.halted and report.result == "partial" and report.failed
    assert report.devices[0].wave is None and report.devices[0].reason
    assert report.devices[1].wave is None and "password" in (report.devices[1].reason or "")
    assert locked.update_requests == []


async def test_a_dry_run_plans_the_waves_and_sends_nothing(lab: Lab) -> None:
    report = await lab.rollout(canary=2, dry_run=True)
    assert outcomes(report) == ["planned"] * 4
    assert [d.wave for d in report.devices] == [1, 1, 2, 2]
    assert all(d.update_requests == [] for d in lab.fleet.devices)
    assert await lab.store.audit() == []  # nothing done, nothing audited
    body = report.to_json()
    assert body["dry_run"] and body["summary"]["planned"] == 4


async def test_max_failures_lets_a_rollout_go_on_until_exceeded(lab: Lab) -> None:
    for dev in lab.fleet.devices[:2]:
        dev.fail_updates = True
    report = await lab.rollout(canary=1, wave_size=1, max_failures=1)
    # the first failure is allowed, the second halts: the rest never start
    assert outcomes(report) == ["failed", "failed", "skipped", "skipped"]
    assert report.halted and lab.fleet.devices[2].update_requests == []
    for dev in lab.fleet.devices[:2]:
        dev.fail_updates = False
    again = await lab.rollout(canary=4)
    assert outcomes(again) == ["updated"] * 4 and again.result == "ok"


# --- Gen1 ------------------------------------------------------------------------------------


async def test_gen1_check_and_rollout_over_http(tmp_path: Path) -> None:
    async with (
        Fleet(devices=0) as fleet,
        Gen1HttpPlug(host=GEN1_HOST, clock=fleet.clock, seed=90) as plug,
        open_store(f"sqlite:///{tmp_path}/kw.db") as store,
    ):
        reg = Registration(device=plug.id, gen=1, address=plug.address, transport="lan")
        found = await check_firmware(store, [reg], secrets=None, mqtt=None)
        assert (found[0].model, found[0].gen, found[0].current) == ("SHPLG-S", 1, "1.14.0")
        assert (found[0].stable, found[0].beta) == ("1.14.1", "1.15.0-beta1")

        options = RolloutOptions(stage="stable", **FAST)  # type: ignore[arg-type]
        plug.fail_next_update = True
        report = await rollout(store, [reg], options, secrets=None, mqtt=None, actor="cli:t")
        assert outcomes(report) == ["failed"]
        assert "still on 1.14.0" in (report.devices[0].reason or "")

        report = await rollout(store, [reg], options, secrets=None, mqtt=None, actor="cli:t")
        assert outcomes(report) == ["updated"] and report.devices[0].after == "1.14.1"
        assert plug.fw == STABLE_FW and plug.update_requests[-1] == {"update": "true"}

        beta = RolloutOptions(stage="beta", **FAST)  # type: ignore[arg-type]
        report = await rollout(store, [reg], beta, secrets=None, mqtt=None, actor="cli:t")
        assert outcomes(report) == ["updated"] and plug.fw == BETA_FW
        assert plug.update_requests[-1] == {"beta": "true"}


# --- over MQTT -------------------------------------------------------------------------------


async def test_rollout_over_mqtt_watches_the_devices_events(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    async with (
        Fleet(devices=2, engine=None, http=False, broker=mosquitto.url, seed=9012) as fleet,
        MqttRpc("127.0.0.1", mosquitto.port) as mqtt,
        open_store(f"sqlite:///{tmp_path}/kw.db") as store,
    ):
        await fleet.wait_connected()
        regs = [
            Registration(device=d.id, gen=d.spec.gen, prefix=d.id, transport="mqtt")
            for d in fleet.devices
        ]
        fleet.devices[1].fail_updates = True
        seen: list[RolloutProgress] = []
        options = RolloutOptions(canary=2, max_failures=5, **FAST)  # type: ignore[arg-type]
        began = time.monotonic()
        report = await rollout(
            store, regs, options, secrets=None, mqtt=mqtt, actor="cli:t", on_progress=seen.append
        )
        assert outcomes(report) == ["updated", "failed"]
        assert report.devices[1].reason == "ota_error: Update failed: bad checksum"
        assert time.monotonic() - began < 4.0
        assert any(p.state == "progress" and p.device == regs[0].device for p in seen)
        assert fleet.devices[0].ver == STABLE and report.result == "partial"


async def test_a_failing_progress_callback_does_not_stop_the_rollout(lab: Lab) -> None:
    def broken(progress: RolloutProgress) -> None:
        raise RuntimeError("the display broke")

    options = RolloutOptions(**FAST)  # type: ignore[arg-type]
    report = await rollout(
        lab.store, lab.regs[:2], options, secrets=None, mqtt=None, actor="cli:t",
        on_progress=broken,
    )  # fmt: skip
    assert outcomes(report) == ["updated", "updated"]
