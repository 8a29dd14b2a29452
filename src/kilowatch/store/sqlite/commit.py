"""A :class:`~kilowatch.store.protocol.Batch` applied in one transaction (in the writer thread),
once: its ``commit_id`` goes into ``commits`` in the same transaction, and a batch found there
already is not applied again.

Energy is kept several times over in the same transaction: per 15-minute slot (``slots``), per
UTC hour (``hours``), per UTC day (``days``) and, once a zone is set, per local day
(``local_days``); each delta is summed per row in Python first, so a batch is one upsert per row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import MutableMapping, Sequence

from kilowatch.model.slots import ChannelKey, SlotEnergy
from kilowatch.query.grouping import coarser, regroup, sum_deltas
from kilowatch.query.periods import LocalDays
from kilowatch.store import records
from kilowatch.store.protocol import Batch
from kilowatch.store.sqlite import devices, journal, meta
from kilowatch.store.sqlite.connection import refused_value, transaction
from kilowatch.store.sqlite.power import put_power

_ADD_SLOT = """
INSERT INTO slots (device, channel, slot, import_mwh, export_mwh, estimated, n)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    import_mwh = import_mwh + excluded.import_mwh,
    export_mwh = export_mwh + excluded.export_mwh,
    estimated = estimated | excluded.estimated,
    n = n + excluded.n
"""
_ADD_HOUR = """
INSERT INTO hours (device, channel, hour, import_mwh, export_mwh, estimated, n)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    import_mwh = import_mwh + excluded.import_mwh,
    export_mwh = export_mwh + excluded.export_mwh,
    estimated = estimated | excluded.estimated,
    n = n + excluded.n
"""


def _add_day_sql(table: str) -> str:
    """Upsert of a day rollup row (UTC ``days`` or ``local_days``): amounts add up."""
    return f"""
INSERT INTO {table} (device, channel, day, import_mwh, export_mwh, n)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    import_mwh = import_mwh + excluded.import_mwh,
    export_mwh = export_mwh + excluded.export_mwh,
    n = n + excluded.n
"""


COMMITS_KEPT = 10_000
"""Commit ids kept in ``commits``: committing one of the last 10 000 batches again is a no-op."""

_ADD_DAY = _add_day_sql("days")
_ADD_LOCAL_DAY = _add_day_sql("local_days")


def commit(
    conn: sqlite3.Connection,
    batch: Batch,
    days: LocalDays | None,
    power_trimmed: MutableMapping[ChannelKey, int],
) -> None:
    """Apply ``batch`` in one transaction, all or nothing; ``days``: the local zone whose days
    are kept, if any; ``power_trimmed``: see :func:`.power.put_power`. A value SQLite refuses,
    or a power minute :func:`~kilowatch.store.records.power_rows` refuses, is an
    :class:`~kilowatch.errors.UnstorableError` (nothing of the batch stored)."""
    power = records.power_rows(batch.power)
    trimmed = dict(power_trimmed)  # taken over only if the transaction commits
    try:
        with transaction(conn):
            if _first_commit(conn, batch.commit_id):
                _apply(conn, batch, days)
                put_power(conn, power, trimmed)
        power_trimmed.update(trimmed)
    except BaseException as err:
        refused = refused_value("commit refused", err)
        if refused is not None:
            raise refused from err
        raise


def _first_commit(conn: sqlite3.Connection, commit_id: str) -> bool:
    """Record ``commit_id`` (dropping the oldest beyond :data:`COMMITS_KEPT`); ``False`` if it
    was committed before. A SQLite commit's outcome is always known, but a caller may still
    commit a batch again: the rule is the same on every backend."""
    if conn.execute("SELECT 1 FROM commits WHERE id = ?", (commit_id,)).fetchone():
        return False
    seq = conn.execute("INSERT INTO commits (id) VALUES (?)", (commit_id,)).lastrowid
    if seq is not None and seq > COMMITS_KEPT:
        conn.execute("DELETE FROM commits WHERE seq <= ?", (seq - COMMITS_KEPT,))
    return True


def _when(ts: float) -> float:
    """An event's or log line's time for the ``ts`` column (retention's cut): a NaN, which
    SQLite would store as NULL, as 0 (unknown: the first retention run drops it)."""
    return ts if ts == ts else 0.0


def _apply(conn: sqlite3.Connection, batch: Batch, days: LocalDays | None) -> None:
    if batch.slots:
        _add_energy(conn, batch.slots, days)
    channels = {(s.device, s.channel) for s in batch.slots} | {
        (r.device, r.channel) for r in batch.latest
    }
    seen = (
        {d for d, _ in channels}
        | {e.device for e in batch.events}
        | {line.device for line in batch.logs}
    )
    conn.executemany("INSERT INTO channels VALUES (?, ?) ON CONFLICT DO NOTHING", sorted(channels))
    meta.put_ledger_states(conn, batch.ledger_states)
    devices.update_devices(conn, batch.devices, seen)
    devices.put_latest(conn, batch.latest)
    journal.append(
        conn,
        "events",
        "event",
        [(e.device, _when(e.ts), records.event_dumps(e).decode()) for e in batch.events],
        records.EVENTS_PER_DEVICE,
    )
    journal.append(
        conn,
        "logs",
        "line",
        [(x.device, _when(x.ts), records.log_dumps(x).decode()) for x in batch.logs],
        records.LOGS_PER_DEVICE,
    )
    journal.add_dead_letters(conn, batch.dead_letters)


def _add_energy(
    conn: sqlite3.Connection, deltas: Sequence[SlotEnergy], days: LocalDays | None
) -> None:
    """Slots, the hour and day rollups, and the local days (summed per batch first: fewer
    upserts)."""
    slots = sum_deltas(deltas)
    if days is not None:
        local = regroup(slots, days.day)
        conn.executemany(_ADD_LOCAL_DAY, [(*k, v[0], v[1], v[3]) for k, v in local.items()])
    conn.executemany(_ADD_SLOT, [(*k, *v) for k, v in slots.items()])
    hours = coarser(slots, 3600)
    conn.executemany(_ADD_HOUR, [(*k, *v) for k, v in hours.items()])
    utc_days = coarser(hours, 86400)
    conn.executemany(_ADD_DAY, [(*k, v[0], v[1], v[3]) for k, v in utc_days.items()])
    conn.executemany(
        "INSERT INTO estimated VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [k for k, v in slots.items() if v[2]],
    )


__all__ = ["COMMITS_KEPT", "commit"]
