"""kilowatch.store.sqlite: the SQLite backend: one file in WAL mode, one writer thread fed by a
queue, reads on their own connections.

``store``: :class:`SqliteStore`, which puts the rest together; ``connection``: the file of a URL,
how a connection is opened (pragmas), sqlite3 errors as ``StoreError``; ``schema``: the migrations;
``writer``: the one thread that writes, fed by a queue; ``readers``: the read pool, a read-only
connection per thread; ``commit``: a ``Batch`` applied in one transaction (slots, hour, day and
local-day rollups); ``buckets``: the SQL that buckets energy rows; ``energy``: energy queries;
``local_days``: the local zone and its per-channel rebuild; ``retention``: old slots dropped;
``devices``, ``journal`` (events, logs, dead letters) and ``meta`` (ledger states, settings): the
other tables, written and read.
"""

from kilowatch.store.sqlite.connection import path_of
from kilowatch.store.sqlite.schema import MIGRATIONS
from kilowatch.store.sqlite.store import SqliteStore

__all__ = ["MIGRATIONS", "SqliteStore", "path_of"]
