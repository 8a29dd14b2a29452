"""The ledger: cumulative counters and interval messages in, energy per 15-minute slot out.

Pure and deterministic: no clock, no I/O. The rules are in ``docs/energy-accounting.md``, the
numbers in :mod:`kilowatch.ledger.rules`, the per-counter logic in :mod:`kilowatch.ledger.counter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kilowatch.errors import LedgerStateError
from kilowatch.ledger.counter import Counter, Span
from kilowatch.ledger.intervals import IntervalMemory
from kilowatch.ledger.rules import (
    MAX_COUNTER_WH,
    MAX_INTERVAL_S,
    MAX_POWER_W,
    MAX_TS,
    MIN_TS,
    ROUNDING_TOLERANCE_MWH,
    SLOT_MS,
)
from kilowatch.ledger.spread import spread
from kilowatch.model.slots import SLOT_SECONDS, ChannelKey, SlotEnergy

if TYPE_CHECKING:
    from kilowatch.model.messages import Interval, Reading

STATE_VERSION = 1


class _Channel:
    __slots__ = ("exp", "imp", "intervals")

    def __init__(self) -> None:
        self.imp: Counter | None = None
        self.exp: Counter | None = None
        self.intervals: IntervalMemory | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": STATE_VERSION}
        if self.imp is not None:
            out["import"] = self.imp.to_json()
        if self.exp is not None:
            out["export"] = self.exp.to_json()
        if self.intervals is not None:
            out["intervals"] = self.intervals.to_json()
        return out

    @classmethod
    def from_json(cls, key: ChannelKey, data: Mapping[str, Any]) -> _Channel:
        if data.get("version") != STATE_VERSION:
            raise LedgerStateError(
                key, f"version {data.get('version')!r}, expected {STATE_VERSION}"
            )
        ch = cls()
        try:
            if "import" in data:
                ch.imp = Counter.from_json(data["import"])
            if "export" in data:
                ch.exp = Counter.from_json(data["export"])
            if "intervals" in data:
                ch.intervals = IntervalMemory.from_json(data["intervals"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise LedgerStateError(key, f"{type(err).__name__}: {err}") from err
        return ch


class Ledger:
    """Turns readings and intervals into :class:`SlotEnergy` deltas; one state per channel.

    ``Ledger(states)`` continues exactly where the ledger that produced ``states`` (via
    :meth:`take_dirty_states`) stopped. ``rejected`` counts inputs refused as absurd, by reason.
    """

    def __init__(self, states: Mapping[ChannelKey, dict[str, Any]] | None = None) -> None:
        self._channels: dict[ChannelKey, _Channel] = {}
        self._dirty: set[ChannelKey] = set()
        self.rejected: dict[str, int] = {}
        for key, state in (states or {}).items():
            self._channels[key] = _Channel.from_json(key, state)

    def add_reading(self, reading: Reading) -> list[SlotEnergy]:
        """Account a reading's counters ``energy_wh``, ``returned_energy_wh`` (either may be None).

        Returns the energy to add per slot: empty for a first, duplicate or old reading...
        """
        if reading.energy_wh is None and reading.returned_energy_wh is None:
            return []  # power, voltage... only: nothing to account
        ts = reading.ts
        if not MIN_TS <= ts < MAX_TS:  # also refuses NaN
            self._reject("timestamp_out_of_range")
            return []
        t = round(ts * 1000)
        key = (reading.device, reading.channel)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel()
        changed = False
        spans_i = spans_e = None
        received = reading.stamped_on_receipt  # rule 12: its time is when it arrived
        wh = reading.energy_wh
        if wh is not None:
            if 0.0 <= wh <= MAX_COUNTER_WH:
                c = ch.imp
                if c is None:
                    ch.imp = Counter(t, round(wh * 1000))  # first reading: baseline only
                    changed = True
                elif received:
                    spans_i = c.receive(t, round(wh * 1000))
                    changed = spans_i is not None
                else:
                    spans_i = c.advance(t, round(wh * 1000))
                    changed = spans_i is not None
            else:
                self._reject("counter_out_of_range")
        wh = reading.returned_energy_wh
        if wh is not None:
            if 0.0 <= wh <= MAX_COUNTER_WH:
                c = ch.exp
                if c is None:
                    ch.exp = Counter(t, round(wh * 1000))
                    changed = True
                elif received:
                    spans_e = c.receive(t, round(wh * 1000))
                    changed = changed or spans_e is not None
                else:
                    spans_e = c.advance(t, round(wh * 1000))
                    changed = changed or spans_e is not None
            else:
                self._reject("counter_out_of_range")
        if changed:
            self._dirty.add(key)
        if not spans_e:
            if not spans_i:
                return []
            if len(spans_i) == 1:  # hot path: one span of the import counter inside one slot
                a, b, mwh, est = spans_i[0]
                k = a // SLOT_MS
                if k == (b - 1) // SLOT_MS:
                    return [SlotEnergy(key[0], key[1], k * SLOT_SECONDS, mwh, 0, est)]
        return _rows(key, spans_i, spans_e)

    def add_interval(self, interval: Interval) -> list[SlotEnergy]:
        """Account energy measured over ``[start, end)`` (the hourly script's channel ``hourly``).

        A repeat adds nothing; a different value for the same start replaces the earlier one (the
        returned deltas may be negative). Intervals older than the memory window are rejected.
        """
        start, end = interval.start, interval.end
        if not (MIN_TS <= start < end <= start + MAX_INTERVAL_S and end < MAX_TS):
            self._reject("interval_invalid")
            return []
        start, end = int(start), int(end)
        imp = _interval_mwh(interval.energy_wh, end - start)
        exp = _interval_mwh(interval.returned_energy_wh or 0.0, end - start)
        if imp is None or exp is None:
            self._reject("interval_invalid")
            return []
        key = (interval.device, interval.channel)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel()
        if ch.intervals is None:
            ch.intervals = IntervalMemory()
        if ch.intervals.outside_window(start):
            self._reject("interval_outside_window")
            return []
        parts = ch.intervals.apply(start, end, imp, exp)
        if parts is None:
            return []
        self._dirty.add(key)
        device, channel = key
        return [
            SlotEnergy(device, channel, slot, i, e)
            for slot, (i, e) in sorted(parts.items())
            if i or e
        ]

    def take_dirty_states(self) -> dict[ChannelKey, dict[str, Any]]:
        """JSON-able states of channels changed since the last call; save them with the deltas."""
        dirty, self._dirty = self._dirty, set()
        return {key: self._channels[key].to_json() for key in dirty}

    def state(self, device: str, channel: str) -> dict[str, Any] | None:
        """The current state of one channel (for inspection and tests), or ``None`` if unknown."""
        ch = self._channels.get((device, channel))
        return ch.to_json() if ch is not None else None

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def _interval_mwh(wh: float, seconds: int) -> int | None:
    if not 0.0 <= wh <= MAX_COUNTER_WH:
        return None
    mwh = round(wh * 1000)
    if mwh * 3600 > MAX_POWER_W * seconds * 1000 + ROUNDING_TOLERANCE_MWH * 3600:
        return None  # more than MAX_POWER_W on average: not energy
    return mwh


def _rows(
    key: ChannelKey, spans_i: Sequence[Span] | None, spans_e: Sequence[Span] | None
) -> list[SlotEnergy]:
    device, channel = key
    acc: dict[int, list[Any]] = {}
    for index, spans in ((0, spans_i), (1, spans_e)):
        for a, b, mwh, est in spans or ():
            for slot, part in spread(mwh, a, b):
                row = acc.get(slot)
                if row is None:
                    row = acc[slot] = [0, 0, False]
                row[index] += part
                row[2] = row[2] or est
    return [
        SlotEnergy(device, channel, slot, row[0], row[1], row[2])
        for slot, row in sorted(acc.items())
    ]


__all__ = ["Ledger"]
