"""What kilowatch keeps for itself: the ledger's state per channel and the ``meta`` table (the
web app's settings, users and tokens), both as JSON."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from kilowatch.model.slots import ChannelKey
from kilowatch.store import records


def put_ledger_states(
    conn: sqlite3.Connection, states: Mapping[ChannelKey, dict[str, Any]]
) -> None:
    """Each channel's ledger state, replacing the stored one."""
    conn.executemany(
        "INSERT INTO ledger_states VALUES (?, ?, ?) "
        "ON CONFLICT DO UPDATE SET state = excluded.state",
        [(d, c, records.dumps(state).decode()) for (d, c), state in states.items()],
    )


def ledger_states(conn: sqlite3.Connection) -> dict[ChannelKey, dict[str, Any]]:
    """Every channel's ledger state."""
    cur = conn.execute("SELECT device, channel, state FROM ledger_states")
    return {(d, c): records.loads(s) for d, c, s in cur}


def put_meta(conn: sqlite3.Connection, key: str, raw: str) -> None:
    """``key`` set to the JSON ``raw``."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT DO UPDATE SET value = excluded.value",
        (key, raw),
    )


def get_meta(conn: sqlite3.Connection, key: str) -> Any | None:
    """The value of ``key``, ``None`` if it was never set."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else records.loads(row[0])


__all__ = ["get_meta", "ledger_states", "put_ledger_states", "put_meta"]
