"""Slots: the unit of energy accounting.

Energy is kept per UTC-aligned 15-minute slot in integer milliwatt-hours (mWh). Every real time zone
offset is a multiple of 15 minutes, so local hours, days and months are exact sums of slots, 23- and
25-hour DST days included; integers never drift when summed.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_SECONDS = 900
"""15 minutes: the greatest common divisor of all real UTC offsets (e.g. +05:45 Nepal, +12:45 Chatham)."""


def slot_of(ts: float) -> int:
    """Start (unix seconds) of the slot that contains instant ``ts``."""
    return int(ts // SLOT_SECONDS) * SLOT_SECONDS


@dataclass(frozen=True, slots=True)
class SlotEnergy:
    """Energy to *add* to one slot of one channel (a delta; corrections may be negative).

    ``estimated`` is sticky: once a slot holds estimated energy (spread across a gap), it stays marked.
    """

    device: str
    channel: str
    slot: int
    import_mwh: int
    export_mwh: int
    estimated: bool = False


__all__ = ["SLOT_SECONDS", "SlotEnergy", "slot_of"]
