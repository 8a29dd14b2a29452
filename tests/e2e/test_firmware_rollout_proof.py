"""The firmware proof of issue 12 ("Fleet II"): a staged rollout on 100 simulated devices with
injected OTA failures halts at the limit; the devices already updated stay updated, the rest are
untouched; the report says which is which; a second rollout after the failures are cleared
finishes the rest and touches none of those already updated.

100 simulated Shellies (PM Mini Gen3, Plus 1PM, Pro 3EM, all on 1.4.4, offered 1.5.1 stable)
stand on their own loopback addresses, port 80, in 127.0.90.0/24, registered in a SQLite store
as discovery would leave them. Four of them fail every update half-way (``ota_error``): one in
wave 2, two in wave 3, one in wave 4. The rollout: canary 5, doubling (waves of 5, 10, 20, 40,
25), at most 2 failures. Wave 2 has one failure (allowed), wave 3 brings the third: the rollout
halts there, waves 4 and 5 never start. Every device is then asked (``Shelly.GetDeviceInfo``
over its own WebSocket) what it runs, and what it was sent is read from the simulator.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kilowatch.fleet.firmware import (
    Outcome,
    RolloutOptions,
    RolloutProgress,
    RolloutReport,
    rollout,
)
from kilowatch.fleet.rpc.lan import connect_lan, lan_session
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration, Store
from shellysim import Fleet

pytestmark = pytest.mark.slow

NET = "127.0.90.0/24"
DEVICES = 100
OLD, NEW = "1.4.4", "1.5.1"
FAILING = (7, 20, 30, 60)
"""Device indices whose updates fail: wave 2 is 5-14, wave 3 is 15-34, wave 4 is 35-74."""
OPTIONS = RolloutOptions(
    stage="stable", canary=5, max_failures=2, timeout_s=20.0, poll_s=0.1, concurrency=64
)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Fleet, Store, list[Registration]]]:
    async with (
        Fleet(devices=DEVICES, models=["pm1", "switch", "3em"], unprovisioned=True,
              engine=None, http_hosts=NET, tick_s=0.5, seed=90) as fleet,
        open_store(f"sqlite:///{tmp_path}/kw.db") as store,
    ):  # fmt: skip
        regs = [
            Registration(
                device=d.id,
                mac=d.mac,
                model=d.spec.model,
                gen=d.spec.gen,
                fw_ver=OLD,
                app=d.spec.app,
                address=fleet.address(d),
                transport="lan",
                credentials=d.id,
                discovered_by="scan",
            )
            for d in fleet.devices
        ]
        await store.register(regs)
        yield fleet, store, regs


async def versions(fleet: Fleet) -> dict[str, str]:
    """What every device says it runs, asked over its own WebSocket."""
    out = {}
    async with lan_session() as session:
        for dev in fleet.devices:
            async with await connect_lan(
                fleet.address(dev), session=session, device_id=dev.id
            ) as rpc:
                out[dev.id] = (await rpc.get_device_info())["ver"]
    return out


def by_outcome(report: RolloutReport) -> dict[Outcome, set[str]]:
    out: dict[Outcome, set[str]] = {}
    for d in report.devices:
        out.setdefault(d.outcome, set()).add(d.device)
    return out


async def test_a_staged_rollout_halts_at_the_limit_and_a_second_one_finishes(
    site: tuple[Fleet, Store, list[Registration]],
) -> None:
    fleet, store, regs = site
    ids = [d.id for d in fleet.devices]
    for i in FAILING:
        fleet.devices[i].fail_updates = True
    seen: list[RolloutProgress] = []

    began = time.monotonic()
    report = await rollout(
        store, regs, OPTIONS, secrets=None, mqtt=None, actor="cli:proof", on_progress=seen.append
    )
    first_s = time.monotonic() - began

    # the waves as planned, and where it stopped
    assert [len(w) for w in report.waves] == [5, 10, 20, 40, 25]
    assert report.halted and report.result == "halted"
    assert report.halt_reason is not None and "3 devices failed" in report.halt_reason
    groups = by_outcome(report)
    updated, failed, skipped = (
        groups.get(o, set()) for o in (Outcome.UPDATED, Outcome.FAILED, Outcome.SKIPPED)
    )
    assert failed == {ids[i] for i in FAILING[:3]}
    assert updated == set(ids[:35]) - failed  # waves 1-3
    assert skipped == set(ids[35:])  # waves 4 and 5 never started
    assert set(groups) == {Outcome.UPDATED, Outcome.FAILED, Outcome.SKIPPED}
    assert report.summary() == {
        "devices": 100, "updated": 32, "failed": 3, "skipped": 65, "up-to-date": 0,
        "offline": 0, "planned": 0,
    }  # fmt: skip
    for d in report.devices:
        if d.outcome is Outcome.FAILED:
            assert d.reason == "ota_error: Update failed: bad checksum" and d.after == OLD
        if d.outcome is Outcome.SKIPPED:
            assert d.wave in (4, 5) and d.reason and "halted" in d.reason and d.after == OLD
        if d.outcome is Outcome.UPDATED:
            assert (d.before, d.after, d.target) == (OLD, NEW, NEW) and d.wave in (1, 2, 3)

    # asked one by one: the updated stay updated, the rest still run the old firmware
    running = await versions(fleet)
    assert {i for i, v in running.items() if v == NEW} == updated
    assert {i for i, v in running.items() if v == OLD} == failed | skipped
    # and the untouched were never sent Shelly.Update; the others once, with the stage
    for dev in fleet.devices:
        expected = [] if dev.id in skipped else [{"stage": "stable"}]
        assert dev.update_requests == expected, dev.id

    # live progress: three waves announced, the halt told, the counts at the end
    assert [p.wave for p in seen if p.state == "wave"] == [1, 2, 3]
    assert seen[-1].state == "done" and seen[-1].halted
    last = {k: v for k, v in seen[-1].counts.items() if v}
    assert last == {"updated": 32, "failed": 3, "skipped": 65}

    # the registry knows who runs what; the audit log says it halted, and why
    registry = {r.device: r.fw_ver for r in await store.registry()}
    assert {d for d, v in registry.items() if v == NEW} == updated
    (end,) = [e for e in await store.audit() if e.result != "started"]
    assert (end.action, end.actor, end.result) == ("firmware.update", "cli:proof", "halted")
    assert set(end.detail["updated"]) == updated and set(end.detail["failed"]) == failed
    assert end.detail["max_failures"] == 2 and end.detail["summary"]["skipped"] == 65

    # the failures cleared, a second rollout finishes the rest and sends nothing to the updated
    for i in FAILING:
        fleet.devices[i].fail_updates = False
    second = await rollout(store, regs, OPTIONS, secrets=None, mqtt=None, actor="cli:proof")
    again = by_outcome(second)
    assert again[Outcome.UP_TO_DATE] == updated
    assert again[Outcome.UPDATED] == failed | skipped
    assert not second.halted and second.result == "ok" and not second.failed
    for dev in fleet.devices:
        sent = len(dev.update_requests)
        assert sent == (1 if dev.id in updated | skipped else 2), dev.id
    assert set((await versions(fleet)).values()) == {NEW}
    print(f"first rollout {first_s:.1f} s, second {second.seconds:.1f} s")
