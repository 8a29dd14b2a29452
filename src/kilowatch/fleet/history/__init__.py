"""Backfill from device history (issue 13): a meter's own one-minute records (``EMData`` on a
Pro 3EM / 3EM-63, ``EM1Data`` on a Pro EM, EM Gen3, a 3EM in monophase profile) replace the slots
a gap left estimated (rule 7 of docs/energy-accounting.md) with measured energy, per phase and in
total, through :meth:`~kilowatch.store.Store.replace_estimated`; a second backfill changes
nothing. ``records`` is the pure part (answers → slots), ``backfill`` the I/O. See
docs/backfill.md.
"""

from __future__ import annotations

from kilowatch.fleet.history.backfill import (
    CONCURRENCY,
    NO_HISTORY,
    NOTHING_ESTIMATED,
    BackfillReport,
    backfill,
    backfill_fleet,
    fetch_records,
)
from kilowatch.fleet.history.records import (
    HISTORY_TYPES,
    RECORD_PERIOD_S,
    RECORDS_PER_SLOT,
    history_channels,
    history_components,
    merged_ranges,
    slot_energy_from_records,
)

__all__ = [
    "CONCURRENCY",
    "HISTORY_TYPES",
    "NOTHING_ESTIMATED",
    "NO_HISTORY",
    "RECORDS_PER_SLOT",
    "RECORD_PERIOD_S",
    "BackfillReport",
    "backfill",
    "backfill_fleet",
    "fetch_records",
    "history_channels",
    "history_components",
    "merged_ranges",
    "slot_energy_from_records",
]
