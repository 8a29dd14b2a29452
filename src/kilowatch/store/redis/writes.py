"""Everything the Redis store writes: a batch's commit (every key it touches, in one fenced script
call per group, see :mod:`.transaction`), a device's label, a setting, and the retention cut of
old slots, power minutes, events and log lines."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors

from kilowatch.errors import StoreError
from kilowatch.model.messages import Reading
from kilowatch.model.slots import SLOT_SECONDS, ChannelKey
from kilowatch.query.grouping import HOURLY, coarser, sum_deltas
from kilowatch.store import records
from kilowatch.store.protocol import Batch
from kilowatch.store.redis.columns import add_columns
from kilowatch.store.redis.connection import Connection, store_error
from kilowatch.store.redis.keys import DAY, MARKER, SEP, glob_escape, month_start, year_start
from kilowatch.store.redis.localdays import LocalDays
from kilowatch.store.redis.lua import DROP_LUA, LIST_DROP_LUA, RAISE_FLOOR_LUA
from kilowatch.store.redis.power import drop_power, power_ops
from kilowatch.store.redis.seed import SeedIndex
from kilowatch.store.redis.transaction import Ops, execute

DROP_CHUNK = 1000
"""Slot-day hashes cut per pipelined round trip of :meth:`Writer.drop_slots_before`."""
FLOORS_PER_ROUND_TRIP = 2048
"""Floors raised per pipelined round trip when a writer claims a cluster (16 384 in all)."""
COMMITS_REMEMBERED = 1024
"""Commit ids whose sequence number a writer remembers: committing one of the last 1 024
batches again is a no-op; an older one would be a new commit."""


class Writer:
    """The store's writes; remembers each device's MAC and firmware for the seed hashes.

    Commits are numbered: each writer is a *lane* (a random id, new with every store object),
    and a batch gets the lane's next sequence number at its first commit and keeps it when
    committed again (by :attr:`~.protocol.Batch.commit_id`). Each group's fence remembers the
    last number applied there, so a retry, or a command the network delivers late, of a commit
    that already got through is a no-op; commits of one writer run one at a time, so numbers
    reach each group in order."""

    def __init__(self, conn: Connection, seed: SeedIndex, local: LocalDays) -> None:
        self._conn = conn
        self._keys = conn.keys
        self._seed = seed
        self._local = local
        self._macs: dict[str, tuple[str | None, str | None]] = {}
        """device -> (mac, fw_ver) as stored, then as updated by commits, for the seed hashes
        kilowatch writes."""
        self.lane = uuid.uuid4().hex
        self.generation = 0
        """Raised by :meth:`claim`; 0 for a writer that never loaded the ledger states."""
        self._seq = 0
        self._seqs: OrderedDict[str, int] = OrderedDict()
        """Commit id -> sequence number, the last :data:`COMMITS_REMEMBERED`."""
        self._power_trimmed: dict[ChannelKey, int] = {}
        """Channel -> the UTC day whose older power days a commit of this writer deleted."""

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch``, at most once: in one script call on a server, one per hash slot on
        a cluster (see :func:`~.transaction.execute` and docs/storage.md)."""
        try:
            power = records.power_rows(batch.power)  # UnstorableError before anything is sent
            async with self._conn.commits:
                await self._known_macs(batch)
                ops = self._commit_ops(batch)
                opened = power_ops(ops, self._keys, power, self._power_trimmed)
                await execute(
                    self._conn, ops, lane=self.lane, seq=self._seq_of(batch.commit_id),
                    generation=self.generation,
                )  # fmt: skip
                self._power_trimmed.update(opened)
            self._seed.mark_known(k for m, k, _ in ops.items if m == "seed_hour")
        except redis_errors.ResponseError as err:
            if str(err).startswith("KWSTALE"):
                raise StoreError(
                    f"another kilowatch took over this store ({err}): this process's commits are "
                    "refused so that they cannot count what the newer one counts again; stop one "
                    "of them"
                ) from err
            raise store_error("commit to Redis failed", err) from err
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("commit to Redis failed", err) from err

    async def claim(self) -> None:
        """Become the store's newest writer, before the ledger states are read: a generation
        from ``P:kw:generation`` and every floor raised to it (one key on a server, one per hash
        slot on a cluster). From then on a commit of an older writer -- a process this one
        replaces, whose command the network delivers late -- is refused, so it cannot add energy
        that this process, resuming from the states it reads now, counts again."""
        conn = self._conn
        try:
            self.generation = int(await conn.client.incr(self._keys.kw("generation")))
            slots: list[int | None] = list(range(16384)) if conn.is_cluster else [None]
            for first in range(0, len(slots), FLOORS_PER_ROUND_TRIP):
                pipe = conn.client.pipeline(transaction=False)
                for slot in slots[first : first + FLOORS_PER_ROUND_TRIP]:
                    pipe.eval(RAISE_FLOOR_LUA, 1, self._keys.floor(slot), self.generation)
                await pipe.execute()
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("cannot claim the Redis store for this writer", err) from err

    def _seq_of(self, commit_id: str) -> int:
        seq = self._seqs.get(commit_id)
        if seq is None:
            self._seq += 1
            seq = self._seqs[commit_id] = self._seq
            if len(self._seqs) > COMMITS_REMEMBERED:
                self._seqs.popitem(last=False)
        return seq

    async def _known_macs(self, batch: Batch) -> None:
        """Read the MAC and firmware of the batch's devices this writer has not read yet, then
        apply the batch's updates: a device seen first in an update without firmware (most
        updates carry only ``last_seen``) still gets the firmware it has on record."""
        devices = {s.device for s in batch.slots} | {u.device for u in batch.devices}
        missing = sorted(d for d in devices if d not in self._macs)
        if missing:
            found = await self._conn.pipeline_read(
                [("hmget", self._keys.dev(d), ("mac", "fw_ver")) for d in missing]
            )
            for device, (mac, fw) in zip(missing, found, strict=True):
                self._macs[device] = (mac.decode() if mac else None, fw.decode() if fw else None)
        for u in batch.devices:
            mac, fw = self._macs[u.device]
            self._macs[u.device] = (u.mac or mac, u.fw_ver or fw)

    def _commit_ops(self, batch: Batch) -> Ops:
        op = Ops()
        k = self._keys
        seed: dict[tuple[str, int], list[int]] = {}
        slots = sum_deltas(batch.slots)
        for (device, channel, slot), (imp, exp, est, n) in slots.items():
            ch = k.chan(device, channel)
            day = slot - slot % DAY
            _add_fields(op, f"{ch}:s:{day}", str((slot - day) // SLOT_SECONDS), imp, exp, est, n)
            if est:
                op("zadd", f"{ch}:est", {str(slot): slot})
        hours = coarser(slots, 3600)
        columns: dict[str, list[Any]] = {}
        for (device, channel, hour), (imp, exp, est, n) in hours.items():
            month = month_start(hour)
            ch = k.chan(device, channel)
            at = (hour - month) // 3600
            _add_fields(op, f"{ch}:h:{month}", str(at), imp, exp, est, n)
            add_columns(columns.setdefault(f"{ch}:hb:{month}", []), at, imp, exp, est, n)
            if "/" not in channel and channel != HOURLY:
                acc = seed.setdefault((device, hour), [0, 0])
                acc[0] += imp
                acc[1] += exp
        for key, args in columns.items():  # one BITFIELD per channel-month
            op("bitfield", key, *args)
        for (device, channel, day), (imp, exp, _, n) in coarser(hours, DAY).items():
            year = year_start(day)
            key = f"{k.chan(device, channel)}:d:{year}"
            _add_fields(op, key, str((day - year) // DAY), imp, exp, 0, n)
        self._local.commit_ops(op, slots)
        for (device, channel), state in batch.ledger_states.items():
            op("set", f"{k.chan(device, channel)}:ledger", records.dumps(state))
            op("sadd", k.kw("ledgers"), device + SEP + channel)
        self._seed_ops(op, seed)
        self._record_ops(op, batch)
        return op

    def _record_ops(self, op: Ops, batch: Batch) -> None:
        """Channels, devices, latest readings, events, logs and dead letters of ``batch``."""
        k = self._keys
        channels = {(s.device, s.channel) for s in batch.slots} | {
            (r.device, r.channel) for r in batch.latest
        }
        for device, channel in sorted(channels):
            op("sadd", k.kw("channels"), device + SEP + channel)
            op("sadd", k.dev(device) + ":channels", channel)
        devices = {d for d, _ in channels} | {u.device for u in batch.devices}
        devices |= {e.device for e in batch.events} | {x.device for x in batch.logs}
        if devices:
            op("sadd", k.kw("devices"), *sorted(devices))
        for u in batch.devices:
            self._device_ops(op, u.device, records.update_values(u), u.last_seen)
        newest: dict[ChannelKey, Reading] = {}
        for r in batch.latest:
            old = newest.get((r.device, r.channel))
            if old is None or r.ts >= old.ts:
                newest[(r.device, r.channel)] = r
        for (device, channel), r in newest.items():
            op("hset", k.dev(device) + ":latest", channel, records.reading_dumps(r))
        self._list_ops(
            op,
            "events",
            [(e.device, records.event_dumps(e)) for e in batch.events],
            records.EVENTS_PER_DEVICE,
            records.EVENTS_OVERALL,
        )
        self._list_ops(
            op,
            "logs",
            [(x.device, records.log_dumps(x)) for x in batch.logs],
            records.LOGS_PER_DEVICE,
            records.LOGS_OVERALL,
        )
        if batch.dead_letters:
            key = k.kw("deadletters")
            op("lpush", key, *[records.dead_letter_dumps(d) for d in batch.dead_letters])
            op("ltrim", key, 0, records.DEAD_LETTERS - 1)
            for d in batch.dead_letters:
                op("hincrby", k.kw("deadletter-counts"), d.reason, 1)

    def _seed_ops(self, op: Ops, seed: dict[tuple[str, int], list[int]]) -> None:
        for (device, hour), (imp, exp) in sorted(seed.items()):
            mac, fw = self._macs.get(device, (None, None))
            mac = records.mac_of(device, mac)
            if mac is None:
                continue  # no MAC known or derivable: the seed layout cannot name this device
            key = self._keys.seed_key(mac, hour)
            # mWh summed in kwi/kwe; hourly_* rewritten from them as exact decimal Wh
            op("seed_hour", key, imp, exp)
            fields = {"id": device, "mac": mac, "operational": "true", "timestamp": hour}
            if fw:
                fields["fw_ver"] = fw
            else:  # the old tools expect the field; never blank a firmware known before
                op("hsetnx", key, "fw_ver", "")
            op("hset", key, {**fields, MARKER: "1"})

    def _device_ops(
        self, op: Ops, device: str, values: dict[str, Any], last_seen: float | None
    ) -> None:
        key = self._keys.dev(device)
        if last_seen is not None:
            op("hsetnx", key, "first_seen", last_seen)
        if values:
            op("hset", key, values)
        mac = records.mac_of(device, values.get("mac") or self._macs.get(device, (None, None))[0])
        seed = {k: values[k] for k in ("fw_ver", "model", "name", "ip") if k in values}
        if mac is not None and (seed or "mac" in values):
            op("hset", f"device:{mac}", {"id": device, "mac": mac, **seed})

    def _list_ops(
        self, op: Ops, name: str, items: Sequence[tuple[str, bytes]], per_device: int, overall: int
    ) -> None:
        if not items:
            return
        per: dict[str, list[bytes]] = {}
        for device, raw in items:
            per.setdefault(device, []).append(raw)
        for device, raws in per.items():
            key = f"{self._keys.dev(device)}:{name}"
            op("lpush", key, *raws)
            op("ltrim", key, 0, per_device - 1)
        op("lpush", self._keys.kw(name), *[raw for _, raw in items])
        op("ltrim", self._keys.kw(name), 0, overall - 1)

    async def set_device_label(
        self, device: str, *, label: str | None = None, room: str | None = None
    ) -> None:
        client, key = self._conn.client, self._keys.dev(device)
        try:
            pipe = client.pipeline(transaction=True)
            for name, value in (("label", label), ("room", room)):
                if value == "":
                    pipe.hdel(key, name)
                elif value is not None:
                    pipe.hset(key, name, value)
            await pipe.execute()
            await client.sadd(self._keys.kw("devices"), device)
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("cannot save the device label", err) from err

    async def put_meta(self, key: str, value: Any) -> None:
        raw = records.dumps(value)
        try:
            await self._conn.client.hset(self._keys.kw("meta"), key, raw)
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("cannot save a setting", err) from err

    async def drop_slots_before(self, before: int) -> int:
        """Retention: delete the slots before ``before`` (rounded down to a whole UTC hour);
        hours, days, local days and the estimated index stay. One SCAN finds the slot-day hashes
        (``P:kw:{D|C}:s:<day>``); each is cut by :data:`~.lua.DROP_LUA`, atomically, and the
        count of slots it held before the cut is returned."""
        cut = before - before % 3600
        pattern = glob_escape(self._keys.kw("")) + "*:s:*"
        dropped = 0
        todo: list[tuple[str, int]] = []
        try:
            async for key in self._conn.scan(pattern):
                _, _, day = key.rpartition(":s:")
                if day.isdigit() and int(day) < cut:
                    todo.append((key, min(96, (cut - int(day)) // SLOT_SECONDS)))
                if len(todo) >= DROP_CHUNK:
                    dropped += await self._drop(todo)
                    todo = []
            dropped += await self._drop(todo)
            await drop_power(self._conn, cut)
            await self._drop_lists(cut)
        except (redis_errors.RedisError, OSError) as err:
            raise store_error("cannot drop old slots", err) from err
        return dropped

    async def _drop_lists(self, cut: int) -> None:
        """The events and log lines older than ``cut`` popped from every list (each device's and
        the overall ones), :data:`DROP_CHUNK` lists per pipelined round trip."""
        k = self._keys
        names = await self._conn.client.smembers(k.kw("devices"))
        lists = [k.kw("events"), k.kw("logs")]
        for raw in names:
            head = k.dev(raw.decode())
            lists += (head + ":events", head + ":logs")
        for first in range(0, len(lists), DROP_CHUNK):
            pipe = self._conn.client.pipeline(transaction=False)
            for key in lists[first : first + DROP_CHUNK]:
                pipe.eval(LIST_DROP_LUA, 1, key, cut)
            await pipe.execute()

    async def _drop(self, todo: Sequence[tuple[str, int]]) -> int:
        if not todo:
            return 0
        pipe = self._conn.client.pipeline(transaction=False)
        for key, limit in todo:
            pipe.eval(DROP_LUA, 1, key, limit)
        return sum(int(n) for n in await pipe.execute())


def _add_fields(op: Ops, key: str, n: str, imp: int, exp: int, est: int, count: int) -> None:
    if imp or not exp:
        op("hincrby", key, n, imp)  # even 0: an all-zero slot still has data (zero energy)
    if exp:
        op("hincrby", key, n + "e", exp)
    if est:
        op("hset", key, n + "x", 1)
    op("hincrby", key, n + "c", count)  # deltas that landed here: > 0 means "has data"
