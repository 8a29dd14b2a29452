"""The seed's Redis layout: hours an EMQX sink wrote are queryable, and what kilowatch writes is
readable by the old tools (plain HGETALL of ``energy:<MAC>_<hour start>``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
import redis

from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, DeviceUpdate, open_store
from kilowatch.store.redis import RedisStore

DEV = "shellypmminig3-ecda3bc4ddb0"
MAC = "ECDA3BC4DDB0"
HOUR = 1720717200  # 2024-07-11T17:00:00Z, the brief's example


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        value: str = request.getfixturevalue("redis_url")
        return value
    value = request.getfixturevalue("cluster_url")
    return str(value)


@pytest.fixture
def plain(url: str) -> Iterator[redis.Redis | redis.RedisCluster]:
    """A plain redis-py client, standing in for EMQX and the seed's desktop app."""
    hosts = url.split("://", 1)[1].split("/", 1)[0].split(",")
    host, port = hosts[0].rsplit(":", 1)
    client: redis.Redis | redis.RedisCluster
    if len(hosts) > 1:
        client = redis.RedisCluster(host=host, port=int(port), decode_responses=True)
    else:
        client = redis.Redis(host=host, port=int(port), decode_responses=True)
    yield client
    client.close()


def emqx_write(
    client: redis.Redis | redis.RedisCluster,
    mac: str,
    device: str,
    hour: int,
    wh: float,
    prefix: str = "energy",
) -> None:
    """One hourly-script message as the EMQX Redis sink stores it (HSET of the message's fields)."""
    client.hset(f"{prefix}:{mac}_{hour}", mapping={
        "fw_ver": "1.4.0-beta1", "hourly_energy_usage": str(wh), "hourly_ret_energy_usage": "0",
        "id": device, "mac": mac, "operational": "true", "timestamp": str(hour),
    })  # fmt: skip


async def test_emqx_hours_show_up_without_import(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    emqx_write(plain, MAC, DEV, HOUR, 564.559)
    emqx_write(plain, MAC, DEV, HOUR + 3600, 100.0)
    plain.hset("energy:not-a-seed-key_x", mapping={"id": "zzz"})
    async with open_store(url) as store:
        rows = await store.energy(
            EnergyQuery(
                by="hour", tz="Europe/Sofia", start=date(2024, 7, 11), end=date(2024, 7, 12)
            )
        )
        assert [(r.device, r.channel, r.start.isoformat(), r.energy_wh) for r in rows] == [
            (DEV, "hourly", "2024-07-11T20:00:00+03:00", 564.559),
            (DEV, "hourly", "2024-07-11T21:00:00+03:00", 100.0),
        ]
        devices = await store.devices()
        assert [(d.device, d.channels) for d in devices] == [(DEV, ("hourly",))]
        # written while kilowatch runs: indexed by the periodic refresh (called directly here)
        emqx_write(plain, MAC, DEV, HOUR + 7200, 50.5)
        assert isinstance(store, RedisStore)
        assert await store.refresh_seed_index() == 3
        total = await store.energy(
            EnergyQuery(
                by="day", tz="UTC", start=date(2024, 7, 11), end=date(2024, 7, 12), group="total"
            )
        )
        assert [r.energy_wh for r in total] == [715.059]


async def test_emqx_hours_in_a_half_hour_zone_are_split_and_marked_estimated(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    emqx_write(plain, MAC, DEV, HOUR, 400.0)
    async with open_store(url) as store:
        rows = await store.energy(
            EnergyQuery(
                by="hour", tz="Asia/Kolkata", start=date(2024, 7, 11), end=date(2024, 7, 13)
            )
        )
        # 17:00Z-18:00Z is 22:30-23:30 in Kolkata: half in each local hour, a guess
        assert [(r.start.strftime("%H:%M"), r.energy_wh, r.estimated) for r in rows] == [
            ("22:00", 200.0, True),
            ("23:00", 200.0, True),
        ]
        day = await store.energy(
            EnergyQuery(by="day", tz="Asia/Kolkata", start=date(2024, 7, 11), end=date(2024, 7, 13))
        )
        assert [(r.energy_wh, r.estimated) for r in day] == [(400.0, False)]


async def test_kilowatch_hours_are_readable_by_the_old_tools(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    async with open_store(url) as store:
        await store.commit(
            Batch(
                devices=[DeviceUpdate(DEV, fw_ver="1.4.0", mac="EC:DA:3B:C4:DD:B0")],
                slots=[
                    *(SlotEnergy(DEV, "pm1:0", HOUR + i * 900, 100_000, 0) for i in range(4)),
                    SlotEnergy(DEV, "switch:0", HOUR, 64_559, 1_500),
                    SlotEnergy(DEV, "switch:0/a", HOUR, 999_000, 0),  # a part: not summed again
                    SlotEnergy("tasmota-kitchen", "ENERGY", HOUR, 5000, 0),  # no MAC: no seed hash
                ],
            )
        )
        await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR + 3600, 1, 0)]))
        assert isinstance(store, RedisStore)
        await store.refresh_seed_index()
        # ours are not mistaken for an external sink's hours
        rows = await store.energy(
            EnergyQuery(
                by="hour",
                tz="UTC",
                start=date(2024, 7, 11),
                end=date(2024, 7, 12),
                channels=("hourly",),
            )
        )
        assert rows == []
    assert plain.hgetall(f"energy:{MAC}_{HOUR}") == {
        "fw_ver": "1.4.0",
        "hourly_energy_usage": "464.559",  # Wh, exact: the decimal of the mWh kept in kwi
        "hourly_ret_energy_usage": "1.5",
        "id": DEV,
        "mac": MAC,
        "operational": "true",
        "timestamp": str(HOUR),
        "kw": "1",
        "kwi": "464559",
        "kwe": "1500",
    }
    assert plain.hget(f"energy:{MAC}_{HOUR + 3600}", "hourly_energy_usage") == "0.001"
    assert plain.hgetall(f"device:{MAC}") == {"id": DEV, "mac": MAC, "fw_ver": "1.4.0"}


async def test_seed_hours_add_up_to_exact_decimals(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    """Many commits of one hour: the Wh fields are the exact decimal of the summed mWh, as the
    seed's own writer stores them (``564.559``), not a sum of floats (``499.98000000000000001``)."""
    parts = [123_456, 200_001, 176_523, 1, -1]  # 499.98 Wh; a correction nets out
    async with open_store(url) as store:
        for i, mwh in enumerate(parts):
            await store.commit(
                Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR + 900 * (i % 4), mwh, 0)])
            )
        await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR + 3600, 2_000, 10)]))
        await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR + 7200, -250, 0)]))
    key = f"energy:{MAC}_{HOUR}"
    assert plain.hmget(key, ["hourly_energy_usage", "hourly_ret_energy_usage", "kwi"]) == [
        "499.98",
        "0",
        "499980",
    ]
    assert plain.hmget(
        f"energy:{MAC}_{HOUR + 3600}", ["hourly_energy_usage", "hourly_ret_energy_usage"]
    ) == [
        "2",
        "0.01",
    ]
    assert plain.hget(f"energy:{MAC}_{HOUR + 7200}", "hourly_energy_usage") == "-0.25"


async def test_an_hour_an_earlier_kilowatch_summed_in_floats_goes_on_from_its_sums(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    """The hour in progress when kilowatch was upgraded: its hash holds float sums and the
    marker, no mWh fields; the next commit starts from those sums, rounded to the mWh."""
    key = f"energy:{MAC}_{HOUR}"
    plain.hincrbyfloat(key, "hourly_energy_usage", 123.456)
    plain.hincrbyfloat(key, "hourly_energy_usage", 200.001)
    plain.hincrbyfloat(key, "hourly_ret_energy_usage", 0.1)
    plain.hset(key, mapping={"id": DEV, "mac": MAC, "kw": "1", "timestamp": str(HOUR)})
    emqx_write(plain, MAC, DEV, HOUR + 3600, 100.0)  # the sink's: not summed with ours
    async with open_store(url) as store:
        await store.commit(
            Batch(
                slots=[
                    SlotEnergy(DEV, "pm1:0", HOUR, 176_523, 200),
                    SlotEnergy(DEV, "pm1:0", HOUR + 3600, 5_000, 0),
                ]
            )
        )
    assert plain.hmget(key, ["hourly_energy_usage", "hourly_ret_energy_usage", "kwi", "kwe"]) == [
        "499.98",
        "0.3",
        "499980",
        "300",
    ]
    assert plain.hget(f"energy:{MAC}_{HOUR + 3600}", "hourly_energy_usage") == "5"


async def test_seed_hours_carry_the_firmware_on_record(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    """The firmware comes in a device update (the hourly script's message, a Gen1 announce), maybe
    in an earlier run: every hour hash written while it is known carries it, and a store that
    first sees the device in an update without firmware (``last_seen`` only) still uses the one
    on record; an unknown firmware is an empty field, never one that blanks a known one."""
    async with open_store(url) as store:
        await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR, 1, 0)]))
        assert plain.hget(f"energy:{MAC}_{HOUR}", "fw_ver") == ""
        await store.commit(Batch(devices=[DeviceUpdate(DEV, fw_ver="1.4.0-beta1")]))
        await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR, 1, 0)]))
        assert plain.hget(f"energy:{MAC}_{HOUR}", "fw_ver") == "1.4.0-beta1"
    async with open_store(url) as store:  # a new run: the first update has no firmware
        await store.commit(
            Batch(
                devices=[DeviceUpdate(DEV, last_seen=HOUR + 3700.0, online=True)],
                slots=[SlotEnergy(DEV, "pm1:0", HOUR + 3600, 1, 0)],
            )
        )
        await store.commit(Batch(slots=[SlotEnergy(DEV, "pm1:0", HOUR, 1, 0)]))
    assert plain.hget(f"energy:{MAC}_{HOUR + 3600}", "fw_ver") == "1.4.0-beta1"
    assert plain.hget(f"energy:{MAC}_{HOUR}", "fw_ver") == "1.4.0-beta1"
    assert plain.hget(f"energy:{MAC}_{HOUR}", "kwi") == "3"


async def test_hourly_seen_by_kilowatch_and_emqx_counts_once(
    url: str, plain: redis.Redis | redis.RedisCluster
) -> None:
    emqx_write(plain, MAC, DEV, HOUR, 200.0)
    async with open_store(url) as store:
        await store.commit(
            Batch(slots=[SlotEnergy(DEV, "hourly", HOUR + i * 900, 50_000, 0) for i in range(4)])
        )
        rows = await store.energy(
            EnergyQuery(by="day", tz="UTC", start=date(2024, 7, 11), end=date(2024, 7, 12))
        )
        assert [(r.channel, r.energy_wh) for r in rows] == [("hourly", 200.0)]


async def test_prefix_from_url(url: str, plain: redis.Redis | redis.RedisCluster) -> None:
    emqx_write(plain, MAC, DEV, HOUR, 10.0, prefix="meters")
    emqx_write(plain, MAC, DEV, HOUR, 99.0)  # another prefix: not ours
    async with open_store(url + "?prefix=meters") as store:
        rows = await store.energy(
            EnergyQuery(
                by="hour",
                tz="UTC",
                start=datetime(2024, 7, 11, tzinfo=UTC),
                end=datetime(2024, 7, 12, tzinfo=UTC),
            )
        )
        assert [r.energy_wh for r in rows] == [10.0]
        await store.put_meta("x", 1)
    assert plain.hget("meters:kw:meta", "x") == "1"
