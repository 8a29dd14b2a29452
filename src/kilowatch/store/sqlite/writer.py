"""The one thread that writes: jobs (functions of its connection) queued from the event loop.

Being the only connection that writes, it never meets a ``database is locked`` from our own
writers; jobs run one at a time, in the order they were queued, so a job sees every earlier one's
work. Each job's result (or error) is handed back to the coroutine that awaits it on the loop.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kilowatch.errors import StoreError
from kilowatch.store.sqlite.connection import connect, store_error

T = TypeVar("T")


class Writer:
    """The writer thread of the SQLite file at ``path``: :meth:`start`, :meth:`run` jobs,
    :meth:`stop`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Any] | None] = (
            queue.Queue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Open the connection in a new thread and run ``setup`` on it before any job.

        Raises :class:`StoreError` when the file cannot be opened or ``setup`` fails (``setup``'s
        own :class:`StoreError` as it is, a ``sqlite3`` error translated).
        """
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(setup, ready), name="kilowatch-sqlite-writer", daemon=True
        )
        self._thread.start()
        await ready

    async def stop(self) -> None:
        """Let the queued jobs run, then close the connection and end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` run in the writer thread, after every job queued before it."""
        if self._thread is None or self._loop is None:
            raise StoreError("the SQLite store is not open; use `async with open_store(url)`")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, fut))
        return await fut

    def _work(
        self, setup: Callable[[sqlite3.Connection], None], ready: asyncio.Future[None]
    ) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            conn = connect(self.path)
            setup(conn)
        except (sqlite3.Error, StoreError) as err:
            failed = (
                err if isinstance(err, StoreError) else store_error(f"cannot open {self.path}", err)
            )
            loop.call_soon_threadsafe(_settle, ready, None, failed)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, fut = job
                error: BaseException | None = None
                try:
                    result: Any = fn(conn)
                except sqlite3.Error as err:
                    result, error = None, store_error(f"write to {self.path} failed", err)
                except Exception as err:  # any other failure is handed to the awaiting coroutine
                    result, error = None, err
                loop.call_soon_threadsafe(_settle, fut, result, error)
        finally:
            conn.close()


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the awaiting coroutine was cancelled; the write still happened (or not)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


__all__ = ["Writer"]
