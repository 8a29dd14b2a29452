"""The alert engine: reads the store into a :class:`~kilowatch.alerts.evaluate.Snapshot`,
evaluates, keeps the book (states and outbox) in the store, delivers notifications and records
them in the history.

It is the one writer of :data:`~kilowatch.alerts.state.STATE_KEY` and
:data:`~kilowatch.alerts.state.HISTORY_KEY`: ``kilowatch serve`` runs one
(:mod:`kilowatch.service.alerts`). Order of writes, so that a restart at any point neither sends
a notification twice with different ids nor loses one:

1. :meth:`AlertEngine.tick` evaluates and writes the new states *and* the new notifications (the
   outbox) in one value write, then returns the notifications;
2. :meth:`AlertEngine.deliver` sends one notification to its channels; as each channel finishes,
   its result goes into the outbox entry (written); when all are done a history record is
   written (an id already in the history is replaced, not added), then the entry leaves the
   outbox (written).

After a restart :meth:`AlertEngine.start` returns the outbox: what was decided but not delivered
everywhere, sent again with the same id to the channels that have no result yet (an entry with
every result is only recorded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kilowatch.alerts.channels import Sender
from kilowatch.alerts.config import CONFIG_KEY, AlertsConfig, parse_config
from kilowatch.alerts.evaluate import Snapshot, evaluate, local_day, matches
from kilowatch.alerts.state import (
    AlertBook,
    AlertRecord,
    DeliveryResult,
    Notification,
    append_history,
    load_book,
    save_book,
)
from kilowatch.errors import ConfigError, InvalidQueryError, StoreError
from kilowatch.model.messages import Reading
from kilowatch.query.energy import EnergyQuery
from kilowatch.store.protocol import Store

log = logging.getLogger(__name__)

SITE_KEY = "settings.site"
"""Store meta key of the site settings, whose ``tz`` is the site's zone (the same key as
``kilowatch.service.retention.SITE_KEY``, which this room may not import; a test checks they
agree)."""
EVENT_SCAN = 2000
"""Newest device events read per evaluation for the firmware rule."""


@dataclass
class AlertStats:
    """Counters of the alert engine (``/metrics``, logs)."""

    evaluations: int = 0
    evaluation_failures: int = 0
    notifications: int = 0
    delivered: int = 0
    """Channel deliveries that succeeded (one notification to two channels: two)."""
    delivery_failures: int = 0
    """Channel deliveries given up (attempts exhausted or not retryable)."""
    delivery_attempts: int = 0
    firing: int = 0
    pending: int = 0
    config_errors: int = 0
    """Times a stored configuration did not parse (the previous one stays in force)."""


async def site_zone(store: Store, default_tz: str) -> str:
    """The site's time zone: the web's settings (``settings.site``'s ``tz``), else ``default_tz``
    (the ``tz`` setting)."""
    site = await store.get_meta(SITE_KEY)
    tz = site.get("tz") if isinstance(site, dict) else None
    return tz if isinstance(tz, str) and tz else default_tz


class AlertEngine:
    """Evaluates the stored rules against the store and delivers through ``sender``.

    ``clock`` gives the time of an evaluation unless :meth:`tick` is given one."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        *,
        default_tz: str = "UTC",
        clock: Callable[[], float] = time.time,
        stats: AlertStats | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.default_tz = default_tz
        self.clock = clock
        self.stats = stats or AlertStats()
        self.config = AlertsConfig()
        self.book = AlertBook()
        self._raw_config: Any = None
        self._lock = asyncio.Lock()
        self._dirty = False
        """The book in memory is newer than the stored one (a write failed)."""

    async def start(self) -> list[Notification]:
        """Load the book and the configuration; the notifications still to deliver (the
        outbox of the last run)."""
        self.book = await load_book(self.store)
        await self.reload_config()
        if self.book.watermark is None:
            # firmware errors from before alerting began are history, not alerts
            self.book.watermark = self.clock()
            await save_book(self.store, self.book)
        return list(self.book.outbox)

    async def reload_config(self) -> bool:
        """Read the stored configuration; whether it changed. One that does not parse is logged
        and the one in force stays."""
        raw = await self.store.get_meta(CONFIG_KEY)
        if raw == self._raw_config:
            return False
        self._raw_config = raw
        try:
            self.config = parse_config(raw) if raw is not None else AlertsConfig()
        except ConfigError as err:
            self.stats.config_errors += 1
            log.error("the stored alerts configuration is invalid, keeping the last one: %s", err)
            return False
        log.info(
            "alerts configuration loaded rules=%d channels=%d",
            len(self.config.rules), len(self.config.channels),
        )  # fmt: skip
        return True

    async def snapshot(self, now: float) -> Snapshot:
        """What the store says now, for the rules in force."""
        rules = [r for r in self.config.rules if r.enabled]
        if not rules:  # nothing to watch: no reads (a removed rule's states just go)
            return Snapshot(now)
        kinds = {r.kind for r in rules}
        devices = {d.device: d for d in await self.store.devices()}
        latest: dict[str, list[Reading]] = {}
        if "power_above" in kinds:
            for reading in await self.store.latest():
                latest.setdefault(reading.device, []).append(reading)
        energy: dict[str, float] = {}
        day: tuple[float, float] | None = None
        budget_rules = [r for r in rules if r.kind == "daily_energy_above"]
        if budget_rules:
            tz = await site_zone(self.store, self.default_tz)
            start, end = local_day(now, tz)
            day = (start.timestamp(), end.timestamp())
            watched = sorted(d for d in devices if any(matches(r, d) for r in budget_rules))
            energy = await self._energy_today(tz, start, end, tuple(watched))
        ota: dict[str, tuple[float | None, float | None]] = {}
        if "firmware_failed" in kinds:
            ota = await self._ota(self.book.watermark or now)
        return Snapshot(now, devices, latest, energy, day, ota)

    async def _energy_today(
        self, tz: str, start: datetime, end: datetime, devices: tuple[str, ...]
    ) -> dict[str, float]:
        if not devices:
            return {}
        query = EnergyQuery(by="day", tz=tz, start=start, end=end, devices=devices, group="device")
        try:
            rows = await self.store.energy(query)
        except InvalidQueryError as err:
            raise StoreError(f"daily energy of the site's day in {tz}: {err}") from err
        out: dict[str, float] = {}
        for row in rows:
            if row.device is not None:
                out[row.device] = out.get(row.device, 0.0) + row.energy_wh
        return out

    async def _ota(self, after: float) -> dict[str, tuple[float | None, float | None]]:
        """Per device the newest ``ota_error`` (from ``after`` on) and newest ``ota_success``."""
        out: dict[str, tuple[float | None, float | None]] = {}
        for event in await self.store.events(None, limit=EVENT_SCAN):
            if event.component != "sys" or event.event not in ("ota_error", "ota_success"):
                continue
            error, success = out.get(event.device, (None, None))
            if event.event == "ota_error" and event.ts >= after:
                error = max(error or event.ts, event.ts)
            elif event.event == "ota_success":
                success = max(success or event.ts, event.ts)
            out[event.device] = (error, success)
        return out

    async def tick(self, now: float | None = None) -> list[Notification]:
        """One evaluation: reload the configuration if it changed, read the store, evaluate,
        write the book (states and the new notifications in the outbox); the notifications to
        deliver. :class:`StoreError` when the store fails (nothing is decided then)."""
        now = self.clock() if now is None else now
        await self.reload_config()
        snap = await self.snapshot(now)
        async with self._lock:
            result = evaluate(self.config, self.book.states, snap)
            changed = self._dirty or result.states != self.book.states or result.notifications
            book = AlertBook(
                result.states, self.book.outbox + result.notifications, self.book.watermark
            )
            if changed:
                await save_book(self.store, book)
            self.book, self._dirty = book, False
        await self._finish()
        self.stats.evaluations += 1
        self.stats.notifications += len(result.notifications)
        self.stats.firing = sum(s.status == "firing" for s in book.states.values())
        self.stats.pending = sum(s.status == "pending" for s in book.states.values())
        for n in result.notifications:
            log.info(
                "alert %s rule=%s device=%s notification=%s channels=%s message=%r",
                n.transition, n.rule, n.device, n.id, ",".join(n.channels), n.message,
            )  # fmt: skip
        return result.notifications

    async def deliver(self, n: Notification) -> AlertRecord:
        """Send ``n`` to each of its channels not done yet, concurrently; record each result in
        the outbox as it comes, then move the notification from the outbox to the history.
        Store failures are logged: what was not written is written at a later tick."""
        await asyncio.gather(*(self._deliver_one(n.id, name) for name in n.pending))
        async with self._lock:
            done = next((x for x in self.book.outbox if x.id == n.id), n)
        await self._finish()
        return AlertRecord.of(done)

    async def _deliver_one(self, nid: str, name: str) -> None:
        n = next((x for x in self.book.outbox if x.id == nid), None)
        if n is None:
            return
        channel = self.config.channel(name)
        if channel is None:
            result = DeliveryResult(name, False, 0, "the channel is no longer configured")
        else:
            result = await self.sender.deliver(channel, n)
        self.stats.delivery_attempts += result.attempts
        if result.ok:
            self.stats.delivered += 1
        else:
            self.stats.delivery_failures += 1
        async with self._lock:
            self.book.outbox = [
                replace(x, results=(*x.results, result)) if x.id == nid else x
                for x in self.book.outbox
            ]
            await self._save_quietly()

    async def _save_quietly(self) -> None:
        try:
            await save_book(self.store, self.book)
        except StoreError as err:
            self._dirty = True
            log.warning("could not store the alert book (stored at the next tick): %s", err)

    async def _finish(self) -> None:
        """Move the notifications delivered on every channel from the outbox to the history:
        the history first, so that a stop in between leaves them in the outbox (the next start
        records them again under the same id, which replaces, and sends nothing)."""
        async with self._lock:
            done = [x for x in self.book.outbox if not x.pending]
            if not done:
                return
            try:
                await append_history(self.store, [AlertRecord.of(x) for x in done])
            except StoreError as err:
                log.warning("could not store alert history (retried at the next tick): %s", err)
                return
            ids = {x.id for x in done}
            self.book.outbox = [x for x in self.book.outbox if x.id not in ids]
            await self._save_quietly()


def stats_json(stats: AlertStats) -> Mapping[str, int]:
    """The counters by name (``/metrics`` prefixes them with ``alerts_``)."""
    return {name: getattr(stats, name) for name in AlertStats.__dataclass_fields__}


__all__ = ["EVENT_SCAN", "SITE_KEY", "AlertEngine", "AlertStats", "site_zone", "stats_json"]
