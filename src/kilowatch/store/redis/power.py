"""Minute means of power on Redis: one packed string per channel and UTC day
(``P:kw:power:{D}:<channel>:<yyyymmdd>``, see :mod:`.keys`), written by the batch's commit script
(``BITFIELD SET``: values replace, so a replayed batch changes nothing), read with one ``GET`` per
channel and day."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from datetime import UTC, datetime

from kilowatch.model.slots import ChannelKey
from kilowatch.store import records
from kilowatch.store.protocol import PowerMinute
from kilowatch.store.redis.connection import Connection
from kilowatch.store.redis.keys import DAY, Keys, glob_escape
from kilowatch.store.redis.transaction import Ops

OLD_DAYS_DELETED = 7
"""Days before a channel's kept ones that a commit deletes when it opens a new day (older ones,
left by a channel silent for longer, have expired by then)."""
RECORD = 16
"""Bytes per minute: the mean (mW) and the samples, two big-endian 64-bit integers."""


def power_ops(
    op: Ops,
    keys: Keys,
    rows: Mapping[tuple[str, str, int], tuple[int, int]],
    trimmed: Mapping[ChannelKey, int],
) -> dict[ChannelKey, int]:
    """The commit's ops for ``rows`` (see :func:`~kilowatch.store.records.power_rows`); returns
    the channels whose old days it deletes, with the day (the caller remembers them once the
    commit succeeded: ``trimmed``)."""
    per_day: dict[tuple[str, str, int], list[int]] = {}
    newest: dict[ChannelKey, int] = {}
    for (device, channel, minute), (mw, n) in rows.items():
        day = minute - minute % DAY
        args = per_day.get((device, channel, day))
        if args is None:
            args = per_day[(device, channel, day)] = []
            if day > newest.get((device, channel), -1):
                newest[(device, channel)] = day
        args += ((minute - day) // 60, mw, n)
    opened = {k: day for k, day in newest.items() if day > trimmed.get(k, -1)}
    for (device, channel), day in opened.items():
        op("sadd", keys.power_channels(device), channel)
        for back in range(records.POWER_DAYS, records.POWER_DAYS + OLD_DAYS_DELETED):
            op("delete", keys.power_day(device, channel, day - back * DAY))
    for (device, channel, day), args in per_day.items():
        key = keys.power_day(device, channel, day)
        op("power_minutes", key, *args)
        op("expire", key, records.POWER_TTL_S)
    return opened


async def read_power(conn: Connection, device: str, start: int, end: int) -> list[PowerMinute]:
    """``device``'s minutes in ``[start, end)``, by channel then minute."""
    keys = conn.keys
    raw = await conn.call("cannot read power", conn.client.smembers(keys.power_channels(device)))
    channels = sorted(c.decode() for c in raw)
    days = list(range(start - start % DAY, end, DAY)) if end > start else []
    wanted = [(c, d) for c in channels for d in days]
    got = await conn.call(
        "cannot read power",
        conn.pipeline_read([("get", keys.power_day(device, c, d), ()) for c, d in wanted]),
    )
    out: list[PowerMinute] = []
    for (channel, day), data in zip(wanted, got, strict=True):
        if not data:
            continue
        values = array("q")
        values.frombytes(data[: len(data) - len(data) % RECORD])
        if sys.byteorder == "little":
            values.byteswap()
        first = max(0, -(-(start - day) // 60))
        last = min(len(values) // 2, -(-(end - day) // 60))
        for at in range(first, last):
            n = values[2 * at + 1]
            if n > 0:
                out.append(PowerMinute(device, channel, day + 60 * at, values[2 * at] / 1000, n))
    return out


async def drop_power(conn: Connection, cut: int) -> int:
    """Retention: the minutes before ``cut`` deleted (days wholly before it, and the start of the
    day it falls in: zeroed). Returns how many day keys were touched."""
    pattern = glob_escape(conn.keys.kw("power", "")) + "*:*"
    todo: list[tuple[str, int]] = []
    async for key in conn.scan(pattern):
        _, _, date = key.rpartition(":")
        if len(date) != 8 or not date.isdigit():
            continue
        day = _day_of(date)
        if day < cut:
            todo.append((key, day))
    if not todo:
        return 0
    pipe = conn.client.pipeline(transaction=False)
    for key, day in todo:
        if day + DAY <= cut:
            pipe.delete(key)
        else:
            pipe.setrange(key, 0, bytes(RECORD * ((cut - day) // 60)))
    await pipe.execute()
    return len(todo)


def _day_of(date: str) -> int:
    return int(datetime.strptime(date, "%Y%m%d").replace(tzinfo=UTC).timestamp())


__all__ = ["drop_power", "power_ops", "read_power"]
