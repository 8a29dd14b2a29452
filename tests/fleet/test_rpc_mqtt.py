"""The MQTT transport against simulated devices on a real mosquitto: round trips (MQTT 3.1.1 and
5), replies matched by id under concurrent calls, timeouts, a dropped connection failing its
waiters and coming back, devices online, and the managed mosquitto's per-device ACL."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kilowatch.broker.credentials import DeviceKind, add_device
from kilowatch.broker.mosquitto import Listener, ManagedMosquitto, MosquittoOptions, find_mosquitto
from kilowatch.broker.tls import ensure_local_tls, export_ca, tls_dir
from kilowatch.errors import (
    BrokerError,
    DeviceConnectionError,
    DeviceTimeoutError,
    FleetError,
    RpcCallError,
)
from kilowatch.fleet.rpc import MqttRpc, MqttVersion, ShellyRpc
from kilowatch.fleet.rpc.mqtt import _MqttTransport
from kilowatch.store import Store, open_store
from kilowatch.testing import MosquittoServer
from kilowatch.testing.servers import free_port
from shellysim import Fleet

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto 2.x is not installed")

WAIT_S = 10.0
FAST = MosquittoOptions(autosave_interval_s=1, backoff_min_s=0.1, backoff_max_s=0.5)
# Seeds no other test uses: the shared broker keeps retained <id>/online of every test's devices.
SEED_ROUND_TRIP, SEED_CONCURRENT, SEED_DROP = 0x4B31, 0x4B32, 0x4B33
SEED_ONLINE, SEED_ACL, SEED_TLS = 0x4B34, 0x4B35, 0x4B36


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate()`` until true (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_calls_round_trip_and_errors_carry_the_devices_code(
    mosquitto: MosquittoServer, version: MqttVersion
) -> None:
    async with Fleet(devices=1, engine=None, http=False, broker=mosquitto.url,
                     seed=SEED_ROUND_TRIP) as fleet:  # fmt: skip
        await fleet.wait_connected()
        dev = fleet.devices[0]
        async with MqttRpc("127.0.0.1", mosquitto.port, version=version) as mqtt:
            assert mqtt.connected
            async with mqtt.device(dev.id) as rpc:
                info = await rpc.get_device_info()
                assert info["id"] == dev.id and info["mac"] == dev.mac
                assert rpc.label == dev.id  # no device id given: the prefix names it
                with pytest.raises(RpcCallError) as err:
                    await rpc.script_get_status(9)
                assert (err.value.code, err.value.message) == (
                    -105,
                    "Argument 'id', value 9 not found!",
                )
                assert err.value.method == "Script.GetStatus"
                with pytest.raises(FleetError, match="cannot be sent as JSON"):
                    await rpc.call("KVS.Set", {"key": "k", "value": object()})
                assert (await rpc.mqtt_get_config())["enable"] is True


async def test_replies_are_matched_by_id_among_concurrent_calls(
    mosquitto: MosquittoServer,
) -> None:
    async with Fleet(devices=2, engine=None, http=False, broker=mosquitto.url,
                     seed=SEED_CONCURRENT) as fleet:  # fmt: skip
        await fleet.wait_connected()
        async with MqttRpc("127.0.0.1", mosquitto.port) as mqtt:
            rpcs = [mqtt.device(d.id, device_id=d.id, concurrency=20) for d in fleet.devices]
            async with rpcs[0], rpcs[1]:
                sets = [
                    rpc.call("KVS.Set", {"key": f"k{i}", "value": f"{rpc.label}/{i}"})
                    for rpc in rpcs
                    for i in range(20)
                ]
                await asyncio.gather(*sets)
                gets = [rpc.call("KVS.Get", {"key": f"k{i}"}) for rpc in rpcs for i in range(20)]
                values = [r["value"] for r in await asyncio.gather(*gets)]
                assert values == [f"{rpc.label}/{i}" for rpc in rpcs for i in range(20)]


async def test_a_device_that_does_not_answer_times_out_within_the_bound(
    mosquitto: MosquittoServer,
) -> None:
    loop = asyncio.get_running_loop()
    async with MqttRpc("127.0.0.1", mosquitto.port) as mqtt:
        async with mqtt.device("site-9/nobody-home", timeout=0.5) as rpc:
            start = loop.time()
            with pytest.raises(DeviceTimeoutError) as err:
                await rpc.get_device_info()
            assert 0.5 <= loop.time() - start < 1.5
            assert err.value.device == "site-9/nobody-home" and err.value.seconds == 0.5
        # the transport's own bound says where it waited
        transport = _MqttTransport(mqtt, "site-9/x", src="site-9/x/kilowatch-t", label="x")
        with pytest.raises(DeviceTimeoutError, match="no answer on site-9/x/kilowatch-t/rpc"):
            await transport.call("Shelly.GetStatus", None, timeout=0.3)
        await transport.close()
        for bad in ("", "$SYS/x", "a/+/b", "a/#", "x" * 301):
            with pytest.raises(FleetError):
                mqtt.device(bad)


async def test_a_broker_that_cannot_be_reached_is_a_broker_error() -> None:
    with pytest.raises(BrokerError, match="cannot connect"):
        async with MqttRpc("127.0.0.1", free_port()):
            pass


async def test_a_dropped_connection_fails_every_waiter_then_comes_back() -> None:
    loop = asyncio.get_running_loop()
    broker = MosquittoServer()
    await asyncio.to_thread(broker.start)
    try:
        async with Fleet(devices=1, engine=None, http=False, broker=broker.url,
                         seed=SEED_DROP) as fleet:  # fmt: skip
            await fleet.wait_connected()
            dev = fleet.devices[0]
            async with MqttRpc("127.0.0.1", broker.port) as mqtt:
                rpc = mqtt.device(dev.id)
                ghost = mqtt.device(f"{dev.id}-ghost", timeout=WAIT_S)  # nobody answers there
                async with rpc, ghost:
                    await rpc.get_status()
                    waiting = [asyncio.create_task(ghost.get_status()) for _ in range(3)]
                    await asyncio.sleep(0.2)  # subscribed and published: they wait for answers
                    assert not any(task.done() for task in waiting)
                    start = loop.time()
                    await asyncio.to_thread(broker.stop)
                    for task in waiting:
                        with pytest.raises(DeviceConnectionError, match="dropped"):
                            await task
                    assert loop.time() - start < WAIT_S / 2, "waiters failed at the drop"
                    with pytest.raises(DeviceConnectionError, match="not connected"):
                        await rpc.get_status()  # at once, while down

                    await asyncio.to_thread(broker.start)  # same port
                    await until(lambda: mqtt.connected, "MqttRpc reconnected")
                    await fleet.wait_connected()
                    assert (await rpc.get_device_info())["id"] == dev.id
    finally:
        await asyncio.to_thread(broker.stop)


async def test_online_prefixes_lists_the_devices_online(mosquitto: MosquittoServer) -> None:
    async with Fleet(devices=3, engine=None, http=False, broker=mosquitto.url,
                     seed=SEED_ONLINE) as fleet:  # fmt: skip
        await fleet.wait_connected()
        ids = {d.id for d in fleet.devices}
        async with MqttRpc("127.0.0.1", mosquitto.port) as mqtt:
            assert ids <= await mqtt.online_prefixes(0.2)
            gone = fleet.devices[0]
            gone.fault_outage(3600)  # the broker publishes its will: online = false
            deadline = time.monotonic() + WAIT_S
            while gone.id in (online := await mqtt.online_prefixes(0.2)):
                assert time.monotonic() < deadline, "the will never said false"
            assert ids - {gone.id} <= online


@pytest.fixture
async def managed(tmp_path: Path) -> AsyncIterator[tuple[Store, ManagedMosquitto]]:
    """The managed mosquitto (its per-device ACL), a plain and a TLS listener, and its store."""
    files = ensure_local_tls(tls_dir(tmp_path), [])
    listeners = [Listener(port=0), Listener(port=0, tls=files)]
    async with (
        open_store(f"sqlite:///{tmp_path}/kilowatch.db") as store,
        ManagedMosquitto(tmp_path, store, listeners=listeners, options=FAST) as broker,
    ):
        yield store, broker


async def test_replies_reach_kilowatch_through_the_managed_mosquittos_acl(
    managed: tuple[Store, ManagedMosquitto],
) -> None:
    store, broker = managed
    device_id = Fleet(devices=1, http=False, engine=None, seed=SEED_ACL).devices[0].id
    _, password = await add_device(
        store, device_id, kind=DeviceKind.SHELLY, prefix=None, now=time.time()
    )
    await broker.reload()
    url = f"mqtt://{device_id}:{password}@127.0.0.1:{broker.port}"
    async with Fleet(devices=1, http=False, engine=None, broker=url, seed=SEED_ACL) as fleet:
        await fleet.wait_connected()
        kilowatch = MqttRpc(
            "127.0.0.1", broker.port, username=broker.user, password=broker.password
        )
        async with kilowatch as mqtt, mqtt.device(device_id, timeout=5.0) as rpc:
            assert (await rpc.get_device_info())["id"] == device_id
            # the same request with a src outside the device's prefix: the device's reply is
            # refused by the ACL, so it never arrives
            outside = _MqttTransport(
                mqtt, device_id, src=f"kilowatch-{mqtt.token}-out", label=device_id
            )
            async with ShellyRpc(outside, timeout=1.0) as stray:
                with pytest.raises(DeviceTimeoutError):
                    await stray.get_device_info()
            assert (await rpc.sys_get_status())["mac"] == fleet.devices[0].mac


async def test_over_tls_with_kilowatchs_ca_and_a_refused_login(
    managed: tuple[Store, ManagedMosquitto], tmp_path: Path
) -> None:
    _, broker = managed
    async with Fleet(devices=1, http=False, engine=None, broker=broker.url,
                     seed=SEED_TLS) as fleet:  # fmt: skip
        await fleet.wait_connected()
        dev = fleet.devices[0]
        tls_port = broker.listeners[1].port
        ca = ssl.create_default_context(cadata=export_ca(tls_dir(tmp_path))[0].decode())
        kilowatch = MqttRpc(
            "127.0.0.1", tls_port, username=broker.user, password=broker.password, tls=ca
        )
        async with kilowatch as mqtt, mqtt.device(dev.id, device_id=dev.id) as rpc:
            results = await asyncio.gather(*(rpc.sys_get_status() for _ in range(6)))
            assert {r["mac"] for r in results} == {dev.mac}
        with pytest.raises(BrokerError, match="refused the connection"):
            async with MqttRpc("127.0.0.1", tls_port, username=broker.user, password="x", tls=ca):
                pass
