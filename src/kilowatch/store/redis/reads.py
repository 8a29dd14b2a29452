"""What the Redis store reads besides energy: ledger states, devices, latest readings, events,
logs, dead letters and settings."""

from __future__ import annotations

from typing import Any

from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import ChannelKey
from kilowatch.query.grouping import HOURLY
from kilowatch.store import records
from kilowatch.store.protocol import DeadLetter, DeviceRecord
from kilowatch.store.redis.connection import Command, Connection
from kilowatch.store.redis.seed import SeedIndex


class RecordReader:
    """Reads the store's records (everything but energy)."""

    def __init__(self, conn: Connection, seed: SeedIndex) -> None:
        self._conn = conn
        self._keys = conn.keys
        self._seed = seed

    async def load_ledger_states(self) -> dict[ChannelKey, dict[str, Any]]:
        conn = self._conn
        pairs = await conn.pairs("ledgers")
        got = await conn.call(
            "cannot read ledger states",
            conn.pipeline_read([("get", f"{self._keys.chan(d, c)}:ledger", ()) for d, c in pairs]),
        )
        return {pair: records.loads(raw) for pair, raw in zip(pairs, got, strict=True) if raw}

    async def devices(self) -> list[DeviceRecord]:
        names = await self._conn.call(
            "cannot list devices", self._conn.client.smembers(self._keys.kw("devices"))
        )
        seed_ids = await self._seed.ids()
        ids = sorted({n.decode() for n in names} | seed_ids)
        # every device's hash and channels in one pipelined round trip, not one per device
        cmds: list[Command] = []
        for d in ids:
            key = self._keys.dev(d)
            cmds += [("hgetall", key, ()), ("smembers", key + ":channels", ())]
        got = await self._conn.call("cannot read devices", self._conn.pipeline_read(cmds))
        return [_record(d, got[2 * i], got[2 * i + 1], d in seed_ids) for i, d in enumerate(ids)]

    async def device(self, device: str) -> DeviceRecord | None:
        return await self._device(device, device in await self._seed.ids())

    async def _device(self, device: str, seeded: bool) -> DeviceRecord | None:
        key = self._keys.dev(device)
        values, channels, known = await self._conn.call(
            "cannot read a device",
            self._conn.pipeline_read(
                [
                    ("hgetall", key, ()),
                    ("smembers", key + ":channels", ()),
                    ("sismember", self._keys.kw("devices"), (device,)),
                ]
            ),
        )
        if not known and not seeded:
            return None
        return _record(device, values, channels, seeded)

    async def latest(self, device: str | None = None) -> list[Reading]:
        conn = self._conn
        if device is None:
            names = await conn.call(
                "cannot list devices", conn.client.smembers(self._keys.kw("devices"))
            )
            devices = sorted(n.decode() for n in names)
        else:
            devices = [device]
        got = await conn.call(
            "cannot read latest readings",
            conn.pipeline_read([("hgetall", self._keys.dev(d) + ":latest", ()) for d in devices]),
        )
        return [records.reading_loads(values[c]) for values in got for c in sorted(values)]

    async def _list(self, key: str, limit: int) -> list[bytes]:
        if limit <= 0:
            return []
        got = await self._conn.call(
            "cannot read a list", self._conn.client.lrange(key, 0, limit - 1)
        )
        return list(got)

    async def events(self, device: str | None = None, limit: int = 100) -> list[Event]:
        key = self._keys.kw("events") if device is None else f"{self._keys.dev(device)}:events"
        return [records.event_loads(r) for r in await self._list(key, limit)]

    async def logs(self, device: str | None = None, limit: int = 100) -> list[LogLine]:
        key = self._keys.kw("logs") if device is None else f"{self._keys.dev(device)}:logs"
        return [records.log_loads(r) for r in await self._list(key, limit)]

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        raws = await self._list(self._keys.kw("deadletters"), limit)
        return [records.dead_letter_loads(r) for r in raws]

    async def dead_letter_counts(self) -> dict[str, int]:
        got = await self._conn.call(
            "cannot read dead letter counts",
            self._conn.client.hgetall(self._keys.kw("deadletter-counts")),
        )
        return {k.decode(): int(v) for k, v in got.items()}

    async def get_meta(self, key: str) -> Any | None:
        raw = await self._conn.call(
            "cannot read a setting", self._conn.client.hget(self._keys.kw("meta"), key)
        )
        return None if raw is None else records.loads(raw)


def _record(
    device: str, values: dict[bytes, bytes], channels: set[bytes], seeded: bool
) -> DeviceRecord:
    """A device's record from its hash and channel set (``seeded``: it has external hours,
    shown as channel ``hourly``)."""
    names = {c.decode() for c in channels} | ({HOURLY} if seeded else set())
    decoded = {k.decode(): v.decode() for k, v in values.items()}
    return records.device_record(device, decoded, sorted(names))
