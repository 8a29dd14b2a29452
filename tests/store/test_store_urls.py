"""Store URLs, opening errors and the SQLite file itself."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest

from kilowatch.errors import StoreError
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, open_store
from kilowatch.store.sqlite import MIGRATIONS
from kilowatch.store.url import parse_redis
from kilowatch.testing import free_port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://localhost/db", "unknown store URL"),
        ("kilowatch.db", "unknown store URL"),
        ("sqlite://relative.db", "bad SQLite URL"),
        ("redis://localhost:port/0", "not a number"),
        ("redis://localhost:99999/0", "out of range"),
        ("redis://:6379/0", "missing host"),
        ("redis://localhost:6379/zero", "database must be a number"),
        ("redis://a:1,b:2/3", "only database 0"),
        ("redis://localhost/0?colour=red", "unknown option 'colour'"),
        ("redis://localhost/0?ca=/ca.pem", "need the rediss:// scheme"),
        ("redis://localhost/0?prefix=", "prefix must be non-empty"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        if url.startswith("redis"):
            parse_redis(url)
        else:
            open_store(url)


def test_redis_urls_parse() -> None:
    t = parse_redis(
        "rediss://user:p%40ss@cache.example:6380/2?prefix=meters&ca=/etc/ca.pem"
        "&cert=/c.pem&key=/k.pem&verify=none&check_hostname=false"
    )
    assert (t.hosts, t.db, t.username, t.password, t.tls, t.prefix) == (
        (("cache.example", 6380),),
        2,
        "user",
        "p@ss",
        True,
        "meters",
    )
    assert t.tls_options == {
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
        "ssl_cert_reqs": "none",
        "ssl_check_hostname": False,
    }
    c = parse_redis("redis://:secret@h1:7000,h2:7001,h3/0")
    assert c.cluster and c.hosts == (("h1", 7000), ("h2", 7001), ("h3", 6379))
    assert c.password == "secret" and c.prefix == "energy"


async def test_unreachable_redis_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="is redis-server running there"):
        async with open_store(f"redis://127.0.0.1:{free_port()}/0"):
            pass


async def test_wrong_redis_password_is_a_store_error() -> None:
    from kilowatch.testing import RedisServer

    with RedisServer(password="right") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(StoreError) as info:
            async with open_store(url):
                pass
        assert ":***@" in str(info.value) and ":wrong@" not in str(info.value)
        assert "check the password" in str(info.value)


async def test_sqlite_relative_path_creates_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///var/lib/kw/energy.db") as store:
        await store.commit(Batch(slots=[SlotEnergy("d", "c", 0, 5, 0)]))
    assert (tmp_path / "var/lib/kw/energy.db").is_file()
    conn = sqlite3.connect(tmp_path / "var/lib/kw/energy.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS),)
    conn.close()


async def test_sqlite_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("this is not SQLite " * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        async with open_store(f"sqlite:///{path}"):
            pass
    assert path.read_text().startswith("this is not SQLite")


async def test_sqlite_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with open_store(f"sqlite:///{path}"):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        async with open_store(f"sqlite:///{path}"):
            pass


async def test_sqlite_reads_do_not_wait_for_a_long_write(tmp_path: Path) -> None:
    """WAL + separate read connections: a query answers while another connection writes."""
    path = tmp_path / "kw.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.commit(Batch(slots=[SlotEnergy("d", "c", 0, 5, 0)]))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO meta VALUES ('x', '1')")
        rows = await store.energy(
            EnergyQuery(by="day", tz="UTC", start=date(1970, 1, 1), end=date(1970, 1, 2))
        )
        other.execute("ROLLBACK")
        other.close()
        assert [r.energy_wh for r in rows] == [0.005]


async def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    """A file written by schema 1 (no day rollups) is migrated in place and answers the same."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in MIGRATIONS[0].split(";"):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    t0 = 1780272000  # 2026-06-01T00:00Z
    for i in range(200):
        conn.execute("INSERT INTO slots VALUES ('d', 'c', ?, 1000, 0, ?)", (t0 + i * 900, i == 150))
        conn.execute(
            "INSERT INTO hours VALUES ('d', 'c', ?, 1000, 0, ?) ON CONFLICT DO UPDATE SET "
            "import_mwh = import_mwh + 1000, estimated = estimated | excluded.estimated",
            (t0 + i * 900 - i * 900 % 3600, i == 150),
        )
    conn.execute("INSERT INTO channels VALUES ('d', 'c')")
    conn.close()
    async with open_store(f"sqlite:///{path}") as store:
        rows = await store.energy(
            EnergyQuery(by="day", tz="Europe/Sofia", start=date(2026, 6, 1), end=date(2026, 6, 4))
        )
    # Sofia is UTC+3 in June: local 2026-06-01 starts at 21:00Z the day before
    assert [(r.start.day, r.energy_wh, r.estimated) for r in rows] == [
        (1, 84.0, False),
        (2, 96.0, True),
        (3, 20.0, False),
    ]


async def test_rediss_to_a_plain_server_is_a_store_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS is really used for rediss:// (a plain server cannot complete the handshake), and the
    open is bounded in time."""
    from kilowatch.store.redis import store as redis_store

    monkeypatch.setattr(redis_store, "OPEN_TIMEOUT_S", 1.0)
    tls_url = redis_url.replace("redis://", "rediss://") + "?verify=none"
    with pytest.raises(StoreError, match="cannot open the Redis store"):
        async with open_store(tls_url):
            pass
