"""One cumulative counter (import or export of one channel): readings in, energy spans out.

A reading is ``(t, v)``: time in integer ms, counter in integer mWh. The rules, in the order they
apply (docs/energy-accounting.md has a worked example of each):

1. A reading no newer than the newest one seen is redundant: ignored (duplicates, replays, late
   messages). The counter is cumulative, so a newer reading already holds all of it.
2. A reading more than ``MAX_JUMP_MS`` ahead is held as a *jump* until a second far reading within
   ``MAX_JUMP_MS`` of it confirms the new time, or until time catches up with it (the newest
   reading comes within ``MAX_JUMP_MS``: it is then an ordinary reading). Readings in between are
   processed normally.
3. A reading is *plausible* when the counter did not drop by more than ``ROUNDING_TOLERANCE_MWH``
   and did not rise faster than ``MAX_POWER_W``. A plausible reading is accepted: its rise above
   the high-water mark is energy for the span since the previous accepted reading; a small drop
   (rounding dip) counts nothing and leaves the high-water mark where it was.
4. An implausible reading is held as a *suspect*; the next newer reading decides. If that one is
   plausible from the last accepted reading, the suspect was a glitch and is dropped. If it is
   plausible from the suspect, the suspect is confirmed: a drop is a reset and the suspect's value
   is the energy since the reset; a rise too fast to be energy re-bases the counter uncounted.
   Otherwise the newer reading becomes the suspect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kilowatch.ledger.rules import GAP_MS, MAX_JUMP_MS, MAX_POWER_W, ROUNDING_TOLERANCE_MWH

Span = tuple[int, int, int, bool]
"""``(start ms, end ms, mWh, estimated)``: energy the counter proves for ``[start, end)``."""

_SLACK = ROUNDING_TOLERANCE_MWH * 3600


class Counter:
    """One counter's state: last accepted reading ``t``/``hwm``, an optional suspect and jump."""

    __slots__ = ("hwm", "jt", "jv", "st", "sv", "t")

    def __init__(
        self,
        t: int,
        hwm: int,
        suspect: tuple[int, int] | None = None,
        jump: tuple[int, int] | None = None,
    ) -> None:
        self.t = t
        """Time (ms) of the last accepted reading."""
        self.hwm = hwm
        """High-water mark (mWh): the highest value counted since the last reset."""
        self.st: int | None = None
        """Held suspect reading (ms, mWh), see rule 4."""
        self.sv: int | None = None
        if suspect is not None:
            self.st, self.sv = suspect
        self.jt: int | None = None
        """Held far-ahead reading (ms, mWh), see rule 2."""
        self.jv: int | None = None
        if jump is not None:
            self.jt, self.jv = jump

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.t, "hwm": self.hwm}
        if self.st is not None:
            out["suspect"] = [self.st, self.sv]
        if self.jt is not None:
            out["jump"] = [self.jt, self.jv]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counter:
        suspect = data.get("suspect")
        jump = data.get("jump")
        return cls(
            int(data["t"]),
            int(data["hwm"]),
            (int(suspect[0]), int(suspect[1])) if suspect else None,
            (int(jump[0]), int(jump[1])) if jump else None,
        )

    def advance(self, t: int, v: int) -> Sequence[Span] | None:
        """Apply one reading; the spans of energy it proves, or ``None`` when it changed nothing."""
        st = self.st
        if st is None and self.jt is None:
            # Hot path (rules 1 and 3 inlined): the next reading of a well-behaved counter.
            t0 = self.t
            if t <= t0:
                return None
            span = t - t0
            rise = v - self.hwm
            if (
                span <= MAX_JUMP_MS
                and rise >= -ROUNDING_TOLERANCE_MWH
                and rise * 3600 <= MAX_POWER_W * span + _SLACK
            ):
                self.t = t
                if rise > 0:
                    self.hwm = v
                    return ((t0, t, rise, span > GAP_MS),)
                return ()
        newest = self.t if st is None else st
        if t <= newest or t == self.jt:
            return None  # rule 1 (the held jump again is a duplicate too)
        if t - newest > MAX_JUMP_MS:
            return self._jump(t, v)
        out: list[Span] = []
        self._step(t, v, out)
        jt, jv = self.jt, self.jv
        if jt is not None and jv is not None:
            newest = self.t if self.st is None else self.st
            if jt <= newest or jt - newest <= MAX_JUMP_MS:
                self.jt = self.jv = None
                if jt > newest:
                    self._step(jt, jv, out)  # time caught up with it: an ordinary reading now
        return out

    def _jump(self, t: int, v: int) -> Sequence[Span] | None:
        jt, jv = self.jt, self.jv
        if jt is None or jv is None or abs(t - jt) > MAX_JUMP_MS:
            if jt is None or t > jt:
                self.jt, self.jv = t, v  # hold it (rule 2)
                return []
            return None  # older than the held one and far from it too: nothing to go on
        # Two far readings within a day of each other confirm the new time, in either order.
        self.jt = self.jv = None
        out: list[Span] = []
        for rt, rv in sorted(((jt, jv), (t, v))):
            self._step(rt, rv, out)
        return out

    def _step(self, t: int, v: int, out: list[Span]) -> None:
        """Rules 3 and 4 for a reading newer than the newest (``t`` > last accepted and suspect)."""
        if self.st is None:
            if _plausible(self.t, self.hwm, t, v):
                self._accept(t, v, out)
            else:
                self.st, self.sv = t, v
        else:
            self._decide(t, v, out)

    def _decide(self, t: int, v: int, out: list[Span]) -> None:
        st, sv = self.st, self.sv
        assert st is not None and sv is not None
        if _plausible(self.t, self.hwm, t, v):
            self.st = self.sv = None  # the suspect was a glitch
            self._accept(t, v, out)
        elif _plausible(st, sv, t, v):
            self.st = self.sv = None
            self._confirm(st, sv, out)
            self._accept(t, v, out)
        else:
            self.st, self.sv = t, v

    def _accept(self, t: int, v: int, out: list[Span]) -> None:
        rise = v - self.hwm
        if rise > 0:
            out.append((self.t, t, rise, t - self.t > GAP_MS))
            self.hwm = v
        self.t = t

    def _confirm(self, t: int, v: int, out: list[Span]) -> None:
        # A drop is a reset: the counter restarted at 0, so its value is the energy since the reset.
        # Otherwise the suspect rose too fast to be energy: nothing is counted (re-based).
        energy = v if v < self.hwm - ROUNDING_TOLERANCE_MWH else 0
        span = t - self.t
        if energy > 0 and energy * 3600 <= MAX_POWER_W * span + _SLACK:
            out.append((self.t, t, energy, span > GAP_MS))
        self.t, self.hwm = t, v


def _plausible(t0: int, v0: int, t: int, v: int) -> bool:
    rise = v - v0
    # mWh * 3600 / ms = W; the slack absorbs rounding of counters read a moment apart.
    return rise >= -ROUNDING_TOLERANCE_MWH and rise * 3600 <= MAX_POWER_W * (t - t0) + _SLACK


__all__ = ["Counter", "Span"]
