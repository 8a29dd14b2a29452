"""Discovery: address specs, the answers of GET /shelly, scans of simulated devices on their own
loopback addresses (port 80, like real devices), the broker's online devices, merging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kilowatch.errors import DeviceConnectionError, FleetError
from kilowatch.fleet.discovery import (
    MAX_TARGETS,
    Found,
    How,
    Unsupported,
    found_from_info,
    from_broker,
    from_mdns,
    merge,
    parse_targets,
    scan,
)
from kilowatch.fleet.mdns import MdnsFound
from kilowatch.fleet.rpc.lan import probe as lan_probe
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.testing import MosquittoServer
from shellysim import Fleet

# --- address specs ------------------------------------------------------------------------------


def test_a_network_gives_its_usable_hosts() -> None:
    hosts = parse_targets(["127.0.1.0/24"])
    assert len(hosts) == 254
    assert hosts[0] == "127.0.1.1" and hosts[-1] == "127.0.1.254"
    assert parse_targets(["127.0.1.5/30"]) == ["127.0.1.5", "127.0.1.6"]  # host bits ignored
    assert parse_targets(["127.0.1.9/32"]) == ["127.0.1.9"]
    assert parse_targets(["127.0.1.8/31"]) == ["127.0.1.8", "127.0.1.9"]
    assert parse_targets(["::1/128"]) == ["::1"]


def test_ranges_single_addresses_ports_and_host_names() -> None:
    assert parse_targets(["127.0.1.1-127.0.1.3"]) == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    assert parse_targets(["127.0.1.250-252"]) == ["127.0.1.250", "127.0.1.251", "127.0.1.252"]
    assert parse_targets(["127.0.0.255-127.0.1.1"]) == ["127.0.0.255", "127.0.1.0", "127.0.1.1"]
    assert parse_targets([" 127.0.1.7 "]) == ["127.0.1.7"]
    assert parse_targets(["127.0.0.1:8080"]) == ["127.0.0.1:8080"]
    assert parse_targets(["127.0.0.1:80"]) == ["127.0.0.1"]  # the devices' port is left out
    assert parse_targets(["127.0.0.1:20000-20002"]) == [
        "127.0.0.1:20000",
        "127.0.0.1:20001",
        "127.0.0.1:20002",
    ]
    assert parse_targets(["127.0.1.0/30:8080"]) == ["127.0.1.1:8080", "127.0.1.2:8080"]
    assert parse_targets(["[::1]:8080", "::1"]) == ["[::1]:8080", "::1"]
    assert parse_targets(["shelly-plug.local", "localhost:81"]) == [
        "shelly-plug.local",
        "localhost:81",
    ]


def test_each_address_once_in_the_order_given() -> None:
    assert parse_targets(["127.0.1.3", "127.0.1.1-127.0.1.4", "127.0.1.2"]) == [
        "127.0.1.3",
        "127.0.1.1",
        "127.0.1.2",
        "127.0.1.4",
    ]
    assert parse_targets([]) == []


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "empty address spec"),
        ("127.0.1.0/33", "is not a network"),
        ("127.0.1.9-127.0.1.2", "ends (127.0.1.2) before it starts (127.0.1.9)"),
        ("127.0.1.1-300", "is not an octet"),
        ("127.0.1.1-::5", "mixes IPv4 and IPv6"),
        ("127.0.1.1-nope", "is not an address"),
        ("127.0.1.1:0", "not within 1-65535"),
        ("127.0.1.1:70000", "not within 1-65535"),
        ("127.0.1.1:90-80", "low to high"),
        ("127.0.1.1:http", "is not a port"),
        ("127.0.1.300", "is not an address, a network, a range or a host name"),
        ("bad_host!", "is not an address, a network, a range or a host name"),
        ("[::1", "'[' without ']'"),
        (":8080", "no host"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(FleetError) as err:
        parse_targets(["127.0.1.1", spec])
    assert says in str(err.value)
    assert "--scan" in str(err.value) and "127.0.1.0/24" in str(err.value)  # how to write one


def test_absurd_sizes_are_refused_before_anything_is_listed() -> None:
    assert len(parse_targets(["10.1.0.0/16"])) == 65_534
    started = time.perf_counter()
    with pytest.raises(FleetError, match="16,777,214 addresses; the most one discovery scans"):
        parse_targets(["10.0.0.0/8"])
    with pytest.raises(FleetError, match=f"{MAX_TARGETS:,}"):
        parse_targets(["10.1.0.0/16", "10.2.0.0/24"])  # together, not each
    with pytest.raises(FleetError, match="addresses"):
        parse_targets(["fd00::/64"])
    with pytest.raises(FleetError, match="addresses"):
        parse_targets(["127.0.0.1-127.3.0.0:1-2"])
    assert time.perf_counter() - started < 0.5  # counted, never enumerated


# --- answers ----------------------------------------------------------------------------------

GEN3 = {
    "name": None, "id": "shellypmminig3-ecda3bc4ddb0", "mac": "ECDA3BC4DDB0", "slot": 0,
    "model": "S3PM-001PCEU16", "gen": 3, "fw_id": "20240223-141904/1.2.2-g7c39781",
    "ver": "1.2.2", "app": "MiniPMG3", "auth_en": False, "auth_domain": None,
}  # fmt: skip
GEN1 = {"type": "SHPLG-S", "mac": "AABBCCDDEEFF", "auth": False, "fw": "20230913-112003/v1.14.0"}


def test_answers_of_gen2_and_later_gen1_and_strangers() -> None:
    found = found_from_info(GEN3, address="127.0.1.7", how=How.SCAN)
    assert found == Found(
        device="shellypmminig3-ecda3bc4ddb0",
        mac="ECDA3BC4DDB0",
        model="S3PM-001PCEU16",
        gen=3,
        fw_ver="1.2.2",
        app="MiniPMG3",
        name=None,
        auth_en=False,
        address="127.0.1.7",
        how=How.SCAN,
    )
    assert found_from_info(GEN1, address="127.0.1.8", how=How.SCAN) == Unsupported(
        address="127.0.1.8", model="SHPLG-S", mac="AABBCCDDEEFF", fw="20230913-112003/v1.14.0"
    )
    assert found_from_info({"hello": "world"}, address="127.0.1.9", how=How.SCAN) is None
    assert found_from_info({**GEN3, "gen": True}, address="x", how=How.SCAN) is None
    assert found_from_info({**GEN3, "id": None}, address="x", how=How.SCAN) is None
    pro = found_from_info({**GEN3, "name": "Boiler", "auth_en": True}, address=None,
                          how=How.BROKER, prefix="home/boiler")  # fmt: skip
    assert isinstance(pro, Found)
    assert pro.name == "Boiler" and pro.auth_en and pro.prefix == "home/boiler"


def _found(device: str, address: str | None, how: How, prefix: str | None = None) -> Found:
    return Found(device, None, None, 2, None, None, None, False, address, how, prefix)


def test_merge_prefers_the_lan_and_keeps_the_broker_prefix() -> None:
    scanned = [_found("b", "127.0.1.2", How.SCAN), _found("a", "127.0.1.1", How.SCAN)]
    mdns = [_found("a", "127.0.1.1", How.MDNS), _found("c", "127.0.1.3", How.MDNS)]
    broker = [
        _found("a", None, How.BROKER, "home/a"),
        _found("d", None, How.BROKER, "d"),
        _found("c", None, How.BROKER, "c"),
    ]
    merged = merge([broker, scanned, mdns])  # the LAN wins whatever the order
    assert [(f.device, f.address, f.how, f.prefix) for f in merged] == [
        ("a", "127.0.1.1", How.SCAN, "home/a"),
        ("b", "127.0.1.2", How.SCAN, None),
        ("c", "127.0.1.3", How.MDNS, "c"),
        ("d", None, How.BROKER, "d"),
    ]
    assert merge([]) == []


# --- scans of simulated devices -----------------------------------------------------------------

NET = "127.0.41.0/24"
"""A network of this file's own: tests running beside it (pytest-xdist) stand their simulated
devices on other loopback networks, so neither finds the other's nor fights over port 80."""


@pytest.fixture
async def http_fleet() -> AsyncIterator[Fleet]:
    """40 devices, each on its own loopback address (127.0.41.1 to .40) port 80; the rest of the
    /24 is empty."""
    async with Fleet(
        devices=40, models=["pm1", "switch", "3em", "em"], engine=None, http_hosts=NET
    ) as fleet:
        yield fleet


async def test_a_scan_of_a_network_finds_exactly_the_devices(http_fleet: Fleet) -> None:
    targets = parse_targets([NET])
    in_flight = peak = 0
    done: list[str] = []

    async def counting_probe(
        address: str, *, session: aiohttp.ClientSession, timeout: float
    ) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0)  # let the other workers start theirs
            return await lan_probe(address, session=session, timeout=timeout)
        finally:
            in_flight -= 1

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        found = await scan(
            targets,
            session=session,
            concurrency=16,
            timeout=2.0,
            progress=lambda address, _: done.append(address),
            probe=counting_probe,
        )
    elapsed = time.perf_counter() - started
    by_id = {f.device: f for f in found}
    assert set(by_id) == {d.id for d in http_fleet.devices}
    for dev in http_fleet.devices:
        f = by_id[dev.id]
        assert f.address == http_fleet.address(dev) and f.how is How.SCAN
        assert f.mac == dev.mac and f.gen >= 2 and f.fw_ver == "1.4.4" and f.model
    assert [f.address for f in found] == sorted(
        (f.address for f in found), key=lambda a: tuple(int(x) for x in (a or "").split("."))
    )  # in the order of the targets
    assert sorted(done) == sorted(targets)  # progress once per address
    assert peak == 16  # the bound was reached, never passed
    assert elapsed < 10, f"a /24 on loopback took {elapsed:.1f} s"


async def test_gen1_answers_are_reported_apart_and_strangers_ignored(http_fleet: Fleet) -> None:
    dev = http_fleet.devices[0]

    async def fake_world(
        address: str, *, session: aiohttp.ClientSession, timeout: float
    ) -> dict[str, Any]:
        # a Gen1 plug and a web server that is no Shelly beside one real simulated device
        if address == "gen1":
            return dict(GEN1)
        if address == "stranger":
            return {"status": "ok"}
        if address == "down":
            raise DeviceConnectionError(address, "connection refused")
        return await lan_probe(address, session=session, timeout=timeout)

    unsupported: list[Unsupported] = []
    async with aiohttp.ClientSession() as session:
        found = await scan(
            ["gen1", "stranger", "down", http_fleet.address(dev)],
            session=session,
            unsupported=unsupported,
            probe=fake_world,
        )
    assert [f.device for f in found] == [dev.id]
    assert [(u.address, u.model) for u in unsupported] == [("gen1", "SHPLG-S")]


async def test_concurrency_must_be_positive() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FleetError, match="--concurrency: must be 1 or more"):
            await scan(["127.0.1.1"], session=session, concurrency=0)


# --- the broker -------------------------------------------------------------------------------


async def test_the_broker_s_online_devices_answer_over_mqtt(mosquitto: MosquittoServer) -> None:
    async with Fleet(
        devices=6, models=["pm1", "3em"], engine=None, broker=mosquitto.url, http=False, seed=41
    ) as fleet:
        await fleet.wait_connected()
        async with MqttRpc("127.0.0.1", mosquitto.port) as mqtt:
            started = time.perf_counter()
            # a stale retained "true" of an earlier test's device costs at most the 3 s timeout
            found = await from_broker(mqtt, wait=1.0, concurrency=4, timeout=3.0)
            elapsed = time.perf_counter() - started
        ours = [f for f in found if f.device in {d.id for d in fleet.devices}]
        assert [f.device for f in ours] == sorted(d.id for d in fleet.devices)
        for f in ours:
            dev = fleet.device(f.device)
            assert f.address is None and f.how is How.BROKER
            assert f.prefix == dev.id and f.mac == dev.mac and f.gen >= 2
        assert elapsed < 6


async def test_mdns_adverts_are_confirmed_by_the_device_itself(http_fleet: Fleet) -> None:
    # What browse() returns (it is tested in a network namespace of its own): adverts of two
    # real devices, one of them twice (IPv4 and IPv6 answers), and a stale one nothing answers.
    real = http_fleet.devices[:2]
    adverts = [
        MdnsFound(dev.id, (http_fleet.host(dev),), 80, 2, f"{dev.id}._shelly._tcp.local.")
        for dev in (*real, real[0])
    ] + [MdnsFound("shellyplus1pm-gone", ("127.0.41.250",), 80, 2, "gone._shelly._tcp.local.")]
    async with aiohttp.ClientSession() as session:
        found = await from_mdns(adverts, session, timeout=1.0)
    assert [(f.device, f.address, f.how) for f in found] == [
        (dev.id, http_fleet.address(dev), How.MDNS) for dev in real
    ]
    assert all(f.mac == dev.mac and f.fw_ver == "1.4.4" for f, dev in zip(found, real, strict=True))
