"""Reads in a small thread pool, each thread with its own read-only connection.

In WAL mode a read connection sees the last committed state without waiting for the writer, so a
long write never holds up a query.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from kilowatch.errors import StoreError
from kilowatch.store.sqlite.connection import connect, store_error

T = TypeVar("T")

READ_THREADS = 2
"""Read connections (one per pool thread); the machine this targets has 2 cores."""


class Readers:
    """The read threads of the SQLite file at ``path``: :meth:`start`, :meth:`run` reads,
    :meth:`stop`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    def start(self) -> None:
        """Start the pool (its connections open on each thread's first read)."""
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="kilowatch-sqlite-read")

    def stop(self) -> None:
        """Wait for the reads under way, then close every read connection."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` run on a read thread (``sqlite3`` errors become
        :class:`StoreError`)."""
        if self._pool is None or self._loop is None:
            raise StoreError("the SQLite store is not open; use `async with open_store(url)`")

        def run() -> T:
            try:
                return fn(self._conn())
            except sqlite3.Error as err:
                raise store_error(f"read from {self.path} failed", err) from err

        return await self._loop.run_in_executor(self._pool, run)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn


__all__ = ["READ_THREADS", "Readers"]
