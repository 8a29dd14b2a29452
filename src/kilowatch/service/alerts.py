"""The alerts service of ``kilowatch serve``: evaluates the stored alert rules every
``alerts_interval_s`` seconds and delivers their notifications (docs/alerts.md).

Each evaluation reloads the configuration when it changed (the Alerts page and ``kilowatch
alerts set`` write it to the store). Deliveries never hold up evaluation: each notification is a
task of the runner's own task group, at most :data:`MAX_DELIVERIES` at once (the others wait
their turn). A store that fails skips that evaluation (logged and counted); the next one tries
again. Stopping cancels deliveries in flight: they stay in the stored outbox and are sent again,
with the same id, at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kilowatch.alerts.channels import RetryPolicy, Sender
from kilowatch.alerts.engine import AlertEngine, AlertStats
from kilowatch.alerts.state import Notification
from kilowatch.errors import StoreError
from kilowatch.store.protocol import Store

log = logging.getLogger(__name__)

ALERTS_INTERVAL_S = 5.0
"""Default ``alerts_interval_s``."""
MAX_DELIVERIES = 16
"""Notifications being delivered at once."""


class AlertsRunner:
    """Runs the :class:`~kilowatch.alerts.engine.AlertEngine` until cancelled. ``stats`` are its
    counters (``Running.alerts``); ``policy`` the delivery retries (tests make them short)."""

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = ALERTS_INTERVAL_S,
        default_tz: str = "UTC",
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.default_tz = default_tz
        self.policy = policy
        self.clock = clock
        self.stats = AlertStats()
        self._slots = asyncio.Semaphore(MAX_DELIVERIES)

    async def run(self) -> None:
        async with Sender(policy=self.policy) as sender, asyncio.TaskGroup() as tg:
            engine = AlertEngine(
                self.store, sender, default_tz=self.default_tz, clock=self.clock, stats=self.stats
            )
            outbox = await self._start(engine)
            for n in outbox:
                tg.create_task(self._deliver(engine, n), name=f"alert-{n.id}")
            while True:
                try:
                    sent = await engine.tick()
                except StoreError as err:
                    self.stats.evaluation_failures += 1
                    log.warning("alerts: evaluation skipped, the store failed: %s", err)
                    sent = []
                for n in sent:
                    tg.create_task(self._deliver(engine, n), name=f"alert-{n.id}")
                await asyncio.sleep(self.interval_s)

    async def _start(self, engine: AlertEngine) -> list[Notification]:
        """The engine's start, retried while the store fails."""
        while True:
            try:
                outbox = await engine.start()
            except StoreError as err:
                self.stats.evaluation_failures += 1
                log.warning("alerts: cannot read the alert book yet, the store failed: %s", err)
                await asyncio.sleep(self.interval_s)
                continue
            if outbox:
                log.info("alerts: delivering %d notifications of the last run", len(outbox))
            return outbox

    async def _deliver(self, engine: AlertEngine, n: Notification) -> None:
        async with self._slots:
            try:
                await engine.deliver(n)
            except Exception:
                # one notification's bug must not stop alerting (nor, through the task group,
                # the service); it stays in the outbox and is tried again at the next start
                log.exception("alerts: delivering notification %s failed", n.id)


__all__ = ["ALERTS_INTERVAL_S", "MAX_DELIVERIES", "AlertsRunner"]
