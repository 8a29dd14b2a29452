"""The retention job reads the site's retention setting (as the Settings page saves it) and drops
the older 15-minute slots, keeping the hours."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.tariff import Tariff
from kilowatch.service.retention import prune_once, retention_days, run_retention
from kilowatch.store import Batch, open_store
from kilowatch.web.energy import report
from kilowatch.web.site import SiteSettings, save_site

DAY = 86400
NOW = 1_790_000_000 - 1_790_000_000 % DAY  # a UTC midnight in 2026
DEV = "shellyplugsg3-b0b0b0000001"


def ten_days() -> list[SlotEnergy]:
    """One Wh every 15 minutes for the ten days before NOW."""
    return [SlotEnergy(DEV, "switch:0", t, 1000, 0) for t in range(NOW - 10 * DAY, NOW, 900)]


async def test_prune_follows_the_site_setting(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        await store.commit(Batch(slots=ten_days()))
        assert await prune_once(store, NOW) is None  # no setting: keep forever
        await save_site(store, SiteSettings(tz="UTC", retention_days=3))
        assert await retention_days(store) == 3
        assert await prune_once(store, NOW) == 7 * 96
        hours = EnergyQuery(by="hour", tz="UTC", start=date(2026, 9, 1), end=date(2026, 10, 1))
        assert sum(r.energy_wh for r in await store.energy(hours)) == 10 * 96
        fine = EnergyQuery(by="15min", tz="UTC", start=date(2026, 9, 1), end=date(2026, 10, 1))
        assert len(await store.energy(fine)) == 3 * 96


@pytest.mark.parametrize("value", [None, 0, -3, "7", True, 2.5])
async def test_odd_settings_mean_keep_forever(tmp_path: Path, value: object) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        await store.put_meta("settings.site", {"tz": "UTC", "retention_days": value})
        assert await retention_days(store) is None


async def test_the_job_runs_until_cancelled(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        await store.commit(Batch(slots=ten_days()))
        await save_site(store, SiteSettings(tz="UTC", retention_days=1))
        job = asyncio.create_task(
            run_retention(store, clock=lambda: NOW, first_delay=0, interval=0.05)
        )
        fine = EnergyQuery(by="15min", tz="UTC", start=date(2026, 9, 1), end=date(2026, 10, 1))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(await store.energy(fine)) == 96:
                break
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert len(await store.energy(fine)) == 96


async def test_time_of_use_costs_survive_dropped_slots(tmp_path: Path) -> None:
    """Costs by day with a night price: the same before and after the slots are dropped (the
    hours carry the energy; the periods start and end on whole hours)."""
    tariff = Tariff.from_json(
        {"currency": "EUR", "price": 0.30,
         "periods": [{"start": "22:00", "end": "06:00", "price": 0.10}]}
    )  # fmt: skip
    query = EnergyQuery(by="day", tz="UTC", start=date(2026, 9, 1), end=date(2026, 10, 1))
    async with open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        await store.commit(Batch(slots=ten_days()))
        before = await report(store, query, tariff=tariff)
        assert before.costs is not None
        # a day: 8 night hours at 0.10 and 16 at 0.30 per kWh, 4 Wh an hour
        assert before.costs[0] == pytest.approx((8 * 0.10 + 16 * 0.30) * 0.004)
        await store.drop_slots_before(NOW)
        after = await report(store, query, tariff=tariff)
        assert after.costs == pytest.approx(before.costs)
