"""kilowatch.ledger: cumulative counters and interval messages become energy per 15-minute slot.

Rules: ``docs/energy-accounting.md``. Integer mWh per UTC-aligned slot; pure and deterministic.
"""

from kilowatch.ledger.ledger import ChannelKey, Ledger, LedgerStateError
from kilowatch.ledger.slots import SLOT_SECONDS, SlotEnergy, merge_slot_energy, slot_of
from kilowatch.ledger.spread import spread

__all__ = [
    "SLOT_SECONDS",
    "ChannelKey",
    "Ledger",
    "LedgerStateError",
    "SlotEnergy",
    "merge_slot_energy",
    "slot_of",
    "spread",
]
