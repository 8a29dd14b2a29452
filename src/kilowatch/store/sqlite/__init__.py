"""kilowatch.store.sqlite: the SQLite backend (one file, WAL, one writer thread, reads on their own
connections).

``store``: :class:`SqliteStore`, the :class:`~kilowatch.store.protocol.Store`.
"""

from kilowatch.store.sqlite.store import MIGRATIONS, SqliteStore, path_of

__all__ = ["MIGRATIONS", "SqliteStore", "path_of"]
