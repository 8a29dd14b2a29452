"""The Redis :class:`~kilowatch.store.protocol.Store` (redis-py asyncio): one server or a Redis
Cluster, in a layout that keeps the seed's (:mod:`.keys`; full table in docs/storage.md).

:class:`RedisStore` owns the lifecycle (connect, background tasks, close) and composes the parts:
:mod:`.writes` (commits), :mod:`.energy` (energy queries), :mod:`.reads` (other records),
:mod:`.seed` (the index of externally written hours), :mod:`.localdays` (energy per local day),
:mod:`.columns` (packed hour columns), :mod:`.registry` (the fleet registry and the seed's
``device:<MAC>``, ``script:<MAC>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from redis import exceptions as redis_errors

from kilowatch.errors import StoreError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import ChannelKey, SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.table import EnergyTable
from kilowatch.store import registry
from kilowatch.store.measured import check_measured
from kilowatch.store.protocol import (
    AuditEntry,
    Batch,
    DeadLetter,
    DeviceRecord,
    PowerMinute,
    Registration,
)
from kilowatch.store.redis.auditlog import AuditLog
from kilowatch.store.redis.columns import HourColumns
from kilowatch.store.redis.connection import (
    CLOSE_TIMEOUT_S,
    Connection,
    safe_url,
    stop_task,
    store_error,
)
from kilowatch.store.redis.energy import EnergyReader
from kilowatch.store.redis.localdays import LocalDays
from kilowatch.store.redis.power import read_power
from kilowatch.store.redis.reads import RecordReader
from kilowatch.store.redis.registry import Registry
from kilowatch.store.redis.repair import Repairer
from kilowatch.store.redis.seed import SEED_REFRESH_S, SEED_REFRESH_SPACING, SeedIndex
from kilowatch.store.redis.writes import Writer
from kilowatch.store.url import RedisTarget, parse_redis

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
"""Longest opening the store (connect, TLS handshake, first command) may take."""
OPEN_INDEX_MAX_KEYS = 20_000
"""Largest keyspace (DBSIZE; a cluster's nodes summed) indexed before ``__aenter__`` returns;
above it the first refresh runs in the background (a cold index of ~400 000 hashes takes
seconds to minutes)."""


class RedisStore:
    """The Redis :class:`~kilowatch.store.protocol.Store`; open with ``open_store("redis://...")``.

    ``client_options``: extra keyword arguments for redis-py's ``Redis`` / ``RedisCluster``, for
    tests only (a fault proxy's ``address_remap`` on a cluster, a short ``socket_timeout``); what
    users set goes in the URL.
    """

    def __init__(self, url: str, *, client_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.target: RedisTarget = parse_redis(url)
        self.prefix = self.target.prefix
        self._conn = Connection(url, self.target, client_options=client_options)
        self._seed = SeedIndex(self._conn)
        self._columns = HourColumns(self._conn)
        self._local = LocalDays(self._conn)
        self._writer = Writer(self._conn, self._seed, self._local)
        self._repairer = Repairer(self._conn, self._local)
        self._energy = EnergyReader(self._conn, self._seed, self._columns, self._local)
        self._records = RecordReader(self._conn, self._seed)
        self._registry = Registry(self._conn)
        self._audit = AuditLog(self._conn)
        self._refresher: asyncio.Task[None] | None = None
        self._build: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self.build_hour_columns_at_open = True
        """Start :meth:`build_hour_columns` in the background when opening a store written by an
        earlier kilowatch (tests turn it off to look at the store before the build)."""

    @property
    def client(self) -> Any:
        """The open redis-py client (``Redis`` or ``RedisCluster``)."""
        return self._conn.client

    @property
    def seed_key_reads(self) -> int:
        """How many keys refreshes have HMGET to classify them (for tests and benchmarks)."""
        return self._seed.key_reads

    def seed_key(self, mac: str, hour: int) -> str:
        """The seed's hourly hash key ``<prefix>:<MAC>_<hour start>``."""
        return self._conn.keys.seed_key(mac, hour)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                await self._conn.open()
                big = await self._conn.keyspace_size() > OPEN_INDEX_MAX_KEYS
                await self._local.read_state()
                needs_build = await self._columns.read_format()
            if not big:
                await self._seed.refresh()
        except TimeoutError as err:
            await self._conn.close()
            raise StoreError(
                f"cannot open the Redis store at {safe_url(self.url)}: no answer within "
                f"{OPEN_TIMEOUT_S:g} s; check host and port, and whether the server speaks TLS "
                "(rediss://) or not (redis://)"
            ) from err
        except (redis_errors.RedisError, OSError) as err:
            await self._conn.close()
            raise store_error(f"cannot open the Redis store at {safe_url(self.url)}", err) from err
        if big:
            log.info(
                "more than %d keys in %s: indexing externally written seed hours in the "
                "background; until it finishes, queries miss external hours not indexed before",
                OPEN_INDEX_MAX_KEYS,
                safe_url(self.url),
            )
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._local.tasks = self._tasks
        self._refresher = self._tasks.create_task(self._refresh_loop(first=big))
        if needs_build and self.build_hour_columns_at_open:
            self._build = self._tasks.create_task(self._columns.build_in_background())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.closing = True
        if self._refresher is not None:
            self._refresher.cancel()
            # bounded: every await of a refresh is one short command or chunk, so the
            # cancellation lands quickly; the timeout only guards against a hung server
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.wait([self._refresher])
            except TimeoutError:
                log.warning("seed index refresh did not stop; closing its connections")
                await self._conn.close()  # fails the read it is stuck in
            self._refresher = None
        await self._local.stop()
        await stop_task(self._build, "the hour-column build")
        self._build = None
        if self._tasks is not None:
            await self._tasks.__aexit__(None, None, None)
            self._tasks = None
            self._local.tasks = None
        await self._conn.close()

    async def _refresh_loop(self, *, first: bool) -> None:
        conn = self._conn
        if not first:
            await asyncio.sleep(SEED_REFRESH_S)
        while True:
            took = 0.0
            try:
                started = asyncio.get_running_loop().time()
                total = await self._seed.refresh()
                took = asyncio.get_running_loop().time() - started
                if first:
                    log.info("seed index ready: %d external hours (%.1f s)", total, took)
                    first = False
            except StoreError as err:
                conn.stop_point()
                log.warning("seed index refresh failed: %s", err)
            if not self._columns.ready:  # another process may have finished the build
                with contextlib.suppress(StoreError):
                    await self._columns.read_format()
            conn.stop_point()
            # a SCAN of a big keyspace takes seconds of the server's (and our) time: keep it to
            # a small share (a refresh that took 2 s waits 60 s; one that took 10 s, 200 s)
            await asyncio.sleep(max(SEED_REFRESH_S, SEED_REFRESH_SPACING * took))

    async def refresh_seed_index(self) -> int:
        """Index hourly hashes an external sink wrote in the seed layout (``P:<MAC>_<hour>``);
        returns how many are indexed. See :meth:`SeedIndex.refresh`."""
        return await self._seed.refresh()

    async def build_hour_columns(self) -> int:
        """Pack every hour-month hash into its packed columns, then mark the store; returns how
        many hashes were packed. See :meth:`HourColumns.build`."""
        return await self._columns.build()

    # -- writes ----------------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in MULTI/EXEC (on a cluster: one MULTI/EXEC per hash slot, see docs)."""
        await self._writer.commit(batch)

    async def set_device_label(
        self, device: str, *, label: str | None = None, room: str | None = None
    ) -> None:
        await self._writer.set_device_label(device, label=label, room=room)

    async def put_meta(self, key: str, value: Any) -> None:
        await self._writer.put_meta(key, value)

    async def register(self, records: Sequence[Registration]) -> None:
        """Merge ``records`` into the fleet registry: see :meth:`Registry.register`."""
        await self._registry.register(list(records))

    async def unregister(self, device: str) -> bool:
        return await self._registry.unregister(device)

    async def replace_estimated(self, measured: Sequence[SlotEnergy]) -> int:
        """Measured energy for estimated slots: one script per device on a server, per channel
        on a cluster (see :mod:`.repair`)."""
        return await self._repairer.replace(check_measured(measured))

    async def estimated_slots(
        self, *, start: int, end: int, device: str | None = None
    ) -> list[tuple[str, str, int]]:
        return await self._repairer.estimated_slots(start, end, device)

    async def drop_slots_before(self, before: int) -> int:
        """Retention: see :meth:`Writer.drop_slots_before`; then the audit entries before the
        same cut."""
        dropped = await self._writer.drop_slots_before(before)
        await self._audit.drop_before(before - before % 3600)
        return dropped

    async def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """One atomic script call (see :data:`~.lua.AUDIT_ADD_LUA`)."""
        await self._audit.append(entries)

    # -- local days ------------------------------------------------------------------------------

    async def use_local_zone(self, tz: str, *, wait: bool = False) -> None:
        """Keep energy per local day of ``tz``: see :meth:`LocalDays.use`."""
        await self._local.use(tz, wait=wait)

    async def local_days_zone(self) -> str | None:
        """The zone whose local days are complete, as stored in Redis now (another process may
        have chosen it)."""
        return await self._local.complete_zone()

    # -- reads -----------------------------------------------------------------------------------

    async def energy(self, query: EnergyQuery) -> list[EnergyRow]:
        return (await self._energy.table(query)).rows()

    async def energy_table(self, query: EnergyQuery) -> EnergyTable:
        return await self._energy.table(query)

    async def load_ledger_states(self) -> dict[ChannelKey, dict[str, Any]]:
        # The ingest resumes from what it reads here: first fence out every older writer, so
        # that none of its commands, delivered late, lands after the states were read.
        await self._writer.claim()
        return await self._records.load_ledger_states()

    async def devices(self) -> list[DeviceRecord]:
        """Every device seen or registered, with its registry data (see
        :func:`~kilowatch.store.registry.with_registration`)."""
        recs = await self._records.devices()
        return registry.merge_devices(recs, await self._registry.all())

    async def device(self, device: str) -> DeviceRecord | None:
        rec = await self._records.device(device)
        return registry.with_registration(rec, await self._registry.get(device))

    async def registry(self) -> list[Registration]:
        return await self._registry.all()

    async def latest(self, device: str | None = None) -> list[Reading]:
        return await self._records.latest(device)

    async def events(self, device: str | None = None, limit: int = 100) -> list[Event]:
        return await self._records.events(device, limit)

    async def logs(self, device: str | None = None, limit: int = 100) -> list[LogLine]:
        return await self._records.logs(device, limit)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._records.dead_letters(limit)

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self._records.dead_letter_counts()

    async def power(self, device: str, *, start: int, end: int) -> list[PowerMinute]:
        return await read_power(self._conn, device, start, end)

    async def audit(
        self,
        *,
        limit: int = 100,
        device: str | None = None,
        action: str | None = None,
        before: float | None = None,
    ) -> list[AuditEntry]:
        return await self._audit.newest(limit, device, action, before)

    async def get_meta(self, key: str) -> Any | None:
        return await self._records.get_meta(key)
