"""Device logs and events as they arrive: the tail of the store's bounded lists.

The store keeps each device's debug-log lines and events newest first (``Store.logs``,
``Store.events``; :data:`kilowatch.store.records.LOGS_PER_DEVICE` of each), and gives them without
an id. What is new since a previous read is found by the *stored order*, not by time: a device's
clock may jump, lines may share a timestamp, and a line the decoder could not split carries the
time it was received. New items only ever go on top of a list (and the oldest drop off its end),
so the newest items seen before appear, in the same order, somewhere below the new ones.
:func:`newer` finds where; :class:`Tail` reads a list again and again with it (``kilowatch logs
--follow``, the device page's live stream).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kilowatch.model.messages import Event, LogLine
from kilowatch.store.protocol import Store
from kilowatch.store.records import LOGS_PER_DEVICE

T = TypeVar("T", LogLine, Event)

FOLLOW_INTERVAL_S = 1.0
"""How often a follower reads the store again."""
POLL_LIMIT = 100
"""Items a follower reads each time; when the items it saw last are not among them (more arrived
in between), it reads :data:`POLL_LIMIT_MAX`."""
POLL_LIMIT_MAX = LOGS_PER_DEVICE
"""As many as the store keeps of a device (events are kept as many)."""
SEEN_KEPT = 50
"""The newest items seen that a follower compares (an overlap this long cannot be mistaken)."""
LOG_LEVELS = {0: "error", 1: "warn", 2: "info", 3: "debug", 4: "verbose"}
"""The names of a device's log levels (``sys.debug.level``, the number after the time in a
line: Mongoose OS' LL_ERROR … LL_VERBOSE_DEBUG)."""


def newer(seen: Sequence[T], current: Sequence[T], *, min_overlap: int = 1) -> list[T] | None:
    """The items of ``current`` stored after every item of ``seen``, newest first.

    Both are newest-first reads of the same list, ``seen`` the earlier one (or its newest part).
    Returns ``current``'s items above the first place where ``seen`` continues, item for item, to
    the end of ``current`` (so equal lines, even in a row, are told apart by their neighbours),
    or ``None`` when ``seen`` is not in ``current``: more arrived than ``current`` holds. A place
    counts only where at least ``min_overlap`` items (or all of ``seen``) line up: a read cut at
    its limit may end with a line equal to the newest seen by chance. An empty ``seen`` makes
    everything new.
    """
    if not seen:
        return list(current)
    need = min(min_overlap, len(seen))
    for at in range(len(current) - need + 1):
        overlap = min(len(seen), len(current) - at)
        if all(current[at + k] == seen[k] for k in range(overlap)):
            return list(current[:at])
    return None


@dataclass(frozen=True, slots=True)
class Fresh(Generic[T]):
    """What one read of a :class:`Tail` found: ``items`` new since the previous read, newest
    first; ``gap`` when more arrived than the store kept or than one read holds, so some were
    missed between ``items`` and what was read before."""

    items: list[T]
    gap: bool = False


class Tail(Generic[T]):
    """Follow one newest-first list of the store: :meth:`start` reads the newest, each
    :meth:`poll` what was stored since, none twice and none missed while fewer than
    :data:`POLL_LIMIT_MAX` arrive between two polls.

    ``fetch(limit)`` reads the newest ``limit`` items (``functools.partial(store.logs, device)``
    gives ``fetch(limit=...)``; see :func:`log_tail` and :func:`event_tail`).
    """

    def __init__(self, fetch: Callable[[int], Awaitable[list[T]]]) -> None:
        self._fetch: Callable[[int], Awaitable[list[T]]] = fetch
        self._seen: list[T] = []

    async def start(self, limit: int) -> list[T]:
        """The newest ``limit`` items (newest first); later polls give what comes after them."""
        items = await self._fetch(limit)
        if len(items) < SEEN_KEPT and len(items) == limit:
            # a short first read: compare against a longer stretch, so equal lines cannot fool it
            self._seen = (await self._fetch(SEEN_KEPT))[:SEEN_KEPT]
        else:
            self._seen = items[:SEEN_KEPT]
        return items

    async def poll(self) -> Fresh[T]:
        """What was stored since the previous read, newest first."""
        current = await self._fetch(POLL_LIMIT)
        # A short read must hold all of the newest seen; else read as much as the store keeps,
        # where the oldest of them may have dropped off the end.
        cut = len(current) >= POLL_LIMIT
        fresh = newer(self._seen, current, min_overlap=SEEN_KEPT if cut else 1)
        if fresh is None and cut:
            current = await self._fetch(POLL_LIMIT_MAX)
            fresh = newer(self._seen, current)
        gap = fresh is None
        if fresh is None:
            fresh = list(current)
        if current:
            self._seen = list(current[:SEEN_KEPT])
        return Fresh(fresh, gap)


def log_tail(store: Store, device: str) -> Tail[LogLine]:
    """A :class:`Tail` of ``device``'s debug-log lines."""

    async def fetch(limit: int) -> list[LogLine]:
        return await store.logs(device, limit=limit)

    return Tail(fetch)


def event_tail(store: Store, device: str) -> Tail[Event]:
    """A :class:`Tail` of ``device``'s events."""

    async def fetch(limit: int) -> list[Event]:
        return await store.events(device, limit=limit)

    return Tail(fetch)


__all__ = [
    "FOLLOW_INTERVAL_S",
    "LOG_LEVELS",
    "POLL_LIMIT",
    "POLL_LIMIT_MAX",
    "Fresh",
    "Tail",
    "event_tail",
    "log_tail",
    "newer",
]
