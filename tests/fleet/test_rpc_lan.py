"""The LAN transport against simulated devices: probe, calls, error frames, digest auth, reboots,
offline and silent devices, and the per-device concurrency limit. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kilowatch.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
    FleetError,
    InvalidAuthError,
    RpcCallError,
)
from kilowatch.fleet.rpc import LanTransport, ShellyRpc, connect_lan, lan_session, probe
from kilowatch.fleet.rpc.lan import split_address
from shellysim import Device, Fleet, ha1_for

PASSWORD = "fleet-pw-1"
WAIT_S = 10.0


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet(devices=2, models=["pm1", "switch"], engine=None) as f:
        yield f


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def address(fleet: Fleet, dev: Device) -> str:
    return fleet.url(dev).removeprefix("http://")


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Silent:
    """A TCP server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            await reader.read()  # until the client gives up

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def answering(body: str, status: int, content_type: str) -> web.AppRunner:
    """A small HTTP server answering every GET with ``body``: not a Shelly device."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, status=status, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def runner_address(runner: web.AppRunner) -> str:
    return f"127.0.0.1:{runner.addresses[0][1]}"


# --- addresses and probe ------------------------------------------------------------------------


def test_addresses_are_host_or_host_port() -> None:
    assert split_address("192.0.2.7") == ("192.0.2.7", 80)
    assert split_address("127.0.1.5:8081") == ("127.0.1.5", 8081)
    assert split_address("shelly.local") == ("shelly.local", 80)
    assert split_address("[::1]:8080") == ("::1", 8080)
    assert split_address("::1") == ("::1", 80)
    for bad in ("http://127.0.0.1", "127.0.0.1:0", "127.0.0.1:http", "", "[::1", "a:b:c"):
        with pytest.raises(FleetError):
            split_address(bad)


async def test_probe_returns_the_device_info(fleet: Fleet, session: aiohttp.ClientSession) -> None:
    dev = fleet.devices[0]
    info = await probe(address(fleet, dev), session=session)
    assert info["id"] == dev.id and info["mac"] == dev.mac and info["gen"] == 3
    assert info["auth_en"] is False


async def test_probe_of_nothing_fails_fast_and_typed(session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeviceConnectionError) as refused:
        await probe(f"127.0.0.1:{closed_port()}", session=session, timeout=2.0)
    assert loop.time() - start < 2.0
    assert refused.value.device.startswith("127.0.0.1:")
    async with Silent() as silent:
        start = loop.time()
        with pytest.raises(DeviceTimeoutError) as slow:
            await probe(silent, session=session, timeout=0.3)
        assert 0.3 <= loop.time() - start < 2.0 and slow.value.seconds == 0.3


@pytest.mark.parametrize(
    ("body", "status", "content_type"),
    [
        ("<html>router login</html>", 200, "text/html"),
        ('{"error": "not found"}', 404, "application/json"),
        ('{"hello": "world"}', 200, "application/json"),
        ("[1, 2]", 200, "application/json"),
        ("{not json", 200, "application/json"),
    ],
    ids=["html", "404", "json-without-mac", "json-list", "broken-json"],
)
async def test_probe_of_something_else_is_a_device_error(
    session: aiohttp.ClientSession, body: str, status: int, content_type: str
) -> None:
    runner = await answering(body, status, content_type)
    try:
        with pytest.raises(DeviceError) as err:
            await probe(runner_address(runner), session=session, timeout=2.0)
        assert type(err.value) is DeviceError, "something answered: not a connection problem"
    finally:
        await runner.cleanup()


# --- calls --------------------------------------------------------------------------------------


async def test_calls_succeed_and_error_frames_carry_the_devices_code(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    dev = fleet.devices[0]
    async with await connect_lan(address(fleet, dev), session=session, device_id=dev.id) as rpc:
        assert (await rpc.get_device_info())["id"] == dev.id
        assert (await rpc.sys_get_status())["mac"] == dev.mac
        assert await rpc.script_list() == []
        with pytest.raises(RpcCallError) as err:
            await rpc.script_get_status(9)
        assert (err.value.device, err.value.method) == (dev.id, "Script.GetStatus")
        assert (err.value.code, err.value.message) == (-105, "Argument 'id', value 9 not found!")
        with pytest.raises(RpcCallError) as unknown:
            await rpc.call("Nope.Nothing")
        assert (unknown.value.code, unknown.value.message) == (404, "No handler for Nope.Nothing")
        with pytest.raises(FleetError, match="cannot be sent as JSON"):
            await rpc.call("KVS.Set", {"key": "k", "value": object()})
        # the connection is still good after error frames
        sid = await rpc.script_create("kw")
        assert await rpc.script_put_code(sid, "let a = 1;", append=False) == 10
        assert (await rpc.script_get_code(sid))["data"] == "let a = 1;"


async def test_digest_auth_with_the_right_and_a_wrong_password(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    dev = fleet.devices[1]
    where = address(fleet, dev)
    async with await connect_lan(where, session=session) as rpc:
        await rpc.set_auth(dev.id, ha1_for(dev.id, PASSWORD))
        with pytest.raises(InvalidAuthError) as none_given:
            await rpc.get_status()
        assert "none was given" in str(none_given.value)
        # GetDeviceInfo never needs auth (§5)
        assert (await rpc.get_device_info())["auth_en"] is True

    # the realm is learnt from the device when its id is not given
    async with await connect_lan(where, session=session, password=PASSWORD) as rpc:
        assert rpc.label == where
        assert "switch:0" in await rpc.get_status()
        assert rpc.label == dev.id
        assert (await rpc.sys_get_config())["device"]["mac"] == dev.mac

    for device_id in (dev.id, None):
        async with await connect_lan(
            where, session=session, password="wrong-pw", device_id=device_id
        ) as rpc:
            with pytest.raises(InvalidAuthError) as wrong:
                await rpc.get_config()
            assert wrong.value.device == dev.id and "refused the password" in str(wrong.value)

    # after Shelly.SetAuth changed it, the same transport goes on with the new password
    transport = LanTransport(where, session=session, password=PASSWORD, device_id=dev.id)
    async with ShellyRpc(transport) as rpc:
        await rpc.set_auth(dev.id, ha1_for(dev.id, "second-pw"))
        transport.set_password("second-pw")
        assert (await rpc.mqtt_get_config())["enable"] is False
        await rpc.set_auth(dev.id, None)
        transport.set_password(None)
        assert await rpc.script_list() == []


async def test_a_rebooting_device_answers_again_through_the_same_rpc(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    dev = fleet.devices[0]
    changes: list[bool] = []
    unsubscribe = dev.add_lifecycle_listener(changes.append)
    loop = asyncio.get_running_loop()
    try:
        async with await connect_lan(
            address(fleet, dev), session=session, device_id=dev.id, timeout=2.0
        ) as rpc:
            await rpc.get_status()
            await rpc.reboot(delay_ms=500)
            failures: list[type[DeviceError]] = []
            deadline = loop.time() + WAIT_S
            while changes != [False, True]:  # went down, came back
                assert loop.time() < deadline, f"no reboot seen: {changes}"
                try:
                    await rpc.sys_get_status()
                except (DeviceConnectionError, DeviceTimeoutError) as err:
                    failures.append(type(err))
                await asyncio.sleep(0.05)
            # the next call after the device is back reconnects by itself
            status = await rpc.sys_get_status()
            assert status["mac"] == dev.mac and status["uptime"] <= 2
            assert set(failures) <= {DeviceConnectionError, DeviceTimeoutError}
    finally:
        unsubscribe()


async def test_an_offline_device_fails_within_the_bound(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    dev = fleet.devices[0]
    loop = asyncio.get_running_loop()
    async with await connect_lan(
        address(fleet, dev), session=session, device_id=dev.id, timeout=1.0
    ) as rpc:
        await rpc.get_status()  # connected
        dev.fault_outage(3600)
        for _ in range(2):  # the open connection drops, then reconnecting fails
            start = loop.time()
            with pytest.raises((DeviceConnectionError, DeviceTimeoutError)) as err:
                await rpc.get_status()
            assert loop.time() - start < 1.5
            assert err.value.device == dev.id

    async with await connect_lan(f"127.0.0.1:{closed_port()}", session=session, timeout=1.0) as rpc:
        with pytest.raises(DeviceConnectionError):
            await rpc.get_device_info()


async def test_a_silent_device_times_out_and_a_closed_rpc_stays_closed(
    session: aiohttp.ClientSession,
) -> None:
    loop = asyncio.get_running_loop()
    async with Silent() as where:
        rpc = await connect_lan(where, session=session, timeout=0.4)
        start = loop.time()
        with pytest.raises(DeviceTimeoutError) as err:
            await rpc.get_device_info()
        assert 0.4 <= loop.time() - start < 1.5 and err.value.seconds == 0.4
        await rpc.close()
        await rpc.close()  # idempotent
        with pytest.raises(DeviceConnectionError):
            await rpc.get_device_info()


class Gate:
    """A transport around a real one that counts calls in flight and holds them at a gate."""

    def __init__(self, inner: LanTransport) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.in_flight = 0
        self.most = 0

    @property
    def label(self) -> str:
        return self.inner.label

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.open.wait()
            return await self.inner.call(method, params, timeout=timeout)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        await self.inner.close()


async def test_the_per_device_concurrency_limit_holds(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    dev = fleet.devices[0]
    gate = Gate(LanTransport(address(fleet, dev), session=session, device_id=dev.id))
    async with ShellyRpc(gate, concurrency=3) as rpc:
        calls = [asyncio.create_task(rpc.call("Sys.GetStatus")) for _ in range(10)]
        # Tasks run in order to their first wait: a few turns of the loop let all ten try.
        for _ in range(5):
            await asyncio.sleep(0)
        assert gate.in_flight == 3
        gate.open.set()
        results = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
    assert [r["mac"] for r in results] == [dev.mac] * 10
    assert gate.most == 3


async def test_more_devices_than_aiohttps_default_cap_stay_connected_at_once() -> None:
    """Each device's WebSocket holds a connection of the session: lan_session() has no cap."""
    count = 120  # aiohttp's default connector allows 100
    async with Fleet(devices=count, engine=None) as fleet, lan_session() as session:
        everyone = asyncio.Barrier(count)

        async def one(dev: Device) -> str:
            where = address(fleet, dev)
            async with await connect_lan(where, session=session, timeout=5.0) as rpc:
                await rpc.sys_get_status()
                await asyncio.wait_for(everyone.wait(), WAIT_S)  # all connected at once
                return str((await rpc.get_device_info())["id"])

        ids = await asyncio.gather(*(one(d) for d in fleet.devices))
    assert ids == [d.id for d in fleet.devices]


async def test_typed_methods_for_kvs_methods_list_and_firmware(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    dev = fleet.devices[1]
    async with await connect_lan(
        address(fleet, dev), session=session, device_id=dev.id, timeout=2.0
    ) as rpc:
        assert "Shelly.GetStatus" in await rpc.list_methods()
        stored = await rpc.kvs_set("site", "north")
        assert (await rpc.kvs_get("site")) == {"etag": stored["etag"], "value": "north"}
        with pytest.raises(RpcCallError) as stale:
            await rpc.kvs_set("site", "south", etag="not-the-etag")
        assert stale.value.code == -109
        with pytest.raises(ValueError, match="exactly one"):
            await rpc.update()

        assert (await rpc.check_for_update())["stable"]["version"] == "1.5.1"
        await rpc.update(stage="stable")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while True:  # the update ends in a reboot into the new firmware
            assert loop.time() < deadline, "the update never finished"
            with contextlib.suppress(DeviceConnectionError, DeviceTimeoutError):
                if (await rpc.get_device_info())["ver"] == "1.5.1":
                    break
            await asyncio.sleep(0.05)
        assert "stable" not in await rpc.check_for_update()
