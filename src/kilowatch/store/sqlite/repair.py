"""Measured energy for estimated slots (:meth:`Store.replace_estimated`) and the list of those
slots (:meth:`Store.estimated_slots`), on SQLite.

A replacement is one transaction in the writer thread: the read of "is this slot estimated" and
every write it implies (the slot, its hour, UTC day and local day by the difference, the
``estimated`` index, the hour's flag) commit together, so an ingest commit queued beside it lands
wholly before or after. :func:`check_measured` is the validation both backends share.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.errors import UnstorableError
from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy
from kilowatch.query.periods import LocalDays
from kilowatch.store.sqlite.connection import refused_value, transaction

MWH_MAX = 2**53 - 1
"""The largest measured energy of one slot (~9 TWh): what every backend holds exactly (Redis's
Lua scripts compute with doubles)."""

Measured = tuple[str, str, int, int, int]
"""``(device, channel, slot, import mWh, export mWh)``: one slot's measured energy."""


def check_measured(measured: Sequence[SlotEnergy]) -> list[Measured]:
    """The slots of ``measured`` as plain tuples, in order, each once, after checking that a store
    can hold them: :class:`UnstorableError` (naming the slot) for an amount that is not an
    ``int`` (a ``bool`` neither), is negative (a slot's whole energy, unlike a delta, cannot be),
    or beyond 64 bits; or for one slot given two different amounts. Nothing is written when one
    fails. A slot start that is not on the 15-minute grid names no slot: it is dropped (like an
    unknown device, it replaces nothing)."""
    out: dict[tuple[str, str, int], Measured] = {}
    for m in measured:
        where = f"{m.device!r} {m.channel!r} slot {m.slot!r}"
        if not isinstance(m.slot, int) or isinstance(m.slot, bool):
            raise UnstorableError(f"measured energy of {where}: the slot is not an integer",
                                  detail=f"slot={m.slot!r}")  # fmt: skip
        for name, value in (("import_mwh", m.import_mwh), ("export_mwh", m.export_mwh)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise UnstorableError(
                    f"measured energy of {where}: {name} is not an integer mWh: {value!r}",
                    detail=f"{name}={value!r}",
                )
            if not 0 <= value <= MWH_MAX:
                raise UnstorableError(
                    f"measured energy of {where}: {name} {value} is out of range "
                    f"(0 to {MWH_MAX} mWh: a slot's whole energy is never negative)",
                    detail=f"{name}={value!r}",
                )
        if not isinstance(m.device, str) or not isinstance(m.channel, str):
            continue  # names no stored channel
        if m.slot % SLOT_SECONDS:
            continue  # not a slot start: no such slot
        key = (m.device, m.channel, m.slot)
        row = (m.device, m.channel, m.slot, m.import_mwh, m.export_mwh)
        seen = out.get(key)
        if seen is not None and seen != row:
            raise UnstorableError(
                f"measured energy of {where} given twice with different amounts",
                detail=f"{seen[3:]} and {row[3:]}",
            )
        out[key] = row
    return list(out.values())


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


__all__ = ["MWH_MAX", "Measured", "check_measured", "estimated_slots", "replace_estimated"]
