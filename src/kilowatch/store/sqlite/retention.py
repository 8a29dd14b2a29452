"""Retention: the 15-minute slots older than a cut dropped, channel by channel (hours, days and
local days stay: see docs/storage.md, Retention)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.store.sqlite.connection import transaction

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


__all__ = ["DROP_CHANNELS_PER_JOB", "drop_slots"]
