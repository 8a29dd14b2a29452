"""SQLite: what the pipeline acknowledges survives a power cut (``synchronous=FULL`` in WAL mode),
and the ids of the last commits are kept in the same transaction, pruned, so a batch committed
again is a no-op (the conformance suite checks the rule on every backend)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
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


async def test_a_full_database_says_so_and_takes_the_batch_once_there_is_room(
    tmp_path: Path,
) -> None:
    """SQLite rolls a transaction back by itself when the database is full: the error must say
    "full" (not "cannot rollback - no transaction is active"), nothing of the batch is stored,
    and the same batch commits whole once there is room again."""
    from kilowatch.errors import StoreError
    from kilowatch.store.sqlite import SqliteStore

    big = Batch(slots=[SlotEnergy(f"dev-{i}", "switch:0", 1_761_177_600 + 900 * (i % 96),
                                  1_000 + i, 0) for i in range(3_000)])  # fmt: skip
    async with open_store(f"sqlite:///{tmp_path}/full.db") as store:
        assert isinstance(store, SqliteStore)

        def pragma(value: int | None) -> Callable[[sqlite3.Connection], int]:
            sql = "PRAGMA max_page_count" + ("" if value is None else f" = {value}")
            return lambda conn: int(conn.execute(sql).fetchone()[0])

        limit = await store._writer.run(pragma(None))
        await store._writer.run(pragma(1))  # clamped to the pages the file has now
        with pytest.raises(StoreError, match="full"):
            await store.commit(big)
        assert await store.energy(DAY_QUERY) == []
        await store._writer.run(pragma(limit))
        await store.commit(big)
        rows = await store.energy(DAY_QUERY)
        assert sum(r.energy_wh for r in rows) * 1000 == pytest.approx(
            sum(s.import_mwh for s in big.slots)
        )


DAY_QUERY = EnergyQuery(by="day", tz="UTC", start=date(2025, 10, 20), end=date(2025, 10, 26))
