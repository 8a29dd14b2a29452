"""The SQLite :class:`~kilowatch.store.protocol.Store`: the writer thread, the read pool and the
local-days state put together; each table's SQL lives in the module of its concern.

Writes are jobs queued to the one writer thread (:mod:`.writer`), reads run on the read pool
(:mod:`.readers`): the event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kilowatch.errors import StoreError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import ChannelKey, SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.periods import LocalDays, Plan, plan
from kilowatch.query.table import EnergyTable
from kilowatch.store import records, registry
from kilowatch.store.measured import check_measured
from kilowatch.store.protocol import (
    AuditEntry,
    Batch,
    DeadLetter,
    DeviceRecord,
    PowerMinute,
    Registration,
)
from kilowatch.store.sqlite import auditlog, devices, journal, local_days, meta, power
from kilowatch.store.sqlite import registry as fleet
from kilowatch.store.sqlite.commit import commit
from kilowatch.store.sqlite.connection import path_of, transaction
from kilowatch.store.sqlite.energy import energy_table
from kilowatch.store.sqlite.readers import Readers
from kilowatch.store.sqlite.repair import estimated_slots as list_estimated
from kilowatch.store.sqlite.repair import replace_estimated as replace_slots
from kilowatch.store.sqlite.retention import DROP_CHANNELS_PER_JOB, drop_records, drop_slots
from kilowatch.store.sqlite.schema import migrate
from kilowatch.store.sqlite.writer import Writer

log = logging.getLogger(__name__)


class SqliteStore:
    """The SQLite :class:`~kilowatch.store.protocol.Store`; open with ``open_store("sqlite:///file.db")``."""

    def __init__(self, url: str, *, path: Path | None = None) -> None:
        self.url = url
        self.path = path if path is not None else path_of(url)
        self._writer = Writer(self.path)
        self._readers = Readers(self.path)
        self._days: LocalDays | None = None
        """The local zone commits keep days of (set and read in the writer thread)."""
        self._days_ready = False
        """Whether every channel's local days are complete (queries may read them)."""
        self._rebuild: asyncio.Task[None] | None = None
        self._power_trimmed: dict[ChannelKey, int] = {}
        """Channel -> the UTC day its old power minutes were last dropped for (writer thread)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the directory of {self.path}: {err}") from err
        await self._writer.start(self._setup)
        self._readers.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebuild
            self._rebuild = None
        await self._writer.stop()
        self._readers.stop()

    def _setup(self, conn: sqlite3.Connection) -> None:
        """In the writer thread, before any write: the schema brought up to date, the zone read."""
        migrate(conn, self.path)
        found = local_days.stored_zone(conn)
        if found is not None:
            self._days, self._days_ready = LocalDays(found[0]), found[1]

    # -- writes ----------------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one SQLite transaction."""
        # the zone is read when the job runs in the writer, in order with zone changes
        await self._writer.run(lambda conn: commit(conn, batch, self._days, self._power_trimmed))

    async def use_local_zone(self, tz: str, *, wait: bool = False) -> None:
        days = LocalDays(tz)  # InvalidQueryError for an unknown zone
        running = self._rebuild
        if running is not None and not running.done():
            if self._days is not None and self._days.name == tz:
                if wait:
                    await asyncio.shield(running)
                return
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

        def switch(conn: sqlite3.Connection) -> list[tuple[str, str]] | None:
            found = local_days.stored_zone(conn)
            if found is not None and found[0] == tz and found[1]:
                self._days, self._days_ready = days, True
                return None
            # start over: every channel's days are rebuilt; commits keep the new zone's from now
            local_days.start_zone(conn, tz)
            self._days, self._days_ready = days, False
            return devices.channels(conn)

        channels = await self._writer.run(switch)
        if channels is None:
            return
        self._rebuild = asyncio.create_task(
            self._rebuild_days(days, channels), name="kilowatch-sqlite-local-days"
        )
        if wait:
            await asyncio.shield(self._rebuild)

    async def _rebuild_days(self, days: LocalDays, channels: list[tuple[str, str]]) -> None:
        """Each channel's local days recomputed from its slots, one writer job per channel (so
        commits go on between them); then the zone is marked ready."""
        started = time.monotonic()
        for device, channel in channels:
            await self._writer.run(functools.partial(local_days.rebuild_channel, days=days,
                                                     device=device, channel=channel))  # fmt: skip

        def ready(conn: sqlite3.Connection) -> None:
            if self._days is days:
                local_days.mark_ready(conn, days.name)
                self._days_ready = True

        await self._writer.run(ready)
        log.info(
            "local days of %s built for %d channels in %.1f s",
            days.name, len(channels), time.monotonic() - started,
        )  # fmt: skip

    async def drop_slots_before(self, before: int) -> int:
        cut = before - before % 3600  # whole hours: no hour rollup is left half-covered
        channels = await self._readers.run(devices.channels)
        dropped = 0
        for i in range(0, len(channels), DROP_CHANNELS_PER_JOB):
            chunk = channels[i : i + DROP_CHANNELS_PER_JOB]
            job = functools.partial(drop_slots, channels=chunk, cut=cut)
            dropped += await self._writer.run(job)
        await self._writer.run(lambda conn: drop_records(conn, cut))
        return dropped

    async def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """Add the entries whose id is new, in one transaction (see :meth:`Store.audit_append`)."""
        checked = records.audit_check(entries)  # UnstorableError before anything is queued
        if not checked:
            return

        def job(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                auditlog.append(conn, checked)

        await self._writer.run(job)

    async def replace_estimated(self, measured: Sequence[SlotEnergy]) -> int:
        """Measured energy for estimated slots, in one transaction (see
        :func:`.repair.replace_estimated`)."""
        rows = check_measured(measured)  # UnstorableError before anything is queued
        if not rows:
            return 0
        # the zone is read when the job runs in the writer, in order with zone changes
        return await self._writer.run(lambda conn: replace_slots(conn, rows, self._days))

    async def estimated_slots(
        self, *, start: int, end: int, device: str | None = None
    ) -> list[tuple[str, str, int]]:
        return await self._readers.run(lambda conn: list_estimated(conn, start, end, device))

    async def local_days_zone(self) -> str | None:
        days = self._days
        return days.name if days is not None and self._days_ready else None

    def _ready_days(self, p: Plan) -> LocalDays | None:
        """The local days that can answer ``p``, if any."""
        days = self._days
        if days is None or not self._days_ready or not days.covers(p):
            return None
        return days

    async def set_device_label(
        self, device: str, *, label: str | None = None, room: str | None = None
    ) -> None:
        await self._writer.run(lambda conn: devices.set_label(conn, device, label, room))

    async def put_meta(self, key: str, value: Any) -> None:
        raw = records.dumps(value).decode()
        await self._writer.run(lambda conn: meta.put_meta(conn, key, raw))

    async def register(self, records: Sequence[Registration]) -> None:
        """Merge ``records`` into the ``fleet_devices`` table in one transaction (see
        :meth:`Store.register`)."""
        regs = list(records)
        registry.check(regs)  # UnstorableError before anything is queued
        if regs:
            await self._writer.run(lambda conn: fleet.register(conn, regs))

    async def unregister(self, device: str) -> bool:
        return await self._writer.run(lambda conn: fleet.unregister(conn, device))

    # -- reads -----------------------------------------------------------------------------------

    async def load_ledger_states(self) -> dict[ChannelKey, dict[str, Any]]:
        return await self._readers.run(meta.ledger_states)

    async def energy(self, query: EnergyQuery) -> list[EnergyRow]:
        return (await self.energy_table(query)).rows()

    async def energy_table(self, query: EnergyQuery) -> EnergyTable:
        p = plan(query.by, query.tz, query.start, query.end)
        days = self._ready_days(p)
        return await self._readers.run(lambda conn: energy_table(conn, p, query, days))

    async def devices(self) -> list[DeviceRecord]:
        """Every device seen or registered, with its registry data (see
        :func:`~kilowatch.store.registry.with_registration`)."""
        return await self._readers.run(lambda conn: fleet.device_records(conn, None))

    async def device(self, device: str) -> DeviceRecord | None:
        found = await self._readers.run(lambda conn: fleet.device_records(conn, device))
        return found[0] if found else None

    async def registry(self) -> list[Registration]:
        return await self._readers.run(fleet.registrations)

    async def latest(self, device: str | None = None) -> list[Reading]:
        return await self._readers.run(lambda conn: devices.latest(conn, device))

    async def events(self, device: str | None = None, limit: int = 100) -> list[Event]:
        rows_ = await self._readers.run(
            lambda conn: journal.newest(conn, "events", "event", device, limit)
        )
        return [records.event_loads(r) for r in rows_]

    async def logs(self, device: str | None = None, limit: int = 100) -> list[LogLine]:
        rows_ = await self._readers.run(
            lambda conn: journal.newest(conn, "logs", "line", device, limit)
        )
        return [records.log_loads(r) for r in rows_]

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._readers.run(lambda conn: journal.dead_letters(conn, limit))

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self._readers.run(journal.dead_letter_counts)

    async def power(self, device: str, *, start: int, end: int) -> list[PowerMinute]:
        return await self._readers.run(lambda conn: power.power(conn, device, start, end))

    async def audit(
        self,
        *,
        limit: int = 100,
        device: str | None = None,
        action: str | None = None,
        before: float | None = None,
    ) -> list[AuditEntry]:
        return await self._readers.run(
            lambda conn: auditlog.newest(conn, limit, device, action, before)
        )

    async def get_meta(self, key: str) -> Any | None:
        return await self._readers.run(lambda conn: meta.get_meta(conn, key))


__all__ = ["SqliteStore"]
