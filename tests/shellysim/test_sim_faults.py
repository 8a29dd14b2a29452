"""Fault plans applied by a fleet at simulated instants."""

from __future__ import annotations

import asyncio

from kilowatch.testing import MosquittoServer
from shellysim import Fleet, LoadKind
from shellysim.faults import Fault, FaultKind, chaos_plan

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def test_chaos_plan_is_deterministic_and_bounded() -> None:
    ids = [f"dev-{i}" for i in range(20)]
    plan = chaos_plan(ids, start=T0, end=T0 + 86400, seed=4)
    assert plan == chaos_plan(ids, start=T0, end=T0 + 86400, seed=4)
    assert plan != chaos_plan(ids, start=T0, end=T0 + 86400, seed=5)
    assert all(T0 <= f.at < T0 + 86400 for f in plan) and plan == sorted(plan)
    reboots = [f for f in plan if f.kind is FaultKind.REBOOT]
    assert sorted(f.device for f in reboots) == sorted(ids)  # one reboot per device and day
    assert {f.seconds for f in plan if f.kind is FaultKind.OUTAGE} <= {1800.0}
    assert any(f.kind is FaultKind.COUNTER_RESET for f in plan)


async def test_fleet_applies_a_plan(mosquitto: MosquittoServer) -> None:
    fleet = Fleet(devices=2, models=["pm1"], broker=mosquitto.url, speed=600, start=T0,
                  engine=None, tick_s=0.05, loads=[(LoadKind.BASE,)])  # fmt: skip
    a, b = (d.id for d in fleet.devices)
    fleet.faults = [
        Fault(T0 + 300, a, FaultKind.REBOOT),
        Fault(T0 + 300, b, FaultKind.DUPLICATES, 600),
        Fault(T0 + 600, a, FaultKind.CLOCK_SKEW, 90),
        Fault(T0 + 900, b, FaultKind.OUTAGE, 1200),
        Fault(T0 + 1200, a, FaultKind.COUNTER_RESET),
    ]
    for dev in fleet.devices:
        dev.boot_time_s = 0.05
    async with fleet:
        dev_a, dev_b = fleet.devices
        totals: list[float] = []
        dev_a.add_sink(
            lambda m, p: (
                totals.append(p["pm1:0"]["aenergy"]["total"])
                if "aenergy" in p.get("pm1:0", {})
                else None
            )
        )
        await fleet.wait_connected()
        await fleet.wait_until(T0 + 420)
        assert dev_b.duplicate_publishes
        assert (await dev_a.call("Sys.GetStatus", None))["uptime"] < 200  # rebooted at +300
        await fleet.wait_until(T0 + 1000)
        assert not dev_b.duplicate_publishes and dev_a.skew == 90
        assert not dev_b.network_up() and not fleet.mqtt[b].connected()
        await fleet.wait_until(T0 + 1300)
        # the reset is reported as the counter falling back to zero
        first_positive = next(i for i, t in enumerate(totals) if t > 0)
        assert 0.0 in totals[first_positive:]
        await fleet.wait_until(T0 + 2200)
        async with asyncio.timeout(10):
            while not fleet.mqtt[b].connected():  # back after the outage
                await asyncio.sleep(0.02)
