"""The audit log: ``audit`` (each entry's JSON, with its time and action to filter on) and
``audit_devices`` (an entry per device it names, to read one device's entries by time)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.store import records
from kilowatch.store.protocol import AuditEntry


def append(conn: sqlite3.Connection, entries: Sequence[tuple[AuditEntry, bytes]]) -> int:
    """Entries whose id is not stored yet added (in the caller's transaction), then the log cut to
    the newest :data:`~kilowatch.store.records.AUDIT_ENTRIES`; how many were added."""
    added = 0
    for entry, raw in entries:
        cur = conn.execute(
            "INSERT INTO audit (id, ts, action, entry) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (entry.id, float(entry.ts), entry.action, raw.decode()),
        )
        if cur.rowcount:
            added += 1
            conn.executemany(
                "INSERT INTO audit_devices VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(d, float(entry.ts), entry.id) for d in dict.fromkeys(entry.devices)],
            )
    if added:
        edge = conn.execute(
            "SELECT ts, id FROM audit ORDER BY ts DESC, id DESC LIMIT 1 OFFSET ?",
            (records.AUDIT_ENTRIES,),
        ).fetchone()
        if edge is not None:
            _drop_through(conn, edge[0], edge[1])
    return added


def _drop_through(conn: sqlite3.Connection, ts: float, entry_id: str) -> int:
    """Delete every entry up to ``(ts, id)`` in the log's order (oldest first)."""
    where = "WHERE ts < ?1 OR (ts = ?1 AND id <= ?2)"
    conn.execute(f"DELETE FROM audit_devices {where}", (ts, entry_id))
    return conn.execute(f"DELETE FROM audit {where}", (ts, entry_id)).rowcount


def drop_before(conn: sqlite3.Connection, cut: float) -> int:
    """Retention: the entries older than ``cut`` deleted; how many."""
    conn.execute("DELETE FROM audit_devices WHERE ts < ?", (cut,))
    return conn.execute("DELETE FROM audit WHERE ts < ?", (cut,)).rowcount


def newest(
    conn: sqlite3.Connection,
    limit: int,
    device: str | None,
    action: str | None,
    before: float | None,
) -> list[AuditEntry]:
    """Newest first (time, then id), filtered as :meth:`Store.audit` says."""
    if limit <= 0:
        return []
    where: list[str] = []
    args: list[object] = []
    table = "audit a"
    if device is not None:
        table = "audit_devices d JOIN audit a ON a.id = d.id"
        where.append("d.device = ?")
        args.append(device)
    at = "d" if device is not None else "a"
    if before is not None:
        where.append(f"{at}.ts < ?")
        args.append(before)
    if action is not None:
        # "action" itself, or below it: "action." <= x < "action/" ("/" follows "." in ASCII)
        where.append("(a.action = ? OR (a.action >= ? AND a.action < ?))")
        args += [action, action + ".", action + "/"]
    sql = f"SELECT a.entry FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {at}.ts DESC, {at}.id DESC LIMIT ?"
    args.append(limit)
    return [records.audit_loads(raw) for (raw,) in conn.execute(sql, args)]


__all__ = ["append", "drop_before", "newest"]
