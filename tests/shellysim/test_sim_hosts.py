"""Devices on their own loopback addresses (port 80 like real devices), slow reboots and outages
over HTTP: a device that is down refuses connections at once instead of leaving them hanging."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from shellysim import Fleet
from shellysim.errors import SimConfigError, SimulatorError
from shellysim.fleet import parse_hosts

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="port 80 on 127.0.x.y needs Linux (all of 127.0.0.0/8 is loopback) and root",
)


def _block() -> str:
    """The first three octets of a /24 of loopback addresses this test process has to itself:
    pytest-xdist workers (and other suites scanning 127.0.1.0/24) run side by side."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return f"127.{200 + worker % 50}.{os.getpid() % 250 + 1}"


@pytest.fixture
def block() -> str:
    return _block()


@pytest.fixture
def free_port(block: str) -> Iterator[int]:
    with socket.socket() as s:
        s.bind((f"{block}.1", 0))
        port = int(s.getsockname()[1])
    yield port


async def _refused(host: str, port: int) -> float:
    """Seconds a connection attempt took to be refused (fails the test if it was accepted)."""
    t0 = time.perf_counter()
    with pytest.raises(ConnectionRefusedError):
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
    return time.perf_counter() - t0


async def test_twenty_devices_on_their_own_addresses_answer_on_port_80(block: str) -> None:
    fleet = Fleet(devices=20, models=["pm1", "switch", "3em", "em"], engine=None,
                  http_hosts=f"{block}.0/24")  # fmt: skip
    async with fleet, httpx.AsyncClient(timeout=5) as client:
        for i, dev in enumerate(fleet.devices, start=1):
            host = f"{block}.{i}"
            assert fleet.host(dev) == host and fleet.port(dev) == 80
            assert fleet.address(dev) == host and fleet.url(dev) == f"http://{host}"
            r = await client.get(f"http://{host}/shelly")
            assert r.status_code == 200 and r.json()["id"] == dev.id
            assert r.json()["mac"] == dev.mac
        # the address, not the port, picks the device: a call on one leaves the others alone
        first, second = fleet.devices[0], fleet.devices[1]
        cfg = '{"device":{"name":"Boiler"}}'
        await client.get(f"{fleet.url(first)}/rpc/Sys.SetConfig", params={"config": cfg})
        assert (await client.get(f"{fleet.url(first)}/shelly")).json()["name"] == "Boiler"
        assert (await client.get(f"{fleet.url(second)}/shelly")).json()["name"] is None
    # the fleet is gone: nothing listens there any more
    assert await _refused(f"{block}.1", 80) < 1.0


async def test_same_port_different_hosts_are_different_devices(block: str, free_port: int) -> None:
    hosts = [f"{block}.7", f"{block}.9"]
    async with Fleet(devices=2, models=["switch"], engine=None, http_hosts=hosts,
                     http_port_base=free_port) as fleet:  # fmt: skip
        a, b = fleet.devices
        assert fleet.port(a) == fleet.port(b) == free_port
        assert fleet.address(a) == f"{block}.7:{free_port}"
        assert fleet.url(b) == f"http://{block}.9:{free_port}"
        async with httpx.AsyncClient(timeout=5) as client:
            ra = await client.get(f"http://{block}.7:{free_port}/shelly")
            rb = await client.get(f"http://{block}.9:{free_port}/shelly")
            assert ra.json()["id"] == a.id and rb.json()["id"] == b.id and a.id != b.id
            # switching one relay off leaves the other device's relay on
            await client.get(f"http://{block}.7:{free_port}/rpc/Switch.Set?id=0&on=false")
            sa = await client.get(f"http://{block}.7:{free_port}/rpc/Switch.GetStatus?id=0")
            sb = await client.get(f"http://{block}.9:{free_port}/rpc/Switch.GetStatus?id=0")
            assert sa.json()["output"] is False and sb.json()["output"] is True
        # an address of the same port that no device stands on refuses
        await _refused(f"{block}.8", free_port)


def test_host_specs_networks_ranges_and_lists(block: str) -> None:
    assert parse_hosts(f"{block}.0/24", 3) == [f"{block}.1", f"{block}.2", f"{block}.3"]
    assert parse_hosts(f"{block}.0/24", 254)[-1] == f"{block}.254"
    assert parse_hosts("127.0.1.254-127.0.2.1", 4) == [
        "127.0.1.254", "127.0.1.255", "127.0.2.0", "127.0.2.1",
    ]  # fmt: skip
    assert parse_hosts(["127.0.3.5", "127.0.3.1"], 2) == ["127.0.3.5", "127.0.3.1"]
    assert parse_hosts("127.0.3.5,127.0.4.0/30", 3) == ["127.0.3.5", "127.0.4.1", "127.0.4.2"]
    assert len(parse_hosts("127.0.0.0/8", 500)) == 500  # a huge network is not expanded whole


@pytest.mark.parametrize(
    ("spec", "devices", "words"),
    [
        ("127.0.1.0/30", 3, ["127.0.1.0/30", "2 usable", "3 devices"]),
        ("127.0.1.0/24", 255, ["254 usable", "255 devices"]),
        ("127.0.1.1-127.0.1.4", 5, ["4 usable", "5 devices"]),
        (["127.0.1.1", "127.0.1.2"], 3, ["2 usable", "3 devices"]),
        ("127.0.1.5/24", 1, ["host bits", "127.0.1.0/24"]),
        ("127.0.1.9-127.0.1.1", 1, ["lower to a higher"]),
        ("localhost", 1, ["expected a network"]),
        (["127.0.1.1", "127.0.1.1"], 2, ["127.0.1.1 twice"]),
    ],
)
def test_a_range_too_small_or_malformed_is_a_clear_error(
    spec: str | list[str], devices: int, words: list[str]
) -> None:
    with pytest.raises(SimConfigError) as err:
        Fleet(devices=devices, engine=None, http_hosts=spec)
    for word in words:
        assert word in str(err.value)


async def test_an_address_already_in_use_is_named(block: str, free_port: int) -> None:
    taken = f"{block}.12"
    with socket.socket() as squatter:
        squatter.bind((taken, free_port))
        squatter.listen()
        fleet = Fleet(devices=3, engine=None, http_hosts=f"{block}.11-{block}.13",
                      http_port_base=free_port)  # fmt: skip
        with pytest.raises(SimulatorError) as err:
            async with fleet:
                pass
        msg = str(err.value)
        assert f"{taken}:{free_port}" in msg and fleet.devices[1].id in msg
        assert "already in use" in msg
    # nothing of the failed start keeps listening
    await _refused(f"{block}.11", free_port)


async def test_a_slow_reboot_refuses_connections_until_the_device_is_back(block: str) -> None:
    async with Fleet(devices=2, engine=None, http_hosts=f"{block}.20-{block}.21") as fleet:
        dev, other = fleet.devices
        dev.boot_time_s = 1.5
        t0 = time.perf_counter()
        dev.spawn(dev.reboot())
        async with httpx.AsyncClient(timeout=5) as client:
            await asyncio.sleep(0.1)
            assert await _refused(f"{block}.20", 80) < 0.5  # refused at once, not a hang
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{fleet.url(dev)}/shelly")
            assert (await client.get(f"{fleet.url(other)}/shelly")).json()["id"] == other.id
            while True:  # poll as a client would until the device is back
                try:
                    r = await client.get(f"{fleet.url(dev)}/shelly")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            back = time.perf_counter() - t0
            assert r.json()["id"] == dev.id
            assert 1.5 <= back < 3.0, back
            status = (await client.get(f"{fleet.url(dev)}/rpc/Sys.GetStatus")).json()
            assert status["uptime"] < 5


async def test_an_outage_refuses_connections_and_ends_by_the_clock(block: str) -> None:
    async with Fleet(devices=1, engine=None, speed=20, http_hosts=[f"{block}.30"]) as fleet:
        dev = fleet.devices[0]
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{fleet.url(dev)}/shelly")).status_code == 200
            dev.fault_outage(20)  # one real second at 20x
            t0 = time.perf_counter()
            assert await _refused(f"{block}.30", 80) < 0.5
            while True:
                try:
                    r = await client.get(f"{fleet.url(dev)}/shelly")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            assert r.json()["id"] == dev.id
            assert 0.9 <= time.perf_counter() - t0 < 2.5


async def test_without_hosts_devices_keep_their_own_ports() -> None:
    async with Fleet(devices=2, engine=None) as fleet:
        a, b = fleet.devices
        assert fleet.host(a) == "127.0.0.1" and fleet.port(a) != fleet.port(b)
        assert fleet.address(a) == f"127.0.0.1:{fleet.port(a)}"
        assert fleet.url(a) == f"http://127.0.0.1:{fleet.port(a)}"
        a.fault_outage(3600)
        await _refused("127.0.0.1", fleet.port(a))
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{fleet.url(b)}/shelly")).json()["id"] == b.id


def test_simulate_command_stands_devices_on_their_addresses(block: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch", "simulate", "--devices", "3", "--duration", "0.3",
         "--http-hosts", f"{block}.40-{block}.49"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for i in range(3):
        assert f"http://{block}.{40 + i}\n" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch", "simulate", "--devices", "3", "--duration", "0.3",
         "--http-hosts", f"{block}.0/31"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode != 0 and "2 usable address(es), 3 devices need 3" in done.stderr
