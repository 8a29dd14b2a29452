"""Slots: the unit of energy accounting.

Energy is kept per UTC-aligned 15-minute slot in integer milliwatt-hours (mWh). Every real time zone
offset is a multiple of 15 minutes, so local hours, days and months are exact sums of slots, 23- and
25-hour DST days included; integers never drift when summed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kilowatch.model.messages import fast_frozen_init

ChannelKey = tuple[str, str]
"""(device id, channel name)."""

SLOT_SECONDS = 900
"""15 minutes: the greatest common divisor of all real UTC offsets (e.g. +05:45 Nepal, +12:45
Chatham)."""


def slot_of(ts: float) -> int:
    """Start (unix seconds) of the slot that contains instant ``ts``."""
    return int(ts // SLOT_SECONDS) * SLOT_SECONDS


@fast_frozen_init  # the ledger makes one per reading: a faster __init__, same class
@dataclass(frozen=True, slots=True)
class SlotEnergy:
    """Energy to *add* to one slot of one channel (a delta; corrections may be negative).

    ``estimated`` is sticky: once a slot holds estimated energy (spread across a gap), it stays
    marked.
    """

    device: str
    channel: str
    slot: int
    import_mwh: int
    export_mwh: int
    estimated: bool = False


def merge_slot_energy(rows: Iterable[SlotEnergy]) -> list[SlotEnergy]:
    """Sum deltas of the same device, channel and slot into one row (``estimated`` OR-ed).

    Rows keep the order in which their slot first appears; rows that sum to nothing and are not
    estimated are dropped. Use it to write one row per slot for a whole batch.
    """
    acc: dict[tuple[str, str, int], list[int]] = {}
    for row in rows:
        key = (row.device, row.channel, row.slot)
        sums = acc.get(key)
        if sums is None:
            acc[key] = [row.import_mwh, row.export_mwh, row.estimated]
        else:
            sums[0] += row.import_mwh
            sums[1] += row.export_mwh
            sums[2] = sums[2] or row.estimated
    return [
        SlotEnergy(device, channel, slot, imp, exp, bool(est))
        for (device, channel, slot), (imp, exp, est) in acc.items()
        if imp or exp or est
    ]


__all__ = ["SLOT_SECONDS", "SlotEnergy", "merge_slot_energy", "slot_of"]
