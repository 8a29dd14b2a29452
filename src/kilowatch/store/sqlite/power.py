"""Minute means of power (:class:`~kilowatch.store.protocol.PowerMinute`): one row per channel
and UTC minute in ``power``, the mean as whole milliwatts; written in a batch's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, MutableMapping

from kilowatch.model.slots import ChannelKey
from kilowatch.store import records
from kilowatch.store.protocol import PowerMinute

DAY = 86400

_PUT = """
INSERT INTO power (device, channel, minute, power_mw, samples) VALUES (?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET power_mw = excluded.power_mw, samples = excluded.samples
"""


def put_power(
    conn: sqlite3.Connection,
    rows: Mapping[tuple[str, str, int], tuple[int, int]],
    trimmed: MutableMapping[ChannelKey, int],
) -> None:
    """Each minute's value replaces what it held. A channel written for a UTC day later than the
    last this process trimmed it for loses its minutes before the last
    :data:`~kilowatch.store.records.POWER_DAYS` days (one primary-key range each). ``trimmed``:
    channel -> that day (kept by the store, read and written in the writer thread only)."""
    if not rows:
        return
    conn.executemany(_PUT, [(*k, *v) for k, v in rows.items()])
    newest: dict[ChannelKey, int] = {}
    for device, channel, minute in rows:
        day = minute - minute % DAY
        if day > newest.get((device, channel), -1):
            newest[(device, channel)] = day
    for key, day in newest.items():
        if day > trimmed.get(key, -1):
            keep_from = day - (records.POWER_DAYS - 1) * DAY
            conn.execute(
                "DELETE FROM power WHERE device = ? AND channel = ? AND minute < ?",
                (*key, keep_from),
            )
            trimmed[key] = day


def power(conn: sqlite3.Connection, device: str, start: int, end: int) -> list[PowerMinute]:
    """``device``'s minutes in ``[start, end)``, by channel then minute (one index range)."""
    cur = conn.execute(
        "SELECT channel, minute, power_mw, samples FROM power "
        "WHERE device = ? AND minute >= ? AND minute < ? ORDER BY channel, minute",
        (device, start, end),
    )
    return [PowerMinute(device, c, m, mw / 1000, n) for c, m, mw, n in cur]


def drop_power(conn: sqlite3.Connection, cut: int) -> int:
    """Retention: every minute before ``cut`` deleted (a scan of a table bounded by
    :data:`~kilowatch.store.records.POWER_DAYS`)."""
    return conn.execute("DELETE FROM power WHERE minute < ?", (cut,)).rowcount


__all__ = ["drop_power", "power", "put_power"]
