"""``kilowatch serve`` with its managed mosquitto, for real: per-device users and ACLs, a revoke
while it runs, TLS with the exported local CA, kill -9 of mosquitto mid-stream, MQTT 5, and the
embedded broker when mosquitto is hidden.

kilowatch runs in this event loop (``running_service``); mosquitto is its own process. Every
blocking paho call runs in a thread, so the service's loop (and mosquitto's log pipe) never stall.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from svchelpers import ServeProcess, poll, run_cli, running_service, unique

from kilowatch.broker.credentials import DeviceKind, add_device
from kilowatch.broker.mosquitto import MOSQUITTO_MISSING, ManagedMosquitto, find_mosquitto
from kilowatch.broker.tls import export_ca, tls_dir
from kilowatch.errors import BrokerError
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import Settings
from kilowatch.service.server import Running, serve
from kilowatch.store import open_store

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto 2.x is not installed"
)

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
WAIT_S = 10.0
REFUSED = {4, 5, 134, 135}  # bad user name or password / not authorised (MQTT 3.1.1 and 5)


def frames(device: str, first: int, last: int) -> list[tuple[str, bytes]]:
    """A PM Mini G3 at 60 W reporting every minute: 1 Wh per message (its counter is
    ``100 + k`` Wh at minute ``k``)."""
    out = []
    for k in range(first, last):
        params = {"ts": T0 + 60 * k, "pm1:0": {"id": 0, "apower": 60.0,
                                                "aenergy": {"total": 100.0 + k}}}  # fmt: skip
        frame = {"src": device, "dst": f"{device}/events", "method": "NotifyStatus",
                 "params": params}  # fmt: skip
        out.append((f"{device}/events/rpc", orjson.dumps(frame)))
    return out


async def stored_wh(store_url: str, device: str) -> float:
    query = EnergyQuery(
        by="day", tz="UTC", start=datetime(2025, 12, 31, tzinfo=UTC),
        end=datetime(2026, 1, 3, tzinfo=UTC), devices=(device,), group="device",
    )  # fmt: skip
    async with open_store(store_url) as store:
        return sum(r.energy_wh for r in await store.energy(query))


async def has_wh(store_url: str, device: str, expected: float) -> bool:
    return await stored_wh(store_url, device) == expected


class Device:
    """A paho client logged in as one device (QoS 1; paho reconnects it unless ``once``)."""

    def __init__(
        self,
        port: int,
        user: str,
        password: str,
        *,
        ca: Path | None = None,
        once: bool = False,
        protocol: int = paho.MQTTv311,
    ) -> None:
        self.port = port
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=unique(f"{user}-"), protocol=protocol,
            reconnect_on_failure=not once,
        )  # fmt: skip
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.connacks: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put(m)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, p: Any) -> None:
        self.connacks.put(rc.value)
        if rc.value == 0:
            self.disconnected.clear()
            self.connected.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, p: Any) -> None:
        self.connected.clear()
        self.disconnected.set()

    def connect(self) -> int:
        """Connect; the CONNACK's reason code."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        return self.connacks.get(timeout=WAIT_S)

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        """Publish at QoS 1 and wait for every PUBACK."""
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def managed(r: Running) -> ManagedMosquitto:
    assert r.broker == "managed" and r.mosquitto is not None
    return r.mosquitto


async def new_device(r: Running, device: str) -> str:
    """Credentials for ``device`` through the credentials API, in effect at once; its password."""
    _, password = await add_device(
        r.store, device, kind=DeviceKind.SHELLY, prefix=None, now=time.time()
    )
    await managed(r).reload()
    return password


@needs_mosquitto
async def test_devices_publish_with_their_own_users_only_their_own_topics(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """A device with its own user is stored; one publishing another device's status topic is
    disconnected and nothing of it is stored; ``kilowatch broker user revoke`` cuts one off."""
    settings = settings_for("managed", mqtt_port=0)
    a, victim = unique("shellypmminig3-a"), unique("shellypmminig3-v")
    async with running_service(settings) as r:
        assert (r.mqtt_host, r.mqtt_port) == ("127.0.0.1", managed(r).port)
        password = await new_device(r, a)
        device = Device(r.mqtt_port, a, password)
        assert await asyncio.to_thread(device.connect) == 0
        try:
            await asyncio.to_thread(device.publish, frames(a, 0, 31))
            await poll(lambda: has_wh(settings.store_url, a, 30.0), what="a's 30 Wh")
        finally:
            await asyncio.to_thread(device.close)

        forger = Device(r.mqtt_port, a, password, once=True)
        assert await asyncio.to_thread(forger.connect) == 0
        forger.client.publish(*frames(victim, 0, 2)[1], qos=1)
        assert await asyncio.to_thread(forger.disconnected.wait, WAIT_S), "the forger stayed"
        await asyncio.to_thread(forger.close)
        # a's next message comes after the forged one would have: once it is stored, nothing
        # of the victim can still arrive.
        device = Device(r.mqtt_port, a, password, once=True)
        assert await asyncio.to_thread(device.connect) == 0
        await asyncio.to_thread(device.publish, frames(a, 31, 32))
        await poll(lambda: has_wh(settings.store_url, a, 31.0), what="a's 31st Wh")
        assert await stored_wh(settings.store_url, victim) == 0
        assert victim not in {d.device for d in await r.store.devices()}

        args = ("--store", settings.store_url, "--data-dir", str(settings.data_dir))
        out = await asyncio.to_thread(run_cli, tmp_path, "broker", "user", "revoke", a, *args)
        assert f"mosquitto (pid {managed(r).pid}) reloaded" in out.stdout + out.stderr
        assert await asyncio.to_thread(device.disconnected.wait, WAIT_S), "a stayed connected"
        await asyncio.to_thread(device.close)
        again = Device(r.mqtt_port, a, password, once=True)
        try:
            assert await asyncio.to_thread(again.connect) in REFUSED
        finally:
            await asyncio.to_thread(again.close)


@needs_mosquitto
async def test_devices_connect_over_tls_with_the_exported_local_ca(
    settings_for: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond loopback (every address; the clients here connect over loopback): serve says how
    devices get users, anonymous clients are refused, devices with users connect over TLS."""
    caplog.set_level(logging.INFO)
    settings = settings_for(
        "managed", mqtt_host="0.0.0.0", mqtt_port=0, mqtt_tls_local=True, mqtt_tls_port=0
    )
    async with running_service(settings) as r:
        said = [x.getMessage() for x in caplog.records if "beyond loopback" in x.getMessage()]
        assert any("kilowatch broker user add DEVICE" in line for line in said), said
        anonymous = Device(r.mqtt_port, "", "", once=True)
        anonymous.client.username_pw_set(None)
        try:
            assert await asyncio.to_thread(anonymous.connect) in REFUSED
        finally:
            await asyncio.to_thread(anonymous.close)
        tls = [x for x in managed(r).listeners if x.tls is not None]
        assert len(tls) == 1
        ca = tmp_path / "kilowatch-ca.pem"
        out = await asyncio.to_thread(
            run_cli, tmp_path, "broker", "ca", "export", str(ca), "--data-dir",
            str(settings.data_dir),
        )  # fmt: skip
        assert out.returncode == 0 and ca.read_bytes() == export_ca(tls_dir(settings.data_dir))[0]
        names = [unique("shellypmminig3-tls"), unique("shellyplus1pm-tls")]
        devices = [Device(tls[0].port, n, await new_device(r, n), ca=ca) for n in names]
        try:
            for name, device in zip(names, devices, strict=True):
                assert await asyncio.to_thread(device.connect) == 0
                await asyncio.to_thread(device.publish, frames(name, 0, 11))
            for name in names:
                await poll(lambda n=name: has_wh(settings.store_url, n, 10.0), what=f"{name}")
        finally:
            for device in devices:
                await asyncio.to_thread(device.close)


@needs_mosquitto
async def test_a_simulated_fleet_provisioned_like_real_shellies_connects_over_tls(
    settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated Shelly devices get what a real one would: the exported CA (Shelly.PutUserCA),
    then MQTT.SetConfig with their own user and ``ssl_ca: user_ca.pem``, then a reboot. Their
    energy reaches the store over TLS, within their ACLs (a publish outside would cut them off)."""
    pytest.importorskip("aiohttp")
    from shellysim.fleet import Fleet

    caplog.set_level(logging.INFO)
    settings = settings_for("managed", mqtt_port=0, mqtt_tls_local=True, mqtt_tls_port=0)
    async with running_service(settings) as r:
        tls_port = next(x.port for x in managed(r).listeners if x.tls is not None)
        ca = export_ca(tls_dir(settings.data_dir))[0].decode()
        fleet = Fleet(devices=2, models=("pm1",), start=T0, speed=3600, http=False, engine=None)
        async with fleet:
            for dev in fleet.devices:
                password = await new_device(r, dev.id)
                await dev.call("Shelly.PutUserCA", {"data": ca, "append": False})
                mqtt = {"enable": True, "server": f"127.0.0.1:{tls_port}", "user": dev.id,
                        "pass": password, "ssl_ca": "user_ca.pem"}  # fmt: skip
                await dev.call("MQTT.SetConfig", {"config": mqtt})
                await dev.reboot()
            await fleet.wait_connected(timeout=WAIT_S)
            for dev in fleet.devices:
                await poll(lambda d=dev.id: _some_wh(settings.store_url, d), what=f"{dev.id}")
            assert all(link.connects == 1 for link in fleet.mqtt.values()), "a device was cut off"
        lines = [x.getMessage() for x in caplog.records]
        for dev in fleet.devices:  # mosquitto: "New client connected from <addr> as <id> (...)"
            client = next(x for x in lines if x.endswith(f" as {dev.id}", 0, x.find(" (")))
            address = client.split()[4]
            assert f"New connection from {address} on port {tls_port}." in lines, dev.id


async def _some_wh(store_url: str, device: str) -> bool:
    return await stored_wh(store_url, device) > 0


@needs_mosquitto
async def test_kill_9_of_mosquitto_mid_stream_loses_no_energy(
    settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """kilowatch restarts its mosquitto; kilowatch and the device reconnect; every Wh the device
    counted is stored (its counter is cumulative, and the restart keeps kilowatch's session)."""
    caplog.set_level(logging.INFO)
    settings = settings_for("managed", mqtt_port=0)
    name = unique("shellypmminig3-k9")
    async with running_service(settings) as r:
        m = managed(r)
        device = Device(r.mqtt_port, name, await new_device(r, name))
        assert await asyncio.to_thread(device.connect) == 0
        try:
            await asyncio.to_thread(device.publish, frames(name, 0, 40))
            old = m.pid
            assert old is not None
            os.kill(old, signal.SIGKILL)  # mid-stream: kilowatch may not have stored them yet
            await poll(lambda: m.restarts == 1 and m.pid not in (None, old), what="a restart")
            await poll(lambda: _subscribed(caplog) >= 2, what="kilowatch subscribed again")
            await asyncio.to_thread(device.connected.wait, WAIT_S)
            await asyncio.to_thread(device.publish, frames(name, 40, 81))
            await poll(lambda: has_wh(settings.store_url, name, 80.0), what="all 80 Wh")
        finally:
            await asyncio.to_thread(device.close)
    exits = [x.getMessage() for x in caplog.records if "mosquitto exited" in x.getMessage()]
    assert len(exits) == 1 and "code=-9" in exits[0]


def _subscribed(caplog: pytest.LogCaptureFixture) -> int:
    return sum(x.getMessage().startswith("mqtt subscribed") for x in caplog.records)


@needs_mosquitto
async def test_an_mqtt5_client_receives_what_kilowatch_retained(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for("managed", mqtt_port=0)
    topic = f"kilowatch/{unique('test-')}/config"
    async with running_service(settings) as r:
        m = managed(r)
        kw = Device(r.mqtt_port, m.user, m.password, once=True)
        assert await asyncio.to_thread(kw.connect) == 0
        kw.client.publish(topic, b'{"name":"kitchen"}', qos=1, retain=True).wait_for_publish(5)
        await asyncio.to_thread(kw.close)
        ha = Device(r.mqtt_port, m.user, m.password, once=True, protocol=paho.MQTTv5)
        try:
            assert await asyncio.to_thread(ha.connect) == 0
            ha.client.subscribe(topic, qos=1)
            message = await asyncio.to_thread(ha.messages.get, True, WAIT_S)
            assert (message.topic, message.payload, message.retain) == (
                topic, b'{"name":"kitchen"}', True,
            )  # fmt: skip
        finally:
            await asyncio.to_thread(ha.close)


@needs_mosquitto
async def test_an_mqtt5_client_receives_kilowatchs_home_assistant_discovery_and_states(
    settings_for: Callable[..., Settings],
) -> None:
    """Home Assistant's MQTT integration speaks MQTT 5: on the managed mosquitto it gets the
    retained discovery config and the energy state of a meter kilowatch stores."""
    pytest.importorskip("kilowatch.service.homeassistant")
    from kilowatch.homeassistant import config_topic, state_topic

    settings = settings_for("managed", mqtt_port=0, homeassistant=True)
    name = unique("shellypmminig3-ha")
    async with running_service(settings) as r:
        device = Device(r.mqtt_port, name, await new_device(r, name))
        assert await asyncio.to_thread(device.connect) == 0
        try:
            await asyncio.to_thread(device.publish, frames(name, 0, 11))
            await poll(lambda: has_wh(settings.store_url, name, 10.0), what="10 Wh stored")
        finally:
            await asyncio.to_thread(device.close)
        config, state = config_topic(name, "pm1:0", "energy"), state_topic(name, "pm1:0", "energy")
        ha = Device(r.mqtt_port, "", "", once=True, protocol=paho.MQTTv5)
        ha.client.username_pw_set(None)  # on loopback only: anonymous, as a local HA may be
        try:
            assert await asyncio.to_thread(ha.connect) == 0
            ha.client.subscribe([(config, 1), (state, 1)])
            got: dict[str, paho.MQTTMessage] = {}

            def both() -> bool:
                while not ha.messages.empty():
                    message = ha.messages.get()
                    got[message.topic] = message
                return {config, state} <= set(got) and float(got[state].payload) == 0.01

            try:
                await poll(both, timeout=8, what="discovery config and the 0.01 kWh state")
            except AssertionError:
                raise AssertionError({t: m.payload for t, m in got.items()}) from None
            body = orjson.loads(got[config].payload)
            assert body["device_class"] == "energy"
            assert (body["state_topic"], body["unit_of_measurement"]) == (state, "kWh")
        finally:
            await asyncio.to_thread(ha.close)
        late = Device(r.mqtt_port, "", "", once=True, protocol=paho.MQTTv5)
        late.client.username_pw_set(None)
        try:  # a Home Assistant that subscribes later gets the config, retained
            assert await asyncio.to_thread(late.connect) == 0
            late.client.subscribe(config, qos=1)
            message = await asyncio.to_thread(late.messages.get, True, WAIT_S)
            assert (message.topic, message.retain) == (config, True)
        finally:
            await asyncio.to_thread(late.close)


# -- without mosquitto ------------------------------------------------------------------------


def test_serve_without_mosquitto_runs_the_embedded_broker_and_says_so(
    tmp_path: Path, start_serve: Callable[..., ServeProcess]
) -> None:
    """``kilowatch serve`` whose mosquitto is not there (the ``mosquitto`` setting names a
    missing file): the embedded broker, said in one line at start."""
    sp = start_serve("--mqtt-port", "0", "--mosquitto", str(tmp_path / "no-mosquitto"))
    port = int(
        sp.wait_for_log(r"kilowatch ready .* mqtt=127\.0\.0\.1:(\d+) broker=embedded").group(1)
    )
    lines = [line for line in sp.text().splitlines() if "embedded broker instead" in line]
    assert len(lines) == 1 and f"mosquitto 2.x is not at {tmp_path}" in lines[0], sp.text()
    name = unique("shellypmminig3-emb")
    device = Device(port, "anyone", "", once=True)  # loopback: anonymous is fine
    assert device.connect() == 0
    try:
        device.publish(frames(name, 0, 3))
    finally:
        device.close()
    assert sp.terminate() == 0


async def test_with_mosquitto_nowhere_auto_falls_back_to_the_embedded_broker(
    settings_for: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No mosquitto on PATH nor in /usr/sbin, /usr/local/sbin: ``auto`` runs the embedded broker
    and says why; ``managed`` refuses to start, saying what to do."""
    import kilowatch.broker.mosquitto as module

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(module, "SEARCH_DIRS", ())
    caplog.set_level(logging.INFO)
    async with running_service(settings_for("auto", mqtt_port=0)) as r:
        assert r.broker == "embedded" and r.mosquitto is None
    warned = [x.getMessage() for x in caplog.records if "embedded broker instead" in x.getMessage()]
    assert warned == [f"{MOSQUITTO_MISSING}: running the embedded broker instead"]
    stop = asyncio.Event()
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        await serve(settings_for("managed", mqtt_port=0), stop)
