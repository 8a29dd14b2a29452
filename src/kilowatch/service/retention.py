"""The retention job of ``kilowatch serve``: drops 15-minute slots older than the site's
``retention_days`` (Settings page, ``PATCH /api/v1/settings``), keeping the hour, day and local-day
rollups, and with them the power minutes, audit entries, events and log lines older than the same
cut (see ``Store.drop_slots_before`` and docs/storage.md, Retention). Runs shortly after start,
then every :data:`RETENTION_INTERVAL_S`; a setting changed in between takes effect at the next
run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kilowatch.errors import StoreError
from kilowatch.store.protocol import Store

log = logging.getLogger(__name__)

SITE_KEY = "settings.site"
"""Store meta key of the site settings (``kilowatch.web.site``): read here without the web."""
RETENTION_INTERVAL_S = 6 * 3600.0
RETENTION_FIRST_DELAY_S = 60.0
"""After start: the intake and the web come first."""


async def retention_days(store: Store) -> int | None:
    """The site's ``retention_days`` (``None``: keep forever, or not a positive whole number)."""
    site = await store.get_meta(SITE_KEY)
    days = site.get("retention_days") if isinstance(site, dict) else None
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        return None
    return days


async def prune_once(store: Store, now: float) -> int | None:
    """Apply the retention setting once; how many slots were dropped (``None``: no setting).
    Power minutes, audit entries, events and log lines before the cut go too (not counted)."""
    days = await retention_days(store)
    if days is None:
        return None
    before = int(now) - days * 86400
    started = time.monotonic()
    dropped = await store.drop_slots_before(before)
    log.info(
        "retention: dropped %d 15-minute slots (and power minutes, audit entries, events and "
        "log lines) older than %d days in %.1f s",
        dropped, days, time.monotonic() - started,
    )  # fmt: skip
    return dropped


async def run_retention(
    store: Store,
    *,
    clock: Callable[[], float] = time.time,
    first_delay: float = RETENTION_FIRST_DELAY_S,
    interval: float = RETENTION_INTERVAL_S,
) -> None:
    """Prune now and then until cancelled; a failed run is logged and retried next time."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            await prune_once(store, clock())
        except StoreError as err:
            log.warning("retention run failed (retrying in %.0f s): %s", interval, err)
        await asyncio.sleep(interval)


__all__ = ["RETENTION_INTERVAL_S", "prune_once", "retention_days", "run_retention"]
