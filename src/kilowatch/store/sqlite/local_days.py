"""Energy per local day of the site's zone (``Store.use_local_zone``): the zone, kept in
``local_zone``, and each channel's ``local_days``, rebuilt from its slots (and hours) when the zone
changes.

Commits keep the local days of the zone from the moment it is set (:mod:`.commit`); a rebuild fills
in the past, one channel per writer job, and marks the zone ready when every channel is done.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from kilowatch.query.periods import LocalDays, plan
from kilowatch.store.sqlite.buckets import key_sql
from kilowatch.store.sqlite.connection import transaction


def stored_zone(conn: sqlite3.Connection) -> tuple[str, bool] | None:
    """The zone whose local days are kept, and whether they are complete; ``None``: no zone."""
    found = conn.execute("SELECT zone, ready FROM local_zone").fetchone()
    return None if found is None else (found[0], bool(found[1]))


def start_zone(conn: sqlite3.Connection, tz: str) -> None:
    """``tz`` becomes the zone, not ready, and every local day is dropped (to be rebuilt), in one
    transaction."""
    with transaction(conn):
        conn.execute("DELETE FROM local_zone")
        conn.execute("INSERT INTO local_zone VALUES (?, 0)", (tz,))
        conn.execute("DELETE FROM local_days")


def mark_ready(conn: sqlite3.Connection, tz: str) -> None:
    """Every channel's local days of ``tz`` are built: queries may read them."""
    conn.execute("UPDATE local_zone SET ready = 1 WHERE zone = ?", (tz,))


def rebuild_channel(conn: sqlite3.Connection, days: LocalDays, device: str, channel: str) -> None:
    """One channel's local days, recomputed in one transaction (in the writer: no commit can slip
    between the delete and the insert): from its slots, and from its hours before its first slot
    (the hours whose slots retention dropped: see :func:`.retention.drop_slots`)."""
    key = (device, channel)
    lo, hi = conn.execute(
        "SELECT min(slot), max(slot) FROM slots WHERE device = ? AND channel = ?", key
    ).fetchone()
    first_hour = lo // 3600 * 3600 if lo is not None else None
    h_lo, h_hi = conn.execute(
        "SELECT min(hour), max(hour) FROM hours WHERE device = ? AND channel = ? AND hour < ?",
        (*key, first_hour if first_hour is not None else 2**62),
    ).fetchone()
    parts: list[str] = []
    args: list[Any] = []
    if lo is not None or h_lo is not None:
        start = min(t for t in (lo, h_lo) if t is not None)
        end = max(t for t in (hi, h_hi) if t is not None) + 3600
        span = plan("day", days.name, datetime.fromtimestamp(start, UTC),
                    datetime.fromtimestamp(end, UTC))  # fmt: skip
        if lo is not None:
            parts.append(
                f"SELECT {key_sql(span, 'slot')} AS d, import_mwh AS i, export_mwh AS e, n "
                "FROM slots WHERE device = ? AND channel = ?"
            )
            args += key
        if h_lo is not None:
            # an hour goes whole to the local day it starts in: exact wherever the zone's offset
            # is whole hours (a half-hour zone's dropped hours may straddle two local days)
            parts.append(
                f"SELECT {key_sql(span, 'hour')} AS d, import_mwh AS i, export_mwh AS e, n "
                "FROM hours WHERE device = ? AND channel = ? AND hour < ?"
            )
            args += [*key, first_hour if first_hour is not None else 2**62]
    with transaction(conn):
        conn.execute("DELETE FROM local_days WHERE device = ? AND channel = ?", key)
        if parts:
            conn.execute(
                "INSERT INTO local_days SELECT ?, ?, d, sum(i), sum(e), sum(n) FROM ("
                + " UNION ALL ".join(parts)
                + ") GROUP BY d",
                (*key, *args),
            )


__all__ = ["mark_ready", "rebuild_channel", "start_zone", "stored_zone"]
