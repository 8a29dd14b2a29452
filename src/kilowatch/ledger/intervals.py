"""Interval energy (the hourly metering script): counted once; corrections as deltas."""

from __future__ import annotations

from typing import Any

from kilowatch.ledger.rules import INTERVAL_WINDOW_S
from kilowatch.ledger.spread import spread

Parts = dict[int, list[int]]
"""slot start -> [import mWh, export mWh]."""


class IntervalMemory:
    """What one channel's intervals have contributed, for the last ``INTERVAL_WINDOW_S`` seconds.

    Keyed by interval start: a second message for the same start with the same end and energy is a
    repeat (nothing to add); with anything different it replaces the first (the delta is added).
    """

    __slots__ = ("newest", "seen")

    def __init__(
        self, newest: int | None = None, seen: dict[int, tuple[int, int, int]] | None = None
    ):
        self.newest = newest
        self.seen: dict[int, tuple[int, int, int]] = seen if seen is not None else {}
        """start -> (end, import mWh, export mWh)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "newest": self.newest,
            "seen": {str(start): list(value) for start, value in sorted(self.seen.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IntervalMemory:
        newest = data.get("newest")
        seen = {
            int(start): (int(v[0]), int(v[1]), int(v[2]))
            for start, v in data.get("seen", {}).items()
        }
        return cls(int(newest) if newest is not None else None, seen)

    def outside_window(self, start: int) -> bool:
        """True when ``start`` is too old to tell a first delivery from a replay."""
        return self.newest is not None and start < self.newest - INTERVAL_WINDOW_S

    def apply(self, start: int, end: int, imp: int, exp: int) -> Parts | None:
        """Record an interval; per-slot deltas to store, or ``None`` for an exact repeat."""
        new = (end, imp, exp)
        old = self.seen.get(start)
        if old == new:
            return None
        parts: Parts = {}
        _add(parts, start, end, imp, exp, 1)
        if old is not None:
            _add(parts, start, old[0], old[1], old[2], -1)
        self.seen[start] = new
        if self.newest is None or start > self.newest:
            self.newest = start
            horizon = start - INTERVAL_WINDOW_S
            for old_start in [s for s in self.seen if s < horizon]:
                del self.seen[old_start]
        return parts


def _add(parts: Parts, start: int, end: int, imp: int, exp: int, sign: int) -> None:
    for index, mwh in ((0, imp), (1, exp)):
        for slot, part in spread(mwh, start * 1000, end * 1000):
            parts.setdefault(slot, [0, 0])[index] += sign * part


__all__ = ["IntervalMemory", "Parts"]
