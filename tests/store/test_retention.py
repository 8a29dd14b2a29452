"""Retention (``Store.drop_slots_before``): old 15-minute slots go, hour/day/month answers stay,
and local days rebuilt afterwards still count the dropped slots' energy, on every backend."""

from __future__ import annotations

from datetime import UTC, date, datetime

from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, Store
from kilowatch.testing.energy import SPAN, T0, data, reference

WHOLE = (date(2026, 10, 23), date(2026, 11, 2))
CUT = T0 + 4 * 86400 + 1800  # rounded down to the hour by the store


def q(by: str, tz: str = "Europe/Berlin", group: str = "channel") -> EnergyQuery:
    return EnergyQuery(by=by, tz=tz, start=WHOLE[0], end=WHOLE[1], group=group)  # type: ignore[arg-type]


async def test_dropping_old_slots_keeps_hours_days_and_months(store: Store) -> None:
    slots = data(21)
    await store.commit(Batch(slots=slots))
    await store.use_local_zone("Europe/Berlin", wait=True)
    dropped = await store.drop_slots_before(CUT)
    cut = CUT - CUT % 3600
    assert dropped == len({(s.device, s.channel, s.slot) for s in slots if s.slot < cut})
    assert await store.drop_slots_before(CUT) == 0  # nothing left to drop
    # 15-minute answers start at the cut; everything coarser is untouched
    fine = await store.energy(q("15min"))
    assert fine == reference(q("15min"), [s for s in slots if s.slot >= cut])
    for by in ("hour", "day", "month"):
        for group in ("channel", "total"):
            assert await store.energy(q(by, group=group)) == reference(q(by, group=group), slots)
    # the general path in another whole-hour zone, and a local-day rebuild after the drop
    assert await store.energy(q("day", "America/New_York")) == reference(
        q("day", "America/New_York"), slots
    )
    await store.use_local_zone("Europe/London", wait=True)
    await store.use_local_zone("Europe/Berlin", wait=True)
    assert await store.energy(q("day")) == reference(q("day"), slots)
    assert await store.energy(q("month", group="device")) == reference(
        q("month", group="device"), slots
    )


async def test_dropping_before_everything_or_nothing(store: Store) -> None:
    assert await store.drop_slots_before(T0) == 0  # empty store
    slots = data(22)
    await store.commit(Batch(slots=slots))
    assert await store.drop_slots_before(T0) == 0
    end = int(datetime.fromtimestamp(T0 + SPAN, UTC).timestamp())
    assert await store.drop_slots_before(end) == len(slots)
    assert await store.energy(q("15min")) == []
    assert await store.energy(q("hour")) == reference(q("hour"), slots)
