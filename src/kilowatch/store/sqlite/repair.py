"""Measured energy for estimated slots (:meth:`Store.replace_estimated`) and the list of those
slots (:meth:`Store.estimated_slots`), on SQLite.

A replacement is one transaction in the writer thread: the read of "is this slot estimated" and
every write it implies (the slot, its hour, UTC day and local day by the difference, the
``estimated`` index, the hour's flag) commit together, so an ingest commit queued beside it lands
wholly before or after. The checks of the values both backends share are in
:mod:`kilowatch.store.measured`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.query.periods import LocalDays
from kilowatch.store.measured import Measured
from kilowatch.store.sqlite.connection import refused_value, transaction


def replace_estimated(
    conn: sqlite3.Connection, measured: Sequence[Measured], days: LocalDays | None
) -> int:
    """Give each estimated slot of ``measured`` its measured amounts, in one transaction (in the
    writer thread); ``days``: the local zone whose days commits keep, if any. Returns how many
    slots took a value."""
    try:
        with transaction(conn):
            return _replace(conn, measured, days)
    except BaseException as err:
        refused = refused_value("replacing estimated energy refused", err)
        if refused is not None:
            raise refused from err
        raise


def _replace(conn: sqlite3.Connection, measured: Sequence[Measured], days: LocalDays | None) -> int:
    hours: dict[tuple[str, str, int], list[int]] = {}
    utc_days: dict[tuple[str, str, int], list[int]] = {}
    local: dict[tuple[str, str, int], list[int]] = {}
    taken = 0
    for device, channel, slot, imp, exp in measured:
        key = (device, channel, slot)
        found = conn.execute(
            "SELECT import_mwh, export_mwh FROM slots WHERE device = ? AND channel = ? "
            "AND slot = ? AND estimated = 1",
            key,
        ).fetchone()
        if found is None:
            continue  # measured already, or never written: left as it is
        taken += 1
        d_imp, d_exp = imp - found[0], exp - found[1]
        conn.execute(
            "UPDATE slots SET import_mwh = ?, export_mwh = ?, estimated = 0 "
            "WHERE device = ? AND channel = ? AND slot = ?",
            (imp, exp, *key),
        )
        conn.execute("DELETE FROM estimated WHERE device = ? AND channel = ? AND slot = ?", key)
        for acc, at in (
            (hours, slot - slot % 3600),
            (utc_days, slot - slot % 86400),
            *([(local, days.day(slot))] if days is not None else []),
        ):
            sums = acc.setdefault((device, channel, at), [0, 0])
            sums[0] += d_imp
            sums[1] += d_exp
    # the hour takes the difference; its flag stays only while another slot of it is estimated
    # (the index keeps the slots retention dropped: their hour stays estimated)
    conn.executemany(
        "UPDATE hours SET import_mwh = import_mwh + ?, export_mwh = export_mwh + ?, "
        "estimated = EXISTS (SELECT 1 FROM estimated e WHERE e.device = hours.device "
        "AND e.channel = hours.channel AND e.slot >= hours.hour AND e.slot < hours.hour + 3600) "
        "WHERE device = ? AND channel = ? AND hour = ?",
        [(i, e, *k) for k, (i, e) in hours.items()],
    )
    conn.executemany(
        "UPDATE days SET import_mwh = import_mwh + ?, export_mwh = export_mwh + ? "
        "WHERE device = ? AND channel = ? AND day = ?",
        [(i, e, *k) for k, (i, e) in utc_days.items()],
    )
    # a local day not built yet (a rebuild on its way) gets a row without deltas (n = 0, not
    # shown); the rebuild, from the slots, replaces it
    conn.executemany(
        "INSERT INTO local_days (device, channel, day, import_mwh, export_mwh, n) "
        "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT DO UPDATE SET "
        "import_mwh = import_mwh + excluded.import_mwh, "
        "export_mwh = export_mwh + excluded.export_mwh",
        [(*k, i, e) for k, (i, e) in local.items()],
    )
    return taken


def estimated_slots(
    conn: sqlite3.Connection, start: int, end: int, device: str | None
) -> list[tuple[str, str, int]]:
    """``(device, channel, slot)`` of the stored slots marked estimated in ``[start, end)``, sorted
    (the index's entries whose slot retention dropped are not slots any more)."""
    sql = (
        "SELECT e.device, e.channel, e.slot FROM estimated e JOIN slots s "
        "ON s.device = e.device AND s.channel = e.channel AND s.slot = e.slot "
        "WHERE e.slot >= ? AND e.slot < ?"
    )
    args: list[object] = [start, end]
    if device is not None:
        sql += " AND e.device = ?"
        args.append(device)
    return [(d, c, int(s)) for d, c, s in conn.execute(sql + " ORDER BY 1, 2, 3", args)]


__all__ = ["estimated_slots", "replace_estimated"]
