"""Where the SQLite file is, how every connection to it is opened, and what its errors become."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from kilowatch.errors import StoreError, UnstorableError

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for a lock held by another process before failing."""


def path_of(url: str) -> Path:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////abs/path.db`` URL."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise StoreError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/file.db or sqlite:////absolute/file.db"
        )
    rest = rest[1:]
    if rest.startswith("~"):
        return Path(rest).expanduser()
    return Path(rest)


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting out locks."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: COMMIT returns once the WAL is fsynced, so a batch whose messages the pipeline then
    # acknowledges survives a power cut (NORMAL syncs only at checkpoints: it survives a crash
    # of kilowatch, but a power cut can lose the last commits)
    conn.execute("PRAGMA synchronous = FULL")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error ``ROLLBACK`` and the error raised as it
    was. SQLite rolls back by itself when the database or disk is full (SQLITE_FULL): a
    ``ROLLBACK`` then fails with "no transaction is active", which must not hide why."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def store_error(what: str, err: sqlite3.Error) -> StoreError:
    """``err`` as a :class:`StoreError` that says ``what`` failed, with a hint when one helps."""
    hint = ""
    if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
        hint = "; another process holds the database; stop it or use another file"
    elif isinstance(err, sqlite3.DatabaseError) and "not a database" in str(err):
        hint = "; the file is not a SQLite database: point --store at another file"
    out = StoreError(f"{what}: {err}{hint}")
    out.__cause__ = err
    return out


def refused_value(what: str, err: BaseException) -> UnstorableError | None:
    """``err`` as an :class:`UnstorableError` when SQLite refused a *value* (retrying the same
    write cannot help), else ``None`` (the file is locked, read-only, full, broken: it may).

    Refused values: an integer beyond 64 bits (``OverflowError``), a string with a lone surrogate
    (``UnicodeEncodeError``), a type SQLite cannot bind, a string or blob over SQLite's length
    limit (``DataError``), a constraint (``IntegrityError``).
    """
    content = isinstance(
        err, OverflowError | UnicodeEncodeError | sqlite3.DataError | sqlite3.IntegrityError
    )
    if isinstance(err, sqlite3.InterfaceError | sqlite3.ProgrammingError):
        # the same classes also say "Cannot operate on a closed database": not a value's fault
        content = str(err).startswith("Error binding parameter")
    if not content:
        return None
    out = UnstorableError(f"{what}: SQLite refused a value: {err}", detail=str(err))
    out.__cause__ = err
    return out


__all__ = ["BUSY_TIMEOUT_MS", "connect", "path_of", "refused_value", "store_error", "transaction"]
