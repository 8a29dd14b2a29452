"""In-process fan-out of fresh readings to live consumers (the web app's SSE stream, CLI watch).

The ingest pipeline publishes; each subscriber has its own bounded queue, and a subscriber that
falls behind loses the oldest *live* updates (never stored data: live values are only a view).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from kilowatch.model.messages import Reading

SUBSCRIBER_QUEUE_SIZE = 256
"""Batches kept per subscriber before the oldest is dropped (a browser tab that sleeps)."""


class LiveHub:
    """Publish batches of readings to any number of subscribers, never blocking the publisher."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[list[Reading]]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, readings: Sequence[Reading]) -> None:
        """Hand ``readings`` to every subscriber (called from the event loop thread)."""
        if not readings or not self._queues:
            return
        batch = list(readings)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(batch)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[list[Reading]]]:
        """``async with hub.subscribe() as queue: batch = await queue.get()``."""
        queue: asyncio.Queue[list[Reading]] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


__all__ = ["LiveHub"]
