"""The bounded lists: events and log lines per device, dead letters overall (with their counts).

Each is an ``AUTOINCREMENT`` table read newest first; appends trim it to the bounds in
:mod:`kilowatch.store.records` in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.store import records
from kilowatch.store.protocol import DeadLetter


def append(
    conn: sqlite3.Connection,
    table: str,
    col: str,
    items: Sequence[tuple[str, float, str]],
    keep: int,
) -> None:
    """``(device, ts, JSON)`` items added to ``table`` (``events``/``logs``), each device's newest
    ``keep`` kept."""
    if not items:
        return
    conn.executemany(f"INSERT INTO {table} (device, ts, {col}) VALUES (?, ?, ?)", items)
    for device in {d for d, _, _ in items}:
        conn.execute(
            f"DELETE FROM {table} WHERE device = ?1 AND id <= (SELECT id FROM {table} "
            "WHERE device = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            (device, keep),
        )


def newest(
    conn: sqlite3.Connection, table: str, col: str, device: str | None, limit: int
) -> list[str]:
    """The newest ``limit`` JSON values of ``table`` (of ``device``, if given), newest first."""
    if device is None:
        cur = conn.execute(f"SELECT {col} FROM {table} ORDER BY id DESC LIMIT ?", (limit,))
    else:
        cur = conn.execute(
            f"SELECT {col} FROM {table} WHERE device = ? ORDER BY id DESC LIMIT ?", (device, limit)
        )
    return [r for (r,) in cur]


def drop_before(conn: sqlite3.Connection, table: str, cut: float) -> int:
    """Retention: the rows of ``table`` (``events``/``logs``) older than ``cut`` deleted (a scan:
    the table is bounded by its per-device limit, and this runs every few hours)."""
    return conn.execute(f"DELETE FROM {table} WHERE ts < ?", (cut,)).rowcount


def add_dead_letters(conn: sqlite3.Connection, letters: Sequence[DeadLetter]) -> None:
    """Dead letters added and counted by reason; the newest :data:`records.DEAD_LETTERS` kept."""
    if not letters:
        return
    conn.executemany(
        "INSERT INTO dead_letters (ts, topic, payload, reason, detail) VALUES (?, ?, ?, ?, ?)",
        [(d.ts, d.topic, d.payload, d.reason, d.detail) for d in letters],
    )
    conn.executemany(
        "INSERT INTO dead_letter_counts VALUES (?, 1) ON CONFLICT DO UPDATE SET count = count + 1",
        [(d.reason,) for d in letters],
    )
    conn.execute(
        "DELETE FROM dead_letters WHERE id <= "
        "(SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (records.DEAD_LETTERS,),
    )


def dead_letters(conn: sqlite3.Connection, limit: int) -> list[DeadLetter]:
    """The newest ``limit`` dead letters, newest first."""
    cur = conn.execute(
        "SELECT ts, topic, payload, reason, detail FROM dead_letters ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [
        DeadLetter(ts, topic, bytes(payload), reason, detail)
        for ts, topic, payload, reason, detail in cur
    ]


def dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many dead letters there have been, by reason (never trimmed)."""
    return dict(conn.execute("SELECT reason, count FROM dead_letter_counts"))


__all__ = [
    "add_dead_letters",
    "append",
    "dead_letter_counts",
    "dead_letters",
    "drop_before",
    "newest",
]
