"""A SQLite file of schema 5 (before power minutes, the audit log and event times) is brought up
to date in place when opened: its events and log lines keep their order and gain their times,
which retention then reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kilowatch.model.messages import Event, LogLine
from kilowatch.store import Batch, open_store, records
from kilowatch.store.protocol import AuditEntry, PowerMinute
from kilowatch.store.sqlite import MIGRATIONS

DEV = "shellypmminig3-ecda3bc4ddb0"


def schema_5_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in MIGRATIONS[:5]:
        for statement in migration.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (5)")
    for t in (3000.0, 4000.0, 5000.0):
        event = Event(DEV, t, "sys", "tick", {"t": t})
        conn.execute(
            "INSERT INTO events (device, event) VALUES (?, ?)",
            (DEV, records.event_dumps(event).decode()),
        )
        line = LogLine(DEV, t, f"line {t}")
        conn.execute(
            "INSERT INTO logs (device, line) VALUES (?, ?)", (DEV, records.log_dumps(line).decode())
        )
    conn.close()


async def test_a_schema_5_file_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    schema_5_file(path)
    async with open_store(f"sqlite:///{path}") as store:
        assert [e.ts for e in await store.events(DEV)] == [5000.0, 4000.0, 3000.0]
        await store.commit(
            Batch(
                events=[Event(DEV, 7300.0, "sys", "tick")],
                power=[PowerMinute(DEV, "pm1:0", 7200, 3.5, 2)],
            )
        )
        await store.audit_append([AuditEntry(id="a", ts=7300.0, actor="service", action="x")])
        await store.drop_slots_before(3600 + 250)  # the cut is a whole hour: 3600
        assert [e.ts for e in await store.events(DEV)] == [7300.0, 5000.0, 4000.0]
        assert [x.ts for x in await store.logs(DEV)] == [5000.0, 4000.0]
        assert await store.power(DEV, start=0, end=8000) == [
            PowerMinute(DEV, "pm1:0", 7200, 3.5, 2)
        ]
        assert [e.id for e in await store.audit()] == ["a"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS),)
    assert conn.execute("SELECT ts FROM logs ORDER BY id").fetchall() == [(4000.0,), (5000.0,)]
    conn.close()
