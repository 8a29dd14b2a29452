"""Retention: the 15-minute slots older than a cut dropped, channel by channel (hours, days and
local days stay: see docs/storage.md, Retention); then the power minutes, audit entries, events
and log lines older than the cut."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.store.sqlite import auditlog, journal
from kilowatch.store.sqlite.connection import transaction
from kilowatch.store.sqlite.power import drop_power

DROP_CHANNELS_PER_JOB = 50
"""Channels whose old slots one writer job drops (commits go on between jobs)."""


def drop_slots(conn: sqlite3.Connection, channels: Sequence[tuple[str, str]], cut: int) -> int:
    """Retention for some channels in one transaction: one primary-key range each."""
    dropped = 0
    with transaction(conn):
        for device, channel in channels:
            dropped += conn.execute(
                "DELETE FROM slots WHERE device = ? AND channel = ? AND slot < ?",
                (device, channel, cut),
            ).rowcount
    return dropped


def drop_records(conn: sqlite3.Connection, cut: int) -> None:
    """Retention of everything kept by time but energy, in one transaction: power minutes, audit
    entries, events and log lines older than ``cut``."""
    with transaction(conn):
        drop_power(conn, cut)
        auditlog.drop_before(conn, cut)
        journal.drop_before(conn, "events", cut)
        journal.drop_before(conn, "logs", cut)


__all__ = ["DROP_CHANNELS_PER_JOB", "drop_records", "drop_slots"]
