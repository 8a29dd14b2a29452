"""kilowatch.store: where energy, devices and everything else kilowatch keeps live.

``async with open_store(url) as store`` gives a :class:`Store` (``store.protocol``): SQLite
(``sqlite:///file.db``), Redis (``redis://``, ``rediss://``) or Redis Cluster (several hosts in the
URL). What is asked of it is :mod:`kilowatch.query`'s vocabulary. See docs/storage.md.
"""

from __future__ import annotations

from kilowatch.store.protocol import (
    AuditEntry,
    Batch,
    DeadLetter,
    DeployedScript,
    DeviceRecord,
    DeviceUpdate,
    PowerMinute,
    Registration,
    Store,
)
from kilowatch.store.url import scheme_of


def open_store(url: str) -> Store:
    """The store at ``url``, to be used as ``async with open_store(url) as store``.

    Raises :class:`~kilowatch.errors.StoreError` for an unknown scheme or a malformed URL;
    connection errors surface when the context is entered.
    """
    scheme = scheme_of(url)
    if scheme == "sqlite":
        from kilowatch.store.sqlite import SqliteStore

        return SqliteStore(url)
    from kilowatch.store.redis import RedisStore

    return RedisStore(url)


__all__ = [
    "AuditEntry",
    "Batch",
    "DeadLetter",
    "DeployedScript",
    "DeviceRecord",
    "DeviceUpdate",
    "PowerMinute",
    "Registration",
    "Store",
    "open_store",
]
