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
5. Readings stamped on receipt (:meth:`Counter.receive`; rule 12 of the doc) are accepted at once
   only when they do not rise, or arrive at least ``ON_TIME_MS`` after the previous reading and
   are plausible, or are plausible and there is no anchor yet. Any other rise may be late (a
   broker's backlog arrives milliseconds apart): it is held, the newest holding all before it; a
   rise is confirmed by the next reading that continues it without rising or on time, a drop
   (reset) only by one on time. Confirmed energy belongs to the span since the *anchor*, the last
   reading known to be on time, and counts if it is plausible over that span. A held rise followed
   by a fall back to the accepted counter was a glitch. A reading in the newest one's millisecond
   is new if its counter is higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kilowatch.ledger.rules import (
    GAP_MS,
    MAX_JUMP_MS,
    MAX_POWER_W,
    ON_TIME_MS,
    ROUNDING_TOLERANCE_MWH,
)

Span = tuple[int, int, int, bool]
"""``(start ms, end ms, mWh, estimated)``: energy the counter proves for ``[start, end)``."""

_SLACK = ROUNDING_TOLERANCE_MWH * 3600
_TOL = ROUNDING_TOLERANCE_MWH


class Counter:
    """One counter's state: last accepted reading ``t``/``hwm``, an optional suspect and jump; for
    readings stamped on receipt, the anchor and whether the last accepted reading was late."""

    __slots__ = ("anchor", "grew", "hwm", "jt", "jv", "late", "st", "sv", "t")

    def __init__(
        self,
        t: int,
        hwm: int,
        suspect: tuple[int, int] | None = None,
        jump: tuple[int, int] | None = None,
        anchor: int | None = None,
        late: bool = False,
        grew: bool = False,
    ) -> None:
        self.t = t
        """Time (ms) of the last accepted reading."""
        self.hwm = hwm
        """High-water mark (mWh): the highest value counted since the last reset."""
        self.st: int | None = None
        """Held suspect reading (ms, mWh), see rules 4 and 5."""
        self.sv: int | None = None
        self.grew = grew
        """The held reading is a drop that later readings went on from (a reset, see rule 5)."""
        if suspect is not None:
            self.st, self.sv = suspect
        self.jt: int | None = None
        """Held far-ahead reading (ms, mWh), see rule 2."""
        self.jv: int | None = None
        if jump is not None:
            self.jt, self.jv = jump
        self.anchor = anchor
        """Readings stamped on receipt (rule 5): the time (ms) of the last reading known to be on
        time, from which a late reading's energy is spread. ``None``: the last accepted reading."""
        self.late = late
        """The last accepted reading was late, so it cannot become the anchor."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.t, "hwm": self.hwm}
        if self.st is not None:
            out["suspect"] = [self.st, self.sv, 1] if self.grew else [self.st, self.sv]
        if self.jt is not None:
            out["jump"] = [self.jt, self.jv]
        if self.anchor is not None:
            out["anchor"] = self.anchor
        if self.late:
            out["late"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counter:
        suspect = data.get("suspect")
        jump = data.get("jump")
        anchor = data.get("anchor")
        return cls(
            int(data["t"]),
            int(data["hwm"]),
            (int(suspect[0]), int(suspect[1])) if suspect else None,
            (int(jump[0]), int(jump[1])) if jump else None,
            int(anchor) if anchor is not None else None,
            data.get("late") is True,
            suspect is not None and len(suspect) > 2 and suspect[2] == 1,
        )

    def advance(self, t: int, v: int) -> Sequence[Span] | None:
        """Apply a reading stamped with the device's own time; the spans of energy it proves, or
        ``None`` when it changed nothing."""
        if self.st is None and self.jt is None:
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
                if self.anchor is not None:  # the device's own time: on time by definition
                    self.anchor, self.late = None, False
                if rise > 0:
                    self.hwm = v
                    return ((t0, t, rise, span > GAP_MS),)
                return ()
        return self._advance(t, v, False)

    def receive(self, t: int, v: int) -> Sequence[Span] | None:
        """Apply a reading stamped with the time kilowatch received it (rule 5)."""
        if self.st is None and self.jt is None:
            # Hot path (rules 1, 3 and 5 inlined): the next reading, on time.
            t0 = self.t
            span = t - t0
            rise = v - self.hwm
            if (
                ON_TIME_MS <= span <= MAX_JUMP_MS
                and rise >= -ROUNDING_TOLERANCE_MWH
                and rise * 3600 <= MAX_POWER_W * span + _SLACK
            ):
                if self.late:
                    self.late = False
                else:
                    self.anchor = t0
                self.t = t
                if rise > 0:
                    self.hwm = v
                    return ((t0, t, rise, span > GAP_MS),)
                return ()
        return self._advance(t, v, True)

    def _advance(self, t: int, v: int, received: bool) -> Sequence[Span] | None:
        st, sv = self.st, self.sv
        newest, top = (self.t, self.hwm) if st is None or sv is None else (st, sv)
        if t < newest or (t == newest and (not received or v <= top)) or t == self.jt:
            # Rule 1 (the held jump again is a duplicate too). A backlog arrives several readings
            # per millisecond: one stamped on receipt in the newest one's millisecond is new if
            # its counter is higher (rule 5).
            return None
        if t - newest > MAX_JUMP_MS:
            return self._jump(t, v, received)
        out: list[Span] = []
        self._step(t, v, out, received)
        jt, jv = self.jt, self.jv
        if jt is not None and jv is not None:
            newest = self.t if self.st is None else self.st
            if jt <= newest or jt - newest <= MAX_JUMP_MS:
                self.jt = self.jv = None
                if jt > newest:
                    self._step(jt, jv, out, received)  # time caught up with it: ordinary now
        return out

    def _jump(self, t: int, v: int, received: bool) -> Sequence[Span] | None:
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
            self._step(rt, rv, out, received)
        return out

    def _step(self, t: int, v: int, out: list[Span], received: bool) -> None:
        """Rules 3 to 5 for a reading newer than the newest (``t`` > last accepted and suspect)."""
        if self.st is not None:
            if received:
                self._decide_received(t, v, out)
            else:
                self._decide(t, v, out)
        elif received:
            self._step_received(t, v, out, self.t)
        elif _plausible(self.t, self.hwm, t, v):
            self._accept(t, v, out)
        else:
            self._hold(t, v)

    def _decide(self, t: int, v: int, out: list[Span]) -> None:
        st, sv = self.st, self.sv
        assert st is not None and sv is not None
        if _plausible(self.t, self.hwm, t, v):
            self.st = self.sv = None  # the suspect was a glitch
            self._accept(t, v, out)
        elif _plausible(st, sv, t, v):
            self.st = self.sv = None
            self._confirm(st, sv, out, False)
            self._accept(t, v, out)
        else:
            self._hold(t, v)

    def _accept(self, t: int, v: int, out: list[Span]) -> None:
        rise = v - self.hwm
        if rise > 0:
            out.append((self.t, t, rise, t - self.t > GAP_MS))
            self.hwm = v
        self.t = t
        self.anchor = None  # a reading stamped by the device itself is on time by definition
        self.late = False

    def _confirm(self, t: int, v: int, out: list[Span], received: bool) -> None:
        # A drop is a reset: the counter restarted at 0, so its value is the energy since the reset.
        # A rise counts if it is plausible from the anchor (late readings, rule 5); otherwise it
        # rose too fast to be energy: nothing is counted (re-based).
        t0 = self.t
        energy = v - self.hwm if v > self.hwm else v
        start = t0 if self.anchor is None else self.anchor
        span = t - start
        if energy > 0 and span > 0 and energy * 3600 <= MAX_POWER_W * span + _SLACK:
            # Late energy is estimated when its own stamps cannot hold it, like a gap (rule 7).
            estimated = span > GAP_MS or (received and energy * 3600 > MAX_POWER_W * (t - t0))
            out.append((start, t, energy, estimated))
        self.t, self.hwm = t, v
        self.late = received

    # -- readings stamped on receipt (rule 5) ----------------------------------------------------

    def _step_received(self, t: int, v: int, out: list[Span], since: int) -> None:
        """No reading is held; ``since`` is the time of the previous reading received."""
        rise = v - self.hwm
        if rise < -_TOL:
            self._hold(t, v)  # a drop: a reset or a glitch, decided later
        elif rise <= 0 or (
            # On time; or no reading to anchor to but the last one, so holding it could not place
            # it better: judged by rules 3 and 9 alone.
            (t - since >= ON_TIME_MS or self.anchor is None)
            and rise * 3600 <= MAX_POWER_W * (t - self.t) + _SLACK
        ):
            self._take(t, v, out, since)
        else:
            self._hold(t, v)  # a rise too soon or too fast: late, or a glitch

    def _decide_received(self, t: int, v: int, out: list[Span]) -> None:
        st, sv, hwm = self.st, self.sv, self.hwm
        assert st is not None and sv is not None
        on_time = t - st >= ON_TIME_MS and (v - sv) * 3600 <= MAX_POWER_W * (t - st) + _SLACK
        if sv > hwm:  # a rise is held
            if v >= sv - _TOL:  # continued: confirmed by a reading that does not rise, or on time
                if v <= sv or on_time:
                    self._release(st, sv, t, v, out)
                else:
                    self._hold(t, v)  # more of the backlog: the newest holds it all
            elif v >= hwm - _TOL:  # it rose, then fell back: a glitch
                self.st = self.sv = None
                self._step_received(t, v, out, st)
            else:  # below both: the rise was real (if it can be), then the counter was reset
                self.st = self.sv = None
                anchor = self.t if self.anchor is None else self.anchor
                if (sv - hwm) * 3600 <= MAX_POWER_W * (st - anchor) + _SLACK:
                    self._confirm(st, sv, out, True)
                self._hold(t, v)
        elif v >= hwm - _TOL:  # a drop is held and this continues the old counter: a glitch
            self.st = self.sv = None
            self._step_received(t, v, out, st)
        elif v >= sv - _TOL:  # it continues the drop: a reset, once a reading on time shows it
            if on_time:
                self._release(st, sv, t, v, out)
            else:
                # Replayed messages (redelivered after a crash, stamped anew) look like this too,
                # until they reach the old counter: so only a reading on time confirms a reset.
                self._hold(t, max(v, sv), grew=True)
        else:  # below it too: another reset; the first one is real if the counter went on from it
            if self.grew:
                self.st = self.sv = None
                self._confirm(st, sv, out, True)
            self._hold(t, v)

    def _hold(self, t: int, v: int, grew: bool = False) -> None:
        self.st, self.sv, self.grew = t, v, grew

    def _release(self, st: int, sv: int, t: int, v: int, out: list[Span]) -> None:
        """Confirm the held reading ``(st, sv)``, then take ``(t, v)`` after it."""
        self.st = self.sv = None
        self._confirm(st, sv, out, True)
        self._take(t, v, out, st)

    def _take(self, t: int, v: int, out: list[Span], since: int) -> None:
        """Accept a reading stamped on receipt; ``since``: the previous reading received."""
        if t - since >= ON_TIME_MS:
            # It came at a device's pace, so the reading before it was on time; unless that one
            # was late itself (a pause while a backlog is read): the anchor stays.
            if self.late:
                self.late = False
            else:
                self.anchor = self.t
        rise = v - self.hwm
        if rise > 0:
            out.append((self.t, t, rise, t - self.t > GAP_MS))
            self.hwm = v
        self.t = t


def _plausible(t0: int, v0: int, t: int, v: int) -> bool:
    rise = v - v0
    # mWh * 3600 / ms = W; the slack absorbs rounding of counters read a moment apart.
    return rise >= -ROUNDING_TOLERANCE_MWH and rise * 3600 <= MAX_POWER_W * (t - t0) + _SLACK


__all__ = ["Counter", "Span"]
