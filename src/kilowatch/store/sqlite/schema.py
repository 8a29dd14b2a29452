"""The SQLite schema: its migrations, in order, and how a file is brought up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kilowatch.errors import StoreError

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE slots (
        device TEXT NOT NULL, channel TEXT NOT NULL, slot INTEGER NOT NULL,
        import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, estimated INTEGER NOT NULL,
        PRIMARY KEY (device, channel, slot)
    ) WITHOUT ROWID;
    CREATE TABLE hours (
        device TEXT NOT NULL, channel TEXT NOT NULL, hour INTEGER NOT NULL,
        import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, estimated INTEGER NOT NULL,
        PRIMARY KEY (device, channel, hour)
    ) WITHOUT ROWID;
    CREATE TABLE channels (
        device TEXT NOT NULL, channel TEXT NOT NULL, PRIMARY KEY (device, channel)
    ) WITHOUT ROWID;
    CREATE TABLE ledger_states (
        device TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL,
        PRIMARY KEY (device, channel)
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        device TEXT PRIMARY KEY, first_seen REAL, last_seen REAL, online INTEGER, mac TEXT,
        model TEXT, gen INTEGER, fw_ver TEXT, available_update TEXT, name TEXT, label TEXT,
        room TEXT, ip TEXT, source TEXT
    );
    CREATE TABLE latest (
        device TEXT NOT NULL, channel TEXT NOT NULL, ts REAL NOT NULL, reading TEXT NOT NULL,
        PRIMARY KEY (device, channel)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, event TEXT NOT NULL
    );
    CREATE INDEX events_device ON events (device, id);
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, line TEXT NOT NULL
    );
    CREATE INDEX logs_device ON logs (device, id);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, topic TEXT NOT NULL,
        payload BLOB NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL
    );
    CREATE TABLE dead_letter_counts (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: day rollups and delta counts, so a local day is ~5 rollup rows instead of 24 hour rows;
    # estimated slots indexed on their own (rollups cannot carry a flag through a subtraction)
    """
    ALTER TABLE slots ADD COLUMN n INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE hours ADD COLUMN n INTEGER NOT NULL DEFAULT 0;
    UPDATE hours SET n = (
        SELECT count(*) FROM slots s WHERE s.device = hours.device AND s.channel = hours.channel
        AND s.slot >= hours.hour AND s.slot < hours.hour + 3600
    );
    CREATE TABLE days (
        device TEXT NOT NULL, channel TEXT NOT NULL, day INTEGER NOT NULL,
        import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (device, channel, day)
    ) WITHOUT ROWID;
    INSERT INTO days SELECT device, channel, hour - hour % 86400, sum(import_mwh),
        sum(export_mwh), sum(n) FROM hours GROUP BY device, channel, hour - hour % 86400;
    CREATE TABLE estimated (
        device TEXT NOT NULL, channel TEXT NOT NULL, slot INTEGER NOT NULL,
        PRIMARY KEY (device, channel, slot)
    ) WITHOUT ROWID;
    INSERT INTO estimated SELECT device, channel, slot FROM slots WHERE estimated = 1;
    """,
    # 3: energy per local day of the site's zone (Store.use_local_zone), and which zone that is
    """
    CREATE TABLE local_days (
        device TEXT NOT NULL, channel TEXT NOT NULL, day INTEGER NOT NULL,
        import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (device, channel, day)
    ) WITHOUT ROWID;
    CREATE TABLE local_zone (zone TEXT NOT NULL, ready INTEGER NOT NULL);
    """,
    # 4: the ids of the last commits, so a batch committed again is not applied twice
    """
    CREATE TABLE commits (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
    """,
    # 5: the fleet registry (Store.register): what discovery found and adoption decided; the
    # deployed script as JSON (it is read and replaced whole)
    """
    CREATE TABLE fleet_devices (
        device TEXT PRIMARY KEY, mac TEXT, model TEXT, fw_ver TEXT, app TEXT, address TEXT,
        transport TEXT, prefix TEXT, credentials TEXT, name TEXT, room TEXT, discovered_by TEXT,
        gen INTEGER, adopted_at REAL, seen_at REAL, script TEXT
    );
    """,
    # 6: minute means of power (Store.power), as whole milliwatts; the audit log
    # (Store.audit_append: each entry's JSON, with its time and action to filter on, and an index
    # by device); the time of each event and log line, so retention can drop them by age
    """
    CREATE TABLE power (
        device TEXT NOT NULL, channel TEXT NOT NULL, minute INTEGER NOT NULL,
        power_mw INTEGER NOT NULL, samples INTEGER NOT NULL,
        PRIMARY KEY (device, channel, minute)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id TEXT PRIMARY KEY, ts REAL NOT NULL, action TEXT NOT NULL, entry TEXT NOT NULL
    );
    CREATE INDEX audit_ts ON audit (ts, id);
    CREATE TABLE audit_devices (
        device TEXT NOT NULL, ts REAL NOT NULL, id TEXT NOT NULL, PRIMARY KEY (device, ts, id)
    ) WITHOUT ROWID;
    ALTER TABLE events ADD COLUMN ts REAL NOT NULL DEFAULT 0;
    UPDATE events SET ts = coalesce(json_extract(event, '$.ts'), 0);
    ALTER TABLE logs ADD COLUMN ts REAL NOT NULL DEFAULT 0;
    UPDATE logs SET ts = coalesce(json_extract(line, '$.ts'), 0);
    """,
)
"""Schema migrations in order; ``schema_version.version`` is how many have been applied."""


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations ``conn``'s file lacks; :class:`StoreError` if it is newer than us."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = 0 if row is None else int(row[0])
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path} has schema version {version}, newer than this kilowatch knows "
            f"({len(MIGRATIONS)}); upgrade kilowatch"
        )
    for number in range(version, len(MIGRATIONS)):
        # executescript commits on its own, so run each migration's statements in one transaction
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


__all__ = ["MIGRATIONS", "migrate"]
