"""repair_from_hours (real SQLite and Redis stores) and the Repairer (SQLite): the script's hours
replace the estimated slots of their hour; what cannot be attributed or does not add up is left
alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kilowatch.intake.live import LiveHub
from kilowatch.ledger import Ledger
from kilowatch.model.messages import Interval, Reading
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.repair import Repairer, repair_from_hours
from kilowatch.store import Batch, Registration, Store, open_store

H = 1_773_100_800  # a full UTC hour (2026-03-10 00:00)
Q = 900


def slot(
    device: str, channel: str, start: int, imp: int, exp: int = 0, est: bool = False
) -> SlotEnergy:
    return SlotEnergy(device, channel, start, imp, exp, est)


def hourly(device: str, hour: int, imp: int, exp: int = 0) -> list[SlotEnergy]:
    """The four even quarters the ledger writes for a script hour (rule 8)."""
    share_i, share_e = imp // 4, exp // 4
    return [
        slot(device, "hourly", hour + i * Q, share_i if i < 3 else imp - 3 * share_i,
             share_e if i < 3 else exp - 3 * share_e)
        for i in range(4)
    ]  # fmt: skip


async def hours_of(
    store: Store, device: str, start: int, end: int
) -> dict[int, tuple[float, bool]]:
    rows = await store.energy(
        EnergyQuery(
            by="hour",
            tz="UTC",
            start=datetime.fromtimestamp(start, UTC),
            end=datetime.fromtimestamp(end, UTC),
            devices=(device,),
            group="device",
        )
    )
    return {int(r.start.timestamp()): (round(r.energy_wh * 1000), r.estimated) for r in rows}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/k.db"
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_script_hours_replace_estimates(store_url: str) -> None:
    async with open_store(store_url) as store:
        pm = "shellypmminig3-000000000001"
        em = "shellyproem50-000000000002"
        tem = "shellypro3em-000000000003"
        rows: list[SlotEnergy] = []
        # pm: hour H measured in its first quarter (100), three estimated quarters (50 each);
        # the script says the hour was 1000 and returned 7. Hour H+1 fully estimated, script 400.
        rows += [slot(pm, "pm1:0", H, 100)]
        rows += [slot(pm, "pm1:0", H + i * Q, 50, 0, True) for i in (1, 2, 3)]
        rows += [slot(pm, "pm1:0", H + 3600 + i * Q, 50, 0, True) for i in range(4)]
        rows += hourly(pm, H, 1000, 7) + hourly(pm, H + 3600, 401)
        # hour H+2: estimated, measured part above the script's hour: inconsistent
        rows += [slot(pm, "pm1:0", H + 7200, 500), slot(pm, "pm1:0", H + 7200 + Q, 1, 0, True)]
        rows += hourly(pm, H + 7200, 300)
        # hour H+3: estimated but no script hour: stays estimated
        rows += [slot(pm, "pm1:0", H + 3 * 3600, 9, 0, True)]
        # Pro EM: two top-level channels, the script's sum cannot be split: skipped
        rows += [slot(em, "em1:0", H, 5, 0, True), slot(em, "em1:1", H, 5), *hourly(em, H, 90)]
        # Pro 3EM: em:0 is repaired, its phases never
        rows += [slot(tem, "em:0", H + i * Q, 30, 0, True) for i in range(4)]
        rows += [slot(tem, "em:0/a", H + i * Q, 10, 0, True) for i in range(4)]
        rows += hourly(tem, H, 222)
        # hour H+4: estimated; the script said 0 Wh, which leaves no slot, only ledger memory
        rows += [slot(pm, "pm1:0", H + 4 * 3600 + i * Q, 25, 0, True) for i in range(4)]
        ledger = Ledger({})
        assert ledger.add_interval(Interval(pm, "hourly", H + 4 * 3600, H + 5 * 3600, 0.0)) == []
        await store.commit(Batch(slots=rows, ledger_states=ledger.take_dirty_states()))

        report = await repair_from_hours(store, start=H, end=H + 5 * 3600)
        assert report.hours == 4 and report.slots == 3 + 4 + 4 + 4
        assert await hours_of(store, pm, H + 4 * 3600, H + 5 * 3600) == {H + 4 * 3600: (0, False)}
        assert report.inconsistent == 1
        assert report.skipped_devices == [em]
        got = await hours_of(store, pm, H, H + 4 * 3600)
        assert got[H] == (1000, False) and got[H + 3600] == (401, False)
        assert got[H + 7200][1] is True and got[H + 3 * 3600] == (9, True)
        left = await store.estimated_slots(start=H, end=H + 4 * 3600)
        assert (pm, "pm1:0", H + Q) not in left and (tem, "em:0", H) not in left
        assert (tem, "em:0/a", H) in left and (em, "em1:0", H) in left
        quarters = await store.energy(
            EnergyQuery(
                by="15min", tz="UTC", start=datetime.fromtimestamp(H, UTC),
                end=datetime.fromtimestamp(H + 3600, UTC), devices=(pm,), channels=("pm1:0",),
            )
        )  # fmt: skip
        assert [round(r.energy_wh * 1000) for r in quarters] == [100, 300, 300, 300]
        assert [round(r.returned_energy_wh * 1000) for r in quarters] == [0, 2, 2, 3]
        again = await repair_from_hours(store, start=H, end=H + 5 * 3600)
        assert again.slots == 0 and again.hours == 0, "idempotent: nothing estimated is left"


async def test_repairer_backfills_registered_devices_and_backs_off(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path}/k.db") as store:
        good, bad = "shellypro3em-0000000000a1", "shellypro3em-0000000000a2"
        await store.commit(Batch(slots=[slot(d, "em:0/a", H, 10, 0, True) for d in (good, bad)]))
        await store.register([Registration(good), Registration(bad)])
        calls: list[str] = []
        now = [H + 3600.0]

        async def backfill(reg: Registration, start: int, end: int) -> int | None:
            calls.append(reg.device)
            assert start <= H < end
            if reg.device == bad:
                raise OSError("unreachable")
            return await store.replace_estimated([slot(reg.device, "em:0/a", H, 12)])

        repairer = Repairer(store, backfill=backfill, backoff_s=60, clock=lambda: now[0])
        first = await repairer.repair_once()
        assert sorted(calls) == [good, bad]
        assert first.slots_from_history == 1 and first.backfill_failures == 1
        calls.clear()
        await repairer.repair_once()
        assert calls == [], "the good one is repaired, the bad one backs off"
        now[0] += 61
        await repairer.repair_once()
        assert calls == [bad]
        assert repairer.stats.passes == 3 and repairer.stats.backfill_failures == 2


async def test_a_device_coming_back_wakes_the_repairer(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path}/k.db") as store:
        hub = LiveHub()
        repairer = Repairer(store, interval_s=100.0)
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(repairer.run())
            watcher = tg.create_task(repairer.watch(hub, gap_s=900, delay_s=0.05))
            await asyncio.sleep(0.1)
            assert repairer.stats.passes == 1  # the first pass, at start
            dev = "shellypmminig3-000000000001"
            hub.publish([Reading(dev, "pm1:0", H), Reading(dev, "pm1:0", H + 60)])
            await asyncio.sleep(0.3)
            assert repairer.stats.passes == 1, "no gap: no extra pass"
            hub.publish([Reading(dev, "pm1:0", H + 60 + 7200)])  # back after two hours
            async with asyncio.timeout(5):
                while repairer.stats.passes < 2:
                    await asyncio.sleep(0.02)
            runner.cancel()
            watcher.cancel()
