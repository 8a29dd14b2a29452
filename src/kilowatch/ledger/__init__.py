"""kilowatch.ledger: cumulative counters and interval messages become energy per 15-minute slot.

Rules: ``docs/energy-accounting.md``. Integer mWh per UTC-aligned slot; pure and deterministic.
"""

from kilowatch.ledger.ledger import Ledger
from kilowatch.ledger.spread import spread

__all__ = ["Ledger", "spread"]
