"""Issue 9, hole 2: a 2 kW Gen1 meter reporting every 30 s while kilowatch is down.

Its readings carry no time: each is stamped when kilowatch receives it. While kilowatch is down the
broker keeps them; when it is back they arrive as a backlog, fractions of a millisecond apart, in
runs between the store's commits, mixed at the end with what the meter reports meanwhile. Before
rule 12 (docs/energy-accounting.md) the ledger lost 83% of the outage's energy after 10 hours and
96% after 48; after 2 hours it kept it but put 4.4 kWh into one slot.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pytest

from kilowatch.ledger import Ledger
from kilowatch.model.messages import Reading
from kilowatch.model.slots import SLOT_SECONDS

H = 1720717200
DEVICE, CHANNEL = "shellyplug-s-C18B12", "relay/0"
POWER_W = 2000
PERIOD_S = 30
STEP_MWH = POWER_W * PERIOD_S * 1000 // 3600  # one report's energy, 16 666 mWh
SLOT_MWH = POWER_W * SLOT_SECONDS * 1000 // 3600  # what 2 kW uses in a slot: 500 000 mWh


@dataclass
class Outage:
    hours: int
    pause_s: float = 0.1
    """How long kilowatch stops reading after each run of the backlog (a commit)."""
    stall_at: int | None = None
    """Before this reading of the backlog, kilowatch stops reading for 2 s (a slow commit)."""


def deliveries(outage: Outage) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """``(received at, counter Wh)`` of every report: an hour on time, ``outage.hours`` kept by the
    broker, then the backlog (runs of 20 readings 0.2 ms apart) and two hours on time; and the
    span the broker held, ``(kilowatch stopped, kilowatch back)``."""
    down, back = H + 3600, H + 3600 + outage.hours * 3600
    out: list[tuple[float, float]] = []
    t, wh, previous, queued = H + 7.3, 1000.0, 0.0, 0
    while t < back + 2 * 3600:
        at = t + 0.05  # network latency
        if down <= t < back or previous >= at:  # kept by the broker, then read as a backlog
            at = max(back, previous + 0.0002)
            queued += 1
            if queued % 20 == 0:
                at += outage.pause_s
            if queued == outage.stall_at:
                at += 2.0
        out.append((at, round(wh, 3)))
        previous = at
        t += PERIOD_S
        wh += POWER_W * PERIOD_S / 3600
    return out, (down, back)


def account(stream: list[tuple[float, float]]) -> dict[int, tuple[int, bool]]:
    """slot -> (mWh, estimated), as a store would hold them."""
    ledger, slots = Ledger(), defaultdict(lambda: (0, False))
    for at, wh in stream:
        reading = Reading(DEVICE, CHANNEL, at, energy_wh=wh, stamped_on_receipt=True)
        for row in ledger.add_reading(reading):
            mwh, est = slots[row.slot]
            slots[row.slot] = (mwh + row.import_mwh, est or row.estimated)
    return dict(slots)


OUTAGES = [Outage(2), Outage(10), Outage(48), Outage(10, stall_at=500), Outage(48, pause_s=0.5)]


@pytest.mark.parametrize("outage", OUTAGES, ids=lambda o: f"{o}")
def test_a_backlog_is_counted_whole_and_spread_over_the_outage(outage: Outage) -> None:
    stream, (down, back) = deliveries(outage)
    slots = account(stream)
    # Every mWh the counter rose is stored.
    assert sum(mwh for mwh, _ in slots.values()) == round(stream[-1][1] * 1000) - round(
        stream[0][1] * 1000
    )
    # No slot holds more than 2 kW can use in it, but for the backlog's own spread: its last
    # readings are stamped when they arrive, later than they were taken, so the first reading on
    # time after them covers less than a period (one report's energy at most).
    assert max(mwh for mwh, _ in slots.values()) <= SLOT_MWH + STEP_MWH
    # The outage's energy is where the outage was: every slot it covers holds about 2 kW's worth.
    last_before = max(at for at, _ in stream if at < down)
    inside = [s for s in slots if s >= last_before + SLOT_SECONDS and s + SLOT_SECONDS <= back]
    assert len(inside) >= outage.hours * 4 - 2
    for slot in inside:
        assert abs(slots[slot][0] - SLOT_MWH) <= SLOT_MWH // 100, slot - H
    # Estimated exactly where the backlog's energy went: the slots from the last reading before
    # the outage to the end of the backlog; every other slot is measured.
    backlog_end = max(at for at, _ in stream if at - back < 60)
    for slot, (mwh, estimated) in slots.items():
        late = last_before < slot + SLOT_SECONDS and slot <= backlog_end
        assert estimated == late, (slot - H, mwh)
        if not late:
            assert mwh <= SLOT_MWH + 1


def test_without_the_mark_the_outage_is_lost() -> None:
    """The same stream without ``stamped_on_receipt``: what the ledger did before rule 12 (and
    still does with a device's own times, which are never a backlog's): most of it re-based away."""
    stream, (down, back) = deliveries(Outage(10))
    ledger, total = Ledger(), 0
    for at, wh in stream:
        rows = ledger.add_reading(Reading(DEVICE, CHANNEL, at, energy_wh=wh))
        total += sum(r.import_mwh for r in rows)
    lost = round(stream[-1][1] * 1000) - round(stream[0][1] * 1000) - total
    assert lost > 0.8 * (back - down) * POWER_W / 3.6
