"""SQLite: what the pipeline acknowledges survives a power cut (``synchronous=FULL`` in WAL mode),
and the ids of the last commits are kept in the same transaction, pruned, so a batch committed
again is a no-op (the conformance suite checks the rule on every backend)."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, open_store
from kilowatch.store.sqlite import commit as commit_module
from kilowatch.store.sqlite.connection import connect

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = EnergyQuery(by="day", tz="UTC", start=date(2026, 1, 1), end=date(2026, 1, 2))


def test_connections_sync_every_commit(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        conn.close()


async def test_commit_ids_are_pruned_to_the_last_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit_module, "COMMITS_KEPT", 3)
    path = tmp_path / "x.db"
    batches = [Batch(slots=[SlotEnergy("d", "c", T0 + 900 * k, 1_000, 0)]) for k in range(5)]
    async with open_store(f"sqlite:///{path}") as store:
        for b in batches:
            await store.commit(b)
        await store.commit(batches[-1])  # among the last 3: not again
        assert [r.energy_wh for r in await store.energy(DAY)] == [5.0]
        await store.commit(batches[0])  # forgotten: a new commit
        assert [r.energy_wh for r in await store.energy(DAY)] == [6.0]
    conn = sqlite3.connect(path)
    try:
        kept = [row[0] for row in conn.execute("SELECT id FROM commits ORDER BY seq")]
    finally:
        conn.close()
    assert kept == [batches[3].commit_id, batches[4].commit_id, batches[0].commit_id]
