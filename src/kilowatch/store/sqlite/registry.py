"""The fleet registry: the ``fleet_devices`` table (one row per registered device; the deployed
script as JSON). The rules (what may be stored, how a registration merges) are
:mod:`kilowatch.store.registry`'s."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kilowatch.store import registry
from kilowatch.store.protocol import DeviceRecord, Registration
from kilowatch.store.sqlite import devices
from kilowatch.store.sqlite.connection import refused_value, transaction

COLUMNS = (*registry.FIELDS, "script")
"""The table's columns after ``device``."""
IDS_PER_SELECT = 500
"""Device ids per ``SELECT … IN (…)`` (well under SQLite's bound on parameters)."""

_UPSERT = (
    f"INSERT OR REPLACE INTO fleet_devices (device, {', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
)


def register(conn: sqlite3.Connection, regs: Sequence[Registration]) -> None:
    """Merge ``regs`` into the stored rows in one transaction, all or none (the writer thread).
    A value SQLite refuses is an :class:`~kilowatch.errors.UnstorableError`."""
    try:
        with transaction(conn):
            stored = _rows(conn, sorted({r.device for r in regs}))
            for reg in regs:  # in order: a device named twice ends as the last one says
                stored[reg.device] = registry.merge(stored.get(reg.device), reg)
            conn.executemany(_UPSERT, [_row(r) for r in stored.values()])
    except BaseException as err:
        refused = refused_value("registration refused", err)
        if refused is not None:
            raise refused from err
        raise


def unregister(conn: sqlite3.Connection, device: str) -> bool:
    """Delete ``device``'s row; whether there was one."""
    with transaction(conn):
        cur = conn.execute("DELETE FROM fleet_devices WHERE device = ?", (device,))
        return cur.rowcount > 0


def registrations(conn: sqlite3.Connection, device: str | None = None) -> list[Registration]:
    """Every registration (or ``device``'s), by device id."""
    where, args = ("WHERE device = ?", (device,)) if device is not None else ("", ())
    cur = conn.execute(
        f"SELECT device, {', '.join(COLUMNS)} FROM fleet_devices {where} ORDER BY device", args
    )
    return [registry.from_fields(row[0], dict(zip(COLUMNS, row[1:], strict=True))) for row in cur]


def device_records(conn: sqlite3.Connection, device: str | None) -> list[DeviceRecord]:
    """Every device's record (or ``device``'s), seen or registered, with its registry data
    (:func:`~kilowatch.store.registry.with_registration`), by device id; both tables read in one
    snapshot."""
    conn.execute("BEGIN")
    try:
        recs = devices.device_records(conn, device)
        return registry.merge_devices(recs, registrations(conn, device))
    finally:
        conn.execute("COMMIT")


def _rows(conn: sqlite3.Connection, devices: list[str]) -> dict[str, Registration]:
    out: dict[str, Registration] = {}
    for i in range(0, len(devices), IDS_PER_SELECT):
        chunk = devices[i : i + IDS_PER_SELECT]
        cur = conn.execute(
            f"SELECT device, {', '.join(COLUMNS)} FROM fleet_devices "
            f"WHERE device IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        for row in cur:
            out[row[0]] = registry.from_fields(row[0], dict(zip(COLUMNS, row[1:], strict=True)))
    return out


def _row(reg: Registration) -> tuple[object, ...]:
    return (
        reg.device,
        *(getattr(reg, name) for name in registry.FIELDS),
        registry.script_dumps(reg.script),
    )


__all__ = ["COLUMNS", "device_records", "register", "registrations", "unregister"]
