"""Known energy for store tests: random slots around a DST change, and the answer any store must
give for them, computed from the raw slots by the general per-cell path (no rollups)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.grouping import Cells, add, rows
from kilowatch.query.periods import plan

DEVICES = ("shellyplugsg3-b0b0b0000001", "shellyplugsg3-b0b0b0000002", "shellypro3em-a0b1c2d3e4f5")
CHANNELS = {
    DEVICES[0]: ("switch:0",),
    DEVICES[1]: ("switch:0",),
    DEVICES[2]: ("em:0", "em:1"),
}
T0 = int(datetime(2026, 10, 23, tzinfo=UTC).timestamp())
"""Start of the data: three days before Europe/Berlin's autumn DST change."""
SPAN = 10 * 86400
"""Length of the data: into the next month."""


def data(seed: int) -> list[SlotEnergy]:
    """Random slots (some gaps, some estimated, some export) of every channel."""
    rng = random.Random(seed)
    out = []
    for device, channels in CHANNELS.items():
        for channel in channels:
            for t in range(T0, T0 + SPAN, 900):
                if rng.random() < 0.6:
                    continue  # a gap: buckets without data are omitted
                out.append(
                    SlotEnergy(
                        device,
                        channel,
                        t,
                        rng.randrange(0, 40_000),
                        rng.choice((0, 0, rng.randrange(0, 5_000))),
                        rng.random() < 0.01,
                    )
                )
    return out


def reference(query: EnergyQuery, slots: list[SlotEnergy]) -> list[EnergyRow]:
    """The general path, from the raw slots: cells per channel and bucket, then ``rows``."""
    p = plan(query.by, query.tz, query.start, query.end)
    cells: Cells = {}
    for s in slots:
        if query.devices and s.device not in query.devices:
            continue
        if query.channels and s.channel not in query.channels:
            continue
        if p.start <= s.slot < p.end:
            add(cells, s.device, s.channel, p.key(s.slot), s.import_mwh, s.export_mwh, s.estimated)
    return rows(p, query, cells)


__all__ = ["CHANNELS", "DEVICES", "SPAN", "T0", "data", "reference"]
