"""The embedded broker holds each device to its own topics, from the same rule as mosquitto's
``acl_file`` (credentials.topic_rules): real paho clients against a broker given the records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from kilowatch.broker.credentials import (
    SERVICE_USER,
    Credential,
    DeviceKind,
    add_device,
    new_credential,
    render_acl_file,
    revoke,
    revoke_device,
    topic_rules,
)
from kilowatch.broker.embedded import Acl
from kilowatch.broker.embedded.acl import MAX_CACHED_TOPICS, UserAcl, filter_covers
from kilowatch.service.config import load_settings
from kilowatch.service.server import Running, serve
from kilowatch.store import open_store

from .conftest import BrokerThread, Client

SERVICE_PASSWORD = "intake-secret"
MARKER = "kilowatch-test/marker"
# CONNACK codes 5 and 4 of MQTT 3.1.1, as paho reports them (its MQTT 5 reason codes)
NOT_AUTHORIZED = 135
BAD_USER_OR_PASSWORD = 134


def _device(device: str, kind: DeviceKind = DeviceKind.SHELLY) -> tuple[Credential, str]:
    # The credentials module hashes with mosquitto's $7$ (PBKDF2-SHA512), as for mosquitto.
    return new_credential(device, kind=kind, prefix=None, now=1.0)


@pytest.fixture
def fleet(
    start_broker: Callable[..., BrokerThread],
) -> tuple[BrokerThread, dict[str, str]]:
    """A broker with two Shelly devices, a revoked one, and kilowatch's own user."""
    a, pass_a = _device("shelly-a")
    b, pass_b = _device("shelly-b")
    gone, pass_gone = _device("shelly-gone")
    records = [a, b, revoke(gone, now=2.0)]
    broker = start_broker(acl=Acl.from_credentials(records), users={SERVICE_USER: SERVICE_PASSWORD})
    return broker, {"shelly-a": pass_a, "shelly-b": pass_b, "shelly-gone": pass_gone}


def _login(
    clients: Callable[..., Client], broker: BrokerThread, user: str, password: str, **kw: object
) -> Client:
    client = clients(broker.port, f"{user}-client", username=user, password=password, **kw)
    assert client.connect() == (0, False)
    return client


def test_a_device_publishes_its_own_topics_and_kilowatch_reads_them(
    fleet: tuple[BrokerThread, dict[str, str]], clients: Callable[..., Client]
) -> None:
    broker, passwords = fleet
    service = _login(clients, broker, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("#") == 1
    device = _login(clients, broker, "shelly-a", passwords["shelly-a"])
    device.publish("shelly-a/events/rpc", b'{"method": "NotifyStatus"}')
    device.publish("/system/shelly-a/status", b"{}", qos=0)
    got = service.expect(2)
    assert [m.topic for m in got] == ["shelly-a/events/rpc", "/system/shelly-a/status"]
    # kilowatch's own user writes anywhere: an RPC to the device reaches it.
    assert device.subscribe("shelly-a/rpc") == 1
    service.publish("shelly-a/rpc", b'{"id": 1, "method": "Shelly.GetStatus"}')
    assert device.expect()[0].topic == "shelly-a/rpc"
    assert broker.stats().publishes_denied == 0


@pytest.mark.parametrize(
    "topic", ["shelly-b/events/rpc", "shelly-b/rpc", "/system/shelly-b/status", "shelly-bx/rpc"]
)
def test_a_device_publishing_another_devices_topic_is_cut_off(
    fleet: tuple[BrokerThread, dict[str, str]], clients: Callable[..., Client], topic: str
) -> None:
    """Another device's status or RPC topic: nothing is delivered and, as with mosquitto 2.0,
    the connection is closed; the broker counts it."""
    broker, passwords = fleet
    service = _login(clients, broker, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("#") == 1
    victim = _login(clients, broker, "shelly-b", passwords["shelly-b"])
    assert victim.subscribe("shelly-b/rpc") == 1
    intruder = _login(clients, broker, "shelly-a", passwords["shelly-a"])
    intruder.paho.publish(topic, b'{"id": 1, "method": "Switch.Set", "params": {"on": true}}', 1)
    assert intruder.disconnected.wait(10), "the intruder stayed connected"
    broker.wait_stats(lambda s: s.publishes_denied == 1)
    service.publish(MARKER, b"end")
    assert service.expect_until(MARKER) == []
    assert victim.messages.empty()


def test_a_will_outside_the_devices_topics_is_refused_at_connect(
    fleet: tuple[BrokerThread, dict[str, str]], clients: Callable[..., Client]
) -> None:
    broker, passwords = fleet
    ok = clients(
        broker.port, "a1", username="shelly-a", password=passwords["shelly-a"],
        will=("shelly-a/online", b"false", 1, True),
    )  # fmt: skip
    assert ok.connect() == (0, False)
    bad = clients(
        broker.port, "a2", username="shelly-a", password=passwords["shelly-a"],
        will=("shelly-b/online", b"false", 1, True),
    )  # fmt: skip
    assert bad.connect()[0] == NOT_AUTHORIZED


def test_subscriptions_outside_the_devices_topics_get_0x80(
    fleet: tuple[BrokerThread, dict[str, str]], clients: Callable[..., Client]
) -> None:
    broker, passwords = fleet
    device = _login(clients, broker, "shelly-a", passwords["shelly-a"])
    assert device.subscribe("shelly-a/rpc") == 1
    assert device.subscribe("shelly-a/command/#") == 1
    assert device.subscribe("shelly-a/command/switch:0", qos=0) == 0
    for topic_filter in ("#", "shelly-b/rpc", "shelly-a/#", "+/rpc", "shelly-a/events/rpc"):
        assert device.subscribe(topic_filter) == 0x80, topic_filter
    # Nothing of another device reaches it.
    service = _login(clients, broker, SERVICE_USER, SERVICE_PASSWORD)
    service.publish("shelly-b/rpc", b"{}")
    service.publish("shelly-a/rpc", b"mine")
    assert [m.payload for m in device.expect()] == [b"mine"]


def test_a_revoked_device_is_refused_at_connect(
    fleet: tuple[BrokerThread, dict[str, str]], clients: Callable[..., Client]
) -> None:
    broker, passwords = fleet
    gone = clients(broker.port, "gone", username="shelly-gone", password=passwords["shelly-gone"])
    assert gone.connect()[0] == NOT_AUTHORIZED
    wrong = clients(broker.port, "wrong", username="shelly-a", password="not-its-password")
    assert wrong.connect()[0] == BAD_USER_OR_PASSWORD
    anonymous = clients(broker.port, "anon")
    assert anonymous.connect()[0] == NOT_AUTHORIZED


def test_a_revoked_device_is_refused_even_without_other_users(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    """Every record revoked and no users: anonymous clients are let in, the revoked name not."""
    gone, password = _device("shelly-gone")
    broker = start_broker(acl=Acl.from_credentials([revoke(gone, now=2.0)]))
    refused = clients(broker.port, "gone", username="shelly-gone", password=password)
    assert refused.connect()[0] == NOT_AUTHORIZED
    assert clients(broker.port, "anon").connect() == (0, False)


def test_gen1_and_tasmota_rules(
    start_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    gen1, pass_gen1 = _device("shellyplug-s-C18B12", DeviceKind.GEN1)
    tasmota, pass_tasmota = _device("tasmota_5A3B2C", DeviceKind.TASMOTA)
    broker = start_broker(acl=Acl.from_credentials([gen1, tasmota]))
    plug = _login(clients, broker, gen1.user, pass_gen1)
    assert plug.subscribe("shellies/command") == 1
    assert plug.subscribe("shellies/other/relay/0/command") == 0x80
    plug.publish("shellies/announce", b"{}")
    plug.publish("shellies/shellyplug-s-C18B12/relay/0/power", b"12.5")
    tas = _login(clients, broker, tasmota.user, pass_tasmota)
    assert tas.subscribe("cmnd/tasmota_5A3B2C/#") == 1
    assert tas.subscribe("cmnd/other/POWER") == 0x80
    tas.publish("tele/tasmota_5A3B2C/SENSOR", b"{}")
    tas.paho.publish("cmnd/tasmota_5A3B2C/POWER", b"ON", 1)  # it reads its commands, never sends
    assert tas.disconnected.wait(10)
    assert broker.stats().publishes_denied == 1


# --- the rule itself ------------------------------------------------------------------------------


def test_the_acl_enforces_the_rule_mosquittos_acl_file_is_written_from() -> None:
    a, _ = _device("shelly-a")
    t, _ = _device("plug-1", DeviceKind.TASMOTA)
    acl = Acl.from_credentials([a, t])
    for rule in topic_rules([a, t]):
        user = acl.for_user(rule.user)
        assert user is not None
        assert (user.publish, user.subscribe) == (rule.publish, rule.subscribe)
        assert f"user {rule.user}" in render_acl_file([a, t])
    assert acl.for_user("someone-else") is None and acl.for_user(None) is None
    service = acl.for_user(SERVICE_USER)
    assert service is not None and service.may_publish("any/topic")
    assert service.may_subscribe("#")


@pytest.mark.parametrize(
    ("pattern", "topic_filter", "covered"),
    [
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "a/+/c", True),
        ("a/#", "a/#", True),
        ("a/#", "#", False),
        ("a/#", "b/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),
        ("a/+", "a/b/c", False),
        ("a/b", "a/b", True),
        ("a/b", "a/+", False),
        ("a/b", "a", False),
        ("#", "$SYS/x", True),
        ("/system/d/status", "/system/d/status", True),
        ("/system/d/status", "/system/e/status", False),
    ],
)
def test_filter_covers(pattern: str, topic_filter: str, covered: bool) -> None:
    assert filter_covers(pattern, topic_filter) is covered


def test_publish_decisions_are_cached_and_bounded() -> None:
    rule = topic_rules([_device("shelly-a")[0]])[1]
    user = UserAcl(rule)
    for n in range(MAX_CACHED_TOPICS + 10):
        assert user.may_publish(f"shelly-a/x/{n}")
    assert not user.may_publish("shelly-b/x")
    assert len(user._published) <= MAX_CACHED_TOPICS


# --- kilowatch serve ----------------------------------------------------------------------------


async def test_serve_holds_the_stores_devices_to_their_topics_on_the_embedded_broker(
    tmp_path: Path,
) -> None:
    """``serve --broker embedded`` gives the store's credentials to the embedded broker; its intake
    logs in as kilowatch's own user and still reads everything."""
    settings = load_settings(
        {
            "broker": "embedded",
            "store": f"sqlite:///{tmp_path}/kilowatch.db",
            "mqtt_port": 0,
            "mqtt_client_id": "kw-acl-test",
            "data_dir": str(tmp_path / "data"),
            "tz": "UTC",
        },
        env={},
    )
    async with open_store(settings.store_url) as store:
        _, password = await add_device(
            store, "shelly-a", kind=DeviceKind.SHELLY, prefix=None, now=1.0
        )
        gone, _ = await add_device(store, "shelly-b", kind=DeviceKind.SHELLY, prefix=None, now=1.0)
        await revoke_device(store, gone.device, now=2.0)
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(serve(settings, stop, on_ready=ready.set_result))
        try:
            running = await asyncio.wait_for(ready, 30)
            assert running.broker == "embedded"
            port = running.mqtt_port
            device = Client(port, "a", username="shelly-a", password=password)
            anonymous = Client(port, "anon")
            try:
                assert await asyncio.to_thread(device.connect) == (0, False)
                assert (await asyncio.to_thread(anonymous.connect))[0] == NOT_AUTHORIZED
                await asyncio.to_thread(device.publish, "shelly-a/online", b"true")
                device.paho.publish("shelly-b/rpc", b"{}", 1)
                assert await asyncio.to_thread(device.disconnected.wait, 10)
            finally:
                device.close()
                anonymous.close()
        finally:
            stop.set()
