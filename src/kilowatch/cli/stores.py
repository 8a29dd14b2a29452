"""The store as commands open it: those that only read refuse a store that is not there.

Opening a SQLite URL creates its directory and an empty database, which is right for ``serve``
and ``user add`` and wrong for ``energy`` or ``devices``: they would answer from nothing and
exit 0, and leave a stray file behind a typo. Commands that read open the store with
:func:`open_existing`; commands that write keep :func:`kilowatch.store.open_store`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from kilowatch.errors import ConfigError, StoreError
from kilowatch.store import Store, open_store
from kilowatch.store.sqlite import path_of
from kilowatch.store.url import scheme_of

MAX_LISTED_DEVICES = 20
"""Up to this many known devices, an unknown ``--device`` error lists them all."""


def open_existing(url: str) -> Store:
    """:func:`~kilowatch.store.open_store` for a command that reads what is stored.

    A SQLite URL whose file does not exist raises :class:`StoreError` before anything is created
    (no directory, no file). Redis URLs open as usual: a Redis database has no file to check.
    """
    if scheme_of(url) == "sqlite":
        path = path_of(url)
        if not path.exists():
            raise StoreError(
                f"no store at {path}: the file does not exist (store URL {url}); check --store "
                "and KILOWATCH_STORE, or run kilowatch serve first to create it"
            )
    return open_store(url)


def check_devices(asked: Sequence[str], known: Collection[str]) -> None:
    """:class:`ConfigError` if a device of ``--device`` is not among the ``known`` device ids.

    The message lists the known ids when there are few (a typo is then easy to see), else it
    points to ``kilowatch devices``.
    """
    unknown = [d for d in asked if d not in known]
    if not unknown:
        return
    what = f"unknown --device {', '.join(repr(d) for d in unknown)}"
    if not known:
        raise ConfigError(
            f"{what}: the store has no devices yet; kilowatch serve records them as they report"
        )
    if len(known) <= MAX_LISTED_DEVICES:
        raise ConfigError(f"{what}; the store knows: {', '.join(sorted(known))}")
    raise ConfigError(
        f"{what}: not among the store's {len(known)} devices; kilowatch devices lists them"
    )


__all__ = ["MAX_LISTED_DEVICES", "check_devices", "open_existing"]
