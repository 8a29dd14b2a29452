"""The fleet registry (``Store.register``/``registry``/``unregister``) on every backend, how it
shows in ``devices()``, and on Redis the seed's own ``device:<MAC>`` and ``script:<MAC>`` keys.

The ``store``, ``store_url`` and ``redis_store`` fixtures (tests/store/conftest.py) run each test
against SQLite, Redis and a Redis Cluster, as the conformance suite does.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from kilowatch.errors import StoreError, UnstorableError
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import (
    Batch,
    DeployedScript,
    DeviceUpdate,
    Registration,
    Store,
    open_store,
)
from kilowatch.store.redis import RedisStore
from kilowatch.store.sqlite import MIGRATIONS

DEV = "shellypmminig3-ecda3bc4ddb0"
MAC = "ECDA3BC4DDB0"
PRO = "shellypro3em-a0b1c2d3e4f5"
SHA = hashlib.sha256(b"let x = 1;").hexdigest()
SCRIPT = DeployedScript("kilowatch-hourly", "3", SHA, script_id=1, deployed_at=1765000000.5)
T0 = 1780272000  # 2026-06-01T00:00Z


def full(device: str = DEV, **changes: object) -> Registration:
    values: dict[str, object] = {
        "mac": MAC, "model": "S3PM-001PCEU16", "gen": 3, "fw_ver": "1.4.4", "app": "MiniPMG3",
        "address": "127.0.1.7:80", "transport": "lan", "prefix": DEV, "credentials": DEV,
        "name": "Boiler", "room": "Bathroom", "discovered_by": "scan", "adopted_at": 1765000000.25,
        "seen_at": 1765000100.0, "script": SCRIPT,
    }  # fmt: skip
    values.update(changes)
    return Registration(device, **values)  # type: ignore[arg-type]


# -- register, registry, unregister ----------------------------------------------------------------


async def test_register_round_trips_every_field(store: Store) -> None:
    reg = full()
    assert DEV < PRO
    await store.register([Registration(PRO), reg])
    assert await store.registry() == [reg, Registration(PRO)]  # sorted by id


async def test_none_keeps_empty_text_clears_and_script_none_keeps(store: Store) -> None:
    await store.register([full()])
    await store.register([Registration(DEV, fw_ver="1.5.0", name="", address="127.0.1.8")])
    (got,) = await store.registry()
    assert got == full(fw_ver="1.5.0", name=None, address="127.0.1.8")
    assert got.script == SCRIPT  # script=None keeps the stored one
    newer = DeployedScript("kilowatch-hourly", None, SHA.upper())
    await store.register([Registration(DEV, script=newer)])
    (got,) = await store.registry()
    # replaced whole (no field of the old one kept), the hash normalised to lower case
    assert got.script == DeployedScript("kilowatch-hourly", None, SHA)
    assert got.model == "S3PM-001PCEU16"


async def test_a_device_named_twice_in_one_call_ends_as_the_last_says(store: Store) -> None:
    await store.register([Registration(DEV, name="a", room="r"), Registration(DEV, name="b")])
    assert await store.registry() == [Registration(DEV, mac=None, name="b", room="r")]


async def test_mac_is_normalised(store: Store) -> None:
    await store.register([Registration(DEV, mac="ec:da:3b:c4:dd:b0")])
    assert (await store.registry())[0].mac == MAC


async def test_unregister_removes_only_the_registration(store: Store) -> None:
    await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", T0, 1000, 0, False)]))
    await store.register([full(), full(PRO, mac=None)])
    assert await store.unregister(DEV) is True
    assert await store.unregister(DEV) is False
    assert await store.unregister("never registered") is False
    assert [r.device for r in await store.registry()] == [PRO]
    rows = await store.energy(
        EnergyQuery(
            by="day",
            tz="UTC",
            start=datetime(2026, 6, 1, tzinfo=UTC),
            end=datetime(2026, 6, 2, tzinfo=UTC),
        )
    )
    assert [(r.device, r.energy_wh) for r in rows] == [(DEV, 1.0)]  # energy stays
    record = await store.device(DEV)
    assert record is not None and record.name is None  # its registry name went with it


async def test_500_devices_in_one_call(store: Store) -> None:
    regs = [
        Registration(f"shellypmminig3-{i:012x}", model="S3PM-001PCEU16", gen=3,
                     address=f"127.0.{1 + i // 250}.{1 + i % 250}", name=f"meter {i}")
        for i in range(500)
    ]  # fmt: skip
    started = time.perf_counter()
    await store.register(regs)
    took = time.perf_counter() - started
    got = await store.registry()
    assert got == sorted(regs, key=lambda r: r.device)
    assert len(await store.devices()) == 500
    # one transaction or two pipelined round trips, not 500: well under a second on loopback
    assert took < 2.0, took
    # and again, as an update of every one
    await store.register([Registration(r.device, fw_ver="1.5.0") for r in regs])
    assert {r.fw_ver for r in await store.registry()} == {"1.5.0"}


BAD_IDS = ["", "with space", "tab\there", "line\nbreak", "bell\x07", "\ud800"]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_device_ids_are_refused_and_nothing_is_stored(store: Store, bad: str) -> None:
    with pytest.raises(UnstorableError, match="device id"):
        await store.register([Registration(PRO), Registration(bad)])
    assert await store.registry() == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Registration(DEV, mac="not-a-mac"), "mac"),
        (Registration(DEV, gen=True), "gen"),
        (Registration(DEV, gen=2**64), "gen"),
        (Registration(DEV, seen_at=float("nan")), "seen_at"),
        (Registration(DEV, name=3), "name"),  # type: ignore[arg-type]
        (Registration(DEV, room="\udc80"), "room"),
        (Registration(DEV, script=DeployedScript("x", "1", "abc")), "sha256"),
        (Registration(DEV, script=DeployedScript("", "1", SHA)), "script.name"),
        (Registration(DEV, script=DeployedScript("x", "1", SHA, script_id=1.5)), "script_id"),  # type: ignore[arg-type]
    ],
)
async def test_bad_fields_are_refused_and_nothing_is_stored(
    store: Store, bad: Registration, field: str
) -> None:
    await store.register([Registration(DEV, name="kept")])
    with pytest.raises(UnstorableError, match=field) as caught:
        await store.register([Registration(PRO), bad])
    assert DEV in str(caught.value)
    assert await store.registry() == [Registration(DEV, name="kept")]


async def test_the_registry_survives_retention(store: Store) -> None:
    await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", T0 + i * 900, 1, 0, False)
                                    for i in range(8)]))  # fmt: skip
    await store.register([full()])
    assert await store.drop_slots_before(T0 + 86400) == 8
    assert await store.registry() == [full()]


async def test_registry_persists_across_reopening(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.register([full()])
    async with open_store(store_url) as store:
        assert await store.registry() == [full()]


# -- devices() and device() show the registry ------------------------------------------------------


async def test_a_registered_device_that_never_published_is_listed(store: Store) -> None:
    await store.register([full()])
    (record,) = await store.devices()
    assert (record.device, record.name, record.room, record.model, record.gen) == (
        DEV, "Boiler", "Bathroom", "S3PM-001PCEU16", 3,
    )  # fmt: skip
    assert (record.fw_ver, record.mac, record.ip) == ("1.4.4", MAC, "127.0.1.7")
    assert record.channels == ()
    assert record.online is None and record.last_seen is None
    assert await store.device(DEV) == record
    assert await store.device(PRO) is None


async def test_registry_name_wins_over_the_reported_one_and_label_over_both(
    store: Store,
) -> None:
    update = DeviceUpdate(DEV, last_seen=100.0, name="shelly reported", model="S3PM-REAL",
                          fw_ver="1.6.0", ip="127.0.1.99")  # fmt: skip
    await store.commit(Batch(devices=[update]))
    await store.commit(Batch(devices=[DeviceUpdate(PRO, name="pro reported")]))
    await store.register([full(), Registration(PRO, room="Garage")])
    record = await store.device(DEV)
    assert record is not None
    assert (record.name, record.label, record.room) == ("Boiler", None, "Bathroom")
    # what the device itself reports wins over what discovery saw
    assert (record.model, record.fw_ver, record.ip, record.gen) == (
        "S3PM-REAL", "1.6.0", "127.0.1.99", 3,
    )  # fmt: skip
    assert record.last_seen == 100.0
    await store.set_device_label(DEV, label="My boiler", room="Cellar")
    record = await store.device(DEV)
    assert record is not None
    assert (record.name, record.label, record.room) == ("Boiler", "My boiler", "Cellar")
    pro = await store.device(PRO)
    assert pro is not None and (pro.name, pro.room) == ("pro reported", "Garage")
    assert [d.device for d in await store.devices()] == [DEV, PRO]


async def test_ipv6_and_bare_host_addresses_show_as_ip(store: Store) -> None:
    await store.register([Registration(DEV, address="[::1]:8080"), Registration(PRO, address="h")])
    assert [d.ip for d in await store.devices()] == ["::1", "h"]


# -- SQLite: the migration -------------------------------------------------------------------------


async def test_sqlite_file_of_schema_4_gets_the_registry_table(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in MIGRATIONS[:4]:
        for statement in migration.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (4)")
    conn.execute("INSERT INTO devices (device, name) VALUES (?, 'kept')", (DEV,))
    conn.close()
    async with open_store(f"sqlite:///{path}") as store:
        record = await store.device(DEV)
        assert record is not None and record.name == "kept"
        await store.register([full()])
        assert await store.registry() == [full()]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS),)
    conn.close()


# -- Redis: the registry's keys and the seed's -----------------------------------------------------


@pytest.fixture
def plain(redis_store_url: str) -> Iterator[redis.Redis | redis.RedisCluster]:
    """A plain redis-py client: the seed's tools read the keys with it."""
    hosts = redis_store_url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split(",")
    host, port = hosts[0].rsplit(":", 1)
    client: redis.Redis | redis.RedisCluster
    if len(hosts) > 1:
        client = redis.RedisCluster(host=host, port=int(port), decode_responses=True)
    else:
        client = redis.Redis(host=host, port=int(port), decode_responses=True)
    yield client
    client.close()


async def test_redis_writes_the_seed_keys(
    redis_store: RedisStore, plain: redis.Redis | redis.RedisCluster
) -> None:
    await redis_store.register([full()])
    assert plain.hgetall(f"device:{MAC}") == {
        "id": DEV, "mac": MAC, "model": "S3PM-001PCEU16", "gen": "3", "fw_ver": "1.4.4",
        "app": "MiniPMG3", "name": "Boiler", "address": "127.0.1.7:80", "prefix": DEV,
        "room": "Bathroom",
    }  # fmt: skip
    assert plain.hgetall(f"script:{MAC}") == {
        "name": "kilowatch-hourly", "version": "3", "sha256": SHA, "script_id": "1",
        "deployed_at": "1765000000.5", "id": DEV,
    }  # fmt: skip
    assert plain.smembers("energy:kw:registry") == {DEV}
    stored = plain.hgetall("energy:kw:device:{" + DEV + "}:registry")
    assert stored["name"] == "Boiler" and stored["credentials"] == DEV
    # no secrets anywhere: only the reference
    assert not any("password" in k for k in stored)


async def test_redis_seed_keys_follow_updates_and_unregister(
    redis_store: RedisStore, plain: redis.Redis | redis.RedisCluster
) -> None:
    # registered without a MAC: named by its Shelly id's MAC; no script yet
    await redis_store.register([Registration(DEV, name="Boiler", room="Bathroom")])
    assert plain.hgetall(f"device:{MAC}") == {
        "id": DEV, "mac": MAC, "name": "Boiler", "room": "Bathroom",
    }  # fmt: skip
    assert plain.exists(f"script:{MAC}") == 0
    # an ingest field the registry does not own stays; a cleared one goes
    plain.hset(f"device:{MAC}", "ip", "127.0.1.7")
    await redis_store.register([Registration(DEV, room="", fw_ver="1.5.0", script=SCRIPT)])
    assert plain.hgetall(f"device:{MAC}") == {
        "id": DEV, "mac": MAC, "name": "Boiler", "fw_ver": "1.5.0", "ip": "127.0.1.7",
    }  # fmt: skip
    assert plain.hget(f"script:{MAC}", "sha256") == SHA
    # a script without version or slot: the old fields do not linger
    await redis_store.register([Registration(DEV, script=DeployedScript("other", None, SHA))])
    assert plain.hgetall(f"script:{MAC}") == {"name": "other", "sha256": SHA, "id": DEV}
    # a MAC that differs from the id's: the seed keys move
    await redis_store.register([Registration(DEV, mac="A0B1C2D3E4F5")])
    assert plain.exists(f"device:{MAC}") == 0 and plain.exists(f"script:{MAC}") == 0
    assert plain.hget("device:A0B1C2D3E4F5", "name") == "Boiler"
    assert plain.hget("script:A0B1C2D3E4F5", "name") == "other"
    assert await redis_store.unregister(DEV) is True
    assert plain.exists("device:A0B1C2D3E4F5") + plain.exists("script:A0B1C2D3E4F5") == 0
    assert plain.smembers("energy:kw:registry") == set()
    assert plain.exists("energy:kw:device:{" + DEV + "}:registry") == 0


async def test_redis_device_without_any_mac_gets_no_seed_keys(
    redis_store: RedisStore, plain: redis.Redis | redis.RedisCluster
) -> None:
    await redis_store.register([Registration("tasmota_kitchen", name="Kitchen", script=SCRIPT)])
    assert await redis_store.registry() == [
        Registration("tasmota_kitchen", name="Kitchen", script=SCRIPT)
    ]
    seeds = [k for k in plain.scan_iter("*") if k.startswith(("device:", "script:"))]
    assert seeds == []


async def test_a_store_error_says_what_failed(tmp_path: Path) -> None:
    """A registry call on a closed store is a StoreError, not a crash."""
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(StoreError, match="not open"):
        await store.register([Registration(DEV)])
