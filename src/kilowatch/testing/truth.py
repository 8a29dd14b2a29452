"""The simulator's ground truth against what a store holds: energy per device, channel and UTC day.

The Shelly simulator (``shellysim``, ``Fleet(truth_path=...)``) writes what every channel physically
consumed and returned per 15-minute slot, ``{device: {channel: {slot start: [import Wh, export
Wh]}}}`` (docs/simulator.md, "Ground truth"). These helpers read that file and a store's UTC day
totals into one shape, ``(device, channel) → [import Wh, export Wh]`` per day, and compare them.
They read the simulator's JSON only: this package never imports the simulator.

Used by the end-to-end truth test (tests/e2e) and bench/faults.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from kilowatch.query.energy import EnergyQuery, EnergyRow

DAY = timedelta(days=1)

Truth = dict[str, dict[str, dict[str, list[float]]]]
"""The simulator's truth file: device → channel → slot start (unix seconds, as text) → [import
Wh, export Wh]."""
Counters = dict[tuple[str, str], list[float]]
"""``(device, channel) → [import Wh, export Wh]``."""


class EnergySource(Protocol):
    """What the helpers need of a store (every :class:`~kilowatch.store.Store` is one)."""

    async def energy(self, query: EnergyQuery) -> list[EnergyRow]: ...


def read_truth(path: Path) -> Truth:
    """The truth file the simulator wrote at ``path``."""
    truth: Truth = json.loads(path.read_text())
    return truth


def truth_days(truth: Truth, start: datetime, end: datetime) -> dict[datetime, Counters]:
    """Every channel's truth summed per UTC day, for the days from ``start`` (a UTC midnight) up
    to ``end``. A channel without slots in a day has no entry for that day."""
    first, last = start.timestamp(), end.timestamp()
    out: dict[datetime, Counters] = {}
    for device, channels in truth.items():
        for channel, slots in channels.items():
            for slot, (imported, exported) in slots.items():
                t = int(slot)
                if first <= t < last:
                    day = start + DAY * int((t - first) // DAY.total_seconds())
                    row = out.setdefault(day, {}).setdefault((device, channel), [0.0, 0.0])
                    row[0] += imported
                    row[1] += exported
    return out


async def stored_days(
    store: EnergySource, start: datetime, end: datetime, *, devices: tuple[str, ...] = ()
) -> dict[datetime, Counters]:
    """What ``store`` holds per channel and UTC day from ``start`` up to ``end`` (midnights);
    ``devices``: only these (empty: every device)."""
    query = EnergyQuery(by="day", tz="UTC", start=start, end=end, devices=devices)
    out: dict[datetime, Counters] = {}
    for r in await store.energy(query):
        day = r.start.astimezone(UTC)
        out.setdefault(day, {})[(str(r.device), str(r.channel))] = [
            r.energy_wh,
            r.returned_energy_wh,
        ]
    return out


def differences(
    truth: Counters, stored: Counters, losses: Counters | None = None
) -> dict[tuple[str, str], tuple[float, float]]:
    """``stored − (truth − losses)`` per channel (import, export), over the channels of either;
    ``losses``: energy known to be unrecoverable (docs/demo.md, "What cannot match")."""
    out = {}
    for key in sorted(set(truth) | set(stored)):
        t = truth.get(key, [0.0, 0.0])
        s = stored.get(key, [0.0, 0.0])
        lost = (losses or {}).get(key, [0.0, 0.0])
        out[key] = (s[0] - (t[0] - lost[0]), s[1] - (t[1] - lost[1]))
    return out


def mismatches(
    truth: Counters, stored: Counters, losses: Counters | None = None, *, tolerance: float = 1.0
) -> list[str]:
    """One line per channel whose stored import or export differs from the truth (less the
    ``losses``) by more than ``tolerance`` Wh; empty when every channel agrees."""
    bad = []
    for key, diff in differences(truth, stored, losses).items():
        if any(abs(d) > tolerance for d in diff):
            t = truth.get(key, [0.0, 0.0])
            s = stored.get(key, [0.0, 0.0])
            lost = (losses or {}).get(key, [0.0, 0.0])
            bad.append(
                f"{key[0]} {key[1]}: truth {t[0]:.3f}/{t[1]:.3f} Wh, "
                f"stored {s[0]:.3f}/{s[1]:.3f} Wh, known loss {lost[0]:.3f}/{lost[1]:.3f}"
            )
    return bad


__all__ = [
    "Counters",
    "EnergySource",
    "Truth",
    "differences",
    "mismatches",
    "read_truth",
    "stored_days",
    "truth_days",
]
