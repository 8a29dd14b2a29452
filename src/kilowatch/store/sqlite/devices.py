"""Devices and their latest readings: the ``devices``, ``channels`` and ``latest`` tables."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from kilowatch.model.messages import Reading
from kilowatch.model.slots import ChannelKey
from kilowatch.store import records
from kilowatch.store.protocol import DeviceRecord, DeviceUpdate

DEVICE_COLUMNS = (
    "first_seen", "last_seen", "online", "mac", "model", "gen", "fw_ver", "available_update",
    "name", "label", "room", "ip", "source",
)  # fmt: skip
"""The ``devices`` table's columns after ``device``, as :func:`records.device_record` reads them."""


def update_devices(
    conn: sqlite3.Connection, updates: Sequence[DeviceUpdate], seen: Iterable[str]
) -> None:
    """A batch's device updates (``first_seen`` only ever moves earlier), then a row for every
    other device the batch names (``seen``)."""
    for update in updates:
        values = records.update_values(update)
        first = update.last_seen
        conn.execute(
            "INSERT INTO devices (device, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (update.device, first),
        )
        if first is not None:
            conn.execute(
                "UPDATE devices SET first_seen = ? WHERE device = ? "
                "AND (first_seen IS NULL OR first_seen > ?)",
                (first, update.device, first),
            )
        if values:
            sets = ", ".join(f"{k} = ?" for k in values)
            conn.execute(
                f"UPDATE devices SET {sets} WHERE device = ?", (*values.values(), update.device)
            )
    conn.executemany(
        "INSERT INTO devices (device) VALUES (?) ON CONFLICT DO NOTHING", [(d,) for d in seen]
    )


def channels(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every ``(device, channel)`` that has energy or a latest reading."""
    return conn.execute("SELECT device, channel FROM channels").fetchall()


def set_label(conn: sqlite3.Connection, device: str, label: str | None, room: str | None) -> None:
    """The user's label and room of ``device`` (``None``: leave as is; ``""``: clear)."""
    conn.execute("INSERT INTO devices (device) VALUES (?) ON CONFLICT DO NOTHING", (device,))
    for col, value in (("label", label), ("room", room)):
        if value is not None:
            conn.execute(f"UPDATE devices SET {col} = ? WHERE device = ?", (value or None, device))


def device_records(conn: sqlite3.Connection, device: str | None) -> list[DeviceRecord]:
    """Every device's record (or only ``device``'s), with its channels, by device id."""
    where, args = ("WHERE device = ?", (device,)) if device is not None else ("", ())
    channels: dict[str, list[str]] = {}
    for d, c in conn.execute(f"SELECT device, channel FROM channels {where}", args):
        channels.setdefault(d, []).append(c)
    cols = ", ".join(DEVICE_COLUMNS)
    out = []
    for row in conn.execute(f"SELECT device, {cols} FROM devices {where} ORDER BY device", args):
        values = dict(zip(DEVICE_COLUMNS, row[1:], strict=True))
        out.append(records.device_record(row[0], values, channels.get(row[0], [])))
    return out


def put_latest(conn: sqlite3.Connection, readings: Sequence[Reading]) -> None:
    """Each channel's newest reading of a batch, unless the stored one is newer."""
    newest: dict[ChannelKey, Reading] = {}
    for r in readings:
        old = newest.get((r.device, r.channel))
        if old is None or r.ts >= old.ts:
            newest[(r.device, r.channel)] = r
    conn.executemany(
        "INSERT INTO latest VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET ts = excluded.ts, "
        "reading = excluded.reading WHERE excluded.ts >= latest.ts",
        [(r.device, r.channel, r.ts, records.reading_dumps(r).decode()) for r in newest.values()],
    )


def latest(conn: sqlite3.Connection, device: str | None) -> list[Reading]:
    """The latest reading of every channel (or of ``device``'s), by device and channel."""
    sql = "SELECT reading FROM latest"
    args: tuple[str, ...] = ()
    if device is not None:
        sql, args = sql + " WHERE device = ?", (device,)
    cur = conn.execute(sql + " ORDER BY device, channel", args)
    return [records.reading_loads(r) for (r,) in cur]


__all__ = [
    "DEVICE_COLUMNS",
    "channels",
    "device_records",
    "latest",
    "put_latest",
    "set_label",
    "update_devices",
]
