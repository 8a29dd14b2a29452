"""Local-day rollups (``Store.use_local_zone``): day and month answers in the site's zone read
them, and must equal the general path's, through a rebuild, later commits, a zone change and a
reopen, on every backend."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from kilowatch.errors import InvalidQueryError
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, Store, open_store
from kilowatch.testing.energy import DEVICES, T0, data, reference

WHOLE = (date(2026, 10, 23), date(2026, 11, 2))
"""Whole local days around Europe/Berlin's autumn change (the data's span)."""


async def check(store: Store, tz: str, slots: list[SlotEnergy], span: tuple[Any, Any]) -> int:
    """Every grouping and filter by day and by month over ``span`` equals the reference; returns
    how many rows were compared."""
    compared = 0
    for by in ("day", "month"):
        for group in ("channel", "device", "total"):
            for devices in ((), (DEVICES[2],)):
                query = EnergyQuery(
                    by=by,  # type: ignore[arg-type]
                    tz=tz,
                    start=span[0],
                    end=span[1],
                    devices=devices,
                    group=group,  # type: ignore[arg-type]
                )
                got = await store.energy(query)
                assert got == reference(query, slots), query
                compared += len(got)
    return compared


@pytest.mark.parametrize("tz", ["Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"])
async def test_local_days_equal_the_general_path(store: Store, tz: str) -> None:
    slots = data(11)
    half = len(slots) // 2
    await store.commit(Batch(slots=slots[:half]))
    await store.use_local_zone(tz, wait=True)  # rebuilt from what is stored
    assert await store.local_days_zone() == tz
    await store.commit(Batch(slots=slots[half:]))  # maintained by commits from now on
    assert await check(store, tz, slots, WHOLE) > 0
    # a range that does not start at local midnight, and another zone: the general path
    await check(store, tz, slots, (datetime(2026, 10, 24, 5, 30), date(2026, 11, 1)))
    await check(store, "America/St_Johns", slots, WHOLE)


async def test_changing_the_zone_rebuilds(store: Store) -> None:
    slots = data(12)
    await store.use_local_zone("Europe/Berlin", wait=True)
    await store.commit(Batch(slots=slots))
    await store.use_local_zone("America/St_Johns", wait=True)
    assert await store.local_days_zone() == "America/St_Johns"
    await check(store, "America/St_Johns", slots, WHOLE)
    # more energy, then back: the rebuild counts everything exactly once
    extra = [SlotEnergy(DEVICES[0], "switch:0", T0 + 900 * i, 5_000, 0) for i in range(0, 400, 7)]
    await store.commit(Batch(slots=extra))
    await store.use_local_zone("Europe/Berlin", wait=True)
    await store.use_local_zone("Europe/Berlin", wait=True)  # the same zone again: nothing to do
    await check(store, "Europe/Berlin", slots + extra, WHOLE)


async def test_zone_is_checked(store: Store) -> None:
    with pytest.raises(InvalidQueryError, match="unknown time zone"):
        await store.use_local_zone("Mars/Olympus")
    assert await store.local_days_zone() is None


async def test_reopen_keeps_the_zone_and_an_interrupted_rebuild_is_redone(store_url: str) -> None:
    slots = data(13)
    async with open_store(store_url) as store:
        await store.commit(Batch(slots=slots))
        await store.use_local_zone("Europe/Berlin", wait=True)
    async with open_store(store_url) as store:
        assert await store.local_days_zone() == "Europe/Berlin"
        await check(store, "Europe/Berlin", slots, WHOLE)
        await store.use_local_zone("Asia/Kathmandu")  # closed before the rebuild can finish
    async with open_store(store_url) as store:
        assert await store.local_days_zone() in (None, "Asia/Kathmandu")
        await store.use_local_zone("Asia/Kathmandu", wait=True)
        assert await store.local_days_zone() == "Asia/Kathmandu"
        await check(store, "Asia/Kathmandu", slots, WHOLE)


async def test_sqlite_day_queries_read_the_local_days(tmp_path: Path) -> None:
    """Proof that the local days answer (not the UTC rollups): with the UTC day and hour rollups
    wiped behind the store's back, day and month answers in the local zone stay right, and the
    same question in another zone (general path) loses the wiped energy."""
    slots = data(14)
    db = tmp_path / "k.db"
    async with open_store(f"sqlite:///{db}") as store:
        await store.commit(Batch(slots=slots))
        await store.use_local_zone("Europe/Berlin", wait=True)
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM days")
            conn.execute("DELETE FROM hours")
        await check(store, "Europe/Berlin", slots, WHOLE)
        query = EnergyQuery(by="day", tz="Europe/London", start=WHOLE[0], end=WHOLE[1])
        assert await store.energy(query) != reference(query, slots)
