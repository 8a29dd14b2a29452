"""Measured energy for estimated slots (:meth:`Store.replace_estimated`) and the list of those
slots (:meth:`Store.estimated_slots`), on Redis.

Each group of keys is replaced by one :data:`~.lua.REPLACE_LUA` call, which reads whether a slot
is estimated and writes everything that follows from it atomically, so an ingest commit lands
wholly before or after it. On one server a group is a device: its channels' keys and its seed hour
hashes. On a cluster each channel's keys share a hash slot (``{D|C}``) but a device's channels and
seed hours do not, so a group is a channel, and the seed hours follow in a second, fenced step
(:data:`~.lua.SEED_ADD_LUA`) from a replay record kept in the channel's slot until it is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.crc import key_slot

from kilowatch.model.slots import SLOT_SECONDS
from kilowatch.query.grouping import HOURLY
from kilowatch.query.periods import LocalDays as ZoneDays
from kilowatch.store import records
from kilowatch.store.measured import Measured
from kilowatch.store.redis.connection import Connection, store_error
from kilowatch.store.redis.keys import DAY, month_start, year_start
from kilowatch.store.redis.localdays import LocalDays
from kilowatch.store.redis.lua import REPLACE_LUA, REPLAY_DONE_LUA, SEED_ADD_LUA

REPLAY_TTL_S = 7 * 86400
"""How long a cluster channel's replay record (and each seed hour's fence) is kept: a replacement
interrupted between its channel and its seed hours is finished by a retry within this time."""


class Repairer:
    """The Redis store's :meth:`replace` and :meth:`estimated_slots`."""

    def __init__(self, conn: Connection, local: LocalDays) -> None:
        self._conn = conn
        self._local = local

    async def replace(self, measured: Sequence[Measured]) -> int:
        """Give each estimated slot of ``measured`` (checked already) its measured amounts:
        atomic per device on one server, per channel on a cluster. Returns how many slots took a
        value."""
        if not measured:
            return 0
        conn = self._conn
        try:
            macs = await self._macs(sorted({m[0] for m in measured}))
            groups: dict[tuple[str, ...], list[Measured]] = {}
            for m in measured:
                key = (m[0], m[1]) if conn.is_cluster else (m[0],)
                groups.setdefault(key, []).append(m)

            async def bounded(rows: list[Measured]) -> int:
                async with conn.transactions:
                    return await self._replace_group(rows, macs.get(rows[0][0]))

            counts = await asyncio.gather(*(bounded(g) for g in groups.values()))
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("replacing estimated energy in Redis failed", err) from err
        return sum(counts)

    async def _macs(self, devices: list[str]) -> dict[str, str | None]:
        """Each device's MAC as its seed hour hashes are named (``None``: it has none)."""
        keys = self._conn.keys
        found = await self._conn.pipeline_read([("hget", keys.dev(d), ("mac",)) for d in devices])
        return {
            d: records.mac_of(d, raw.decode() if raw else None)
            for d, raw in zip(devices, found, strict=True)
        }

    async def _replace_group(self, rows: list[Measured], mac: str | None) -> int:
        conn, keys = self._conn, self._conn.keys
        zone_name = self._local.zone
        days = ZoneDays(zone_name) if zone_name else None
        index: dict[str, int] = {}
        names: list[str] = []

        def at(key: str) -> int:
            found = index.get(key)
            if found is None:
                names.append(key)
                found = index[key] = len(names)
            return found

        rep = 0
        if conn.is_cluster:
            device, channel = rows[0][0], rows[0][1]
            token = hashlib.sha1(repr(sorted(rows)).encode()).hexdigest()
            rep = at(f"{keys.chan(device, channel)}:rep:{token}")
        args: list[str] = []
        for device, channel, slot, imp, exp in rows:
            ch = keys.chan(device, channel)
            day = slot - slot % DAY
            hour = slot - slot % 3600
            month, year = month_start(hour), year_start(day)
            seed = "0"
            if mac is not None and "/" not in channel and channel != HOURLY:
                seed = str(hour) if conn.is_cluster else str(at(keys.seed_key(mac, hour)))
            fields = (
                at(f"{ch}:s:{day}"), (slot - day) // SLOT_SECONDS,
                at(f"{ch}:h:{month}"), at(f"{ch}:hb:{month}"), (hour - month) // 3600,
                at(f"{ch}:d:{year}"), (day - year) // DAY,
                at(f"{ch}:est"), slot,
                at(keys.ld(device, channel)), days.day(slot) if days is not None else -1,
                seed, imp, exp,
            )  # fmt: skip
            args.append(" ".join(map(str, fields)))
        nonce = uuid.uuid4().hex
        reply = await conn.client.eval(
            REPLACE_LUA, len(names), *names, zone_name or "", rep, nonce, REPLAY_TTL_S, *args
        )
        replaced = int(reply[0])
        if rep and len(reply) > 2 and mac is not None:
            await self._seed_hours(names[rep - 1], mac, _text(reply[1]), reply[2:])
        return replaced

    async def _seed_hours(self, record: str, mac: str, nonce: str, pairs: list[Any]) -> None:
        """A cluster's second step: each seed hour takes its difference once (a fence named by
        the replay's nonce beside it), then the replay record goes."""
        conn, keys = self._conn, self._conn.keys
        for i in range(0, len(pairs), 2):
            hour = int(_text(pairs[i]))
            d_imp, d_exp = _text(pairs[i + 1]).split()
            seed = keys.seed_key(mac, hour)
            fence = keys.fence(f"rep-{nonce}-{mac}_{hour}", key_slot(seed.encode()))
            await conn.client.eval(SEED_ADD_LUA, 2, seed, fence, d_imp, d_exp, REPLAY_TTL_S)
        await conn.client.eval(REPLAY_DONE_LUA, 1, record, nonce)

    async def estimated_slots(
        self, start: int, end: int, device: str | None
    ) -> list[tuple[str, str, int]]:
        """The slots in ``[start, end)`` marked estimated, sorted: each channel's estimated set,
        less the members whose slot retention dropped."""
        conn, keys = self._conn, self._conn.keys
        try:
            pairs = [p for p in await conn.pairs("channels") if device is None or p[0] == device]
            found = await conn.pipeline_read(
                [("zrangebyscore", f"{keys.chan(d, c)}:est", (start, end - 1)) for d, c in pairs]
            )
            candidates = [
                (d, c, int(raw)) for (d, c), got in zip(pairs, found, strict=True) for raw in got
            ]
            exists = await conn.pipeline_read(
                [
                    ("hexists", f"{keys.chan(d, c)}:s:{s - s % DAY}",
                     (f"{s % DAY // SLOT_SECONDS}x",))
                    for d, c, s in candidates
                ]
            )  # fmt: skip
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("cannot list the estimated slots", err) from err
        return sorted(x for x, there in zip(candidates, exists, strict=True) if there)


def _text(raw: bytes | str | int) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


__all__ = ["REPLAY_TTL_S", "Repairer"]
