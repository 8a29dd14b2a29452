"""Split an amount of energy over the slots a time span covers, exactly, in integer mWh."""

from __future__ import annotations

from kilowatch.ledger.rules import SLOT_MS
from kilowatch.model.slots import SLOT_SECONDS


def spread(mwh: int, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """``(slot start in unix seconds, mWh)`` for each slot that ``[start_ms, end_ms)`` overlaps.

    Proportional to time, with the remainder placed deterministically: the energy up to each slot
    boundary ``b`` is ``floor(mwh * (b - start) / (end - start))`` and each slot gets the difference
    of its two boundaries, so the parts always add up to ``mwh`` exactly. Zero parts are left out.
    ``end_ms`` must be greater than ``start_ms``.
    """
    first = start_ms // SLOT_MS
    last = (end_ms - 1) // SLOT_MS
    if first == last:
        return [(first * SLOT_SECONDS, mwh)] if mwh else []
    duration = end_ms - start_ms
    out: list[tuple[int, int]] = []
    done = 0
    for k in range(first, last):
        upto = mwh * ((k + 1) * SLOT_MS - start_ms) // duration
        if upto != done:
            out.append((k * SLOT_SECONDS, upto - done))
            done = upto
    if mwh != done:
        out.append((last * SLOT_SECONDS, mwh - done))
    return out


__all__ = ["spread"]
