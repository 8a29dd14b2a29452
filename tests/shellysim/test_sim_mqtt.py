"""MQTT behaviour of simulated devices against a real mosquitto (shelly-api.md §7), incl. TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
from simhelpers import fixture, shape

from kilowatch.testing import MosquittoServer, free_port
from shellysim import Fleet


class Observer:
    """A paho client recording every message (a real third-party MQTT client)."""

    def __init__(
        self, port: int, topic: str = "#", *, user: str | None = None, pw: str | None = None
    ):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}"
        )
        if user:
            self.client.username_pw_set(user, pw)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        if not subscribed.wait(10):  # nothing published before the SUBACK may be missed
            raise TimeoutError("the observer's subscription was not acknowledged")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    async def wait(self, topic: str, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.on(topic)) < count:
                await asyncio.sleep(0.02)
        return self.on(topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def observer(mosquitto: MosquittoServer) -> Iterator[Observer]:
    obs = Observer(mosquitto.port)
    yield obs
    obs.close()


async def test_topics_payloads_rpc_and_commands(
    mosquitto: MosquittoServer, observer: Observer
) -> None:
    seed = int(uuid.uuid4().int % 10000)
    async with Fleet(
        devices=1,
        models=["pm1"],
        broker=mosquitto.url,
        speed=120,
        seed=seed,
        engine=None,
        tick_s=0.05,
    ) as fleet:
        dev = fleet.devices[0]
        p = dev.id
        await fleet.wait_connected()
        assert (await observer.wait(f"{p}/online"))[0] == b"true"
        # RPC over MQTT, reply to <src>/rpc
        src = f"test-{uuid.uuid4().hex[:6]}"
        observer.publish(
            f"{p}/rpc",
            json.dumps(
                {
                    "id": 11,
                    "src": src,
                    "method": "Sys.SetConfig",
                    "params": {"config": {"debug": {"mqtt": {"enable": True}}}},
                }
            ),
        )
        reply = json.loads((await observer.wait(f"{src}/rpc"))[0])
        assert reply == {"id": 11, "src": p, "dst": src, "result": {"restart_required": False}}
        observer.publish(f"{p}/rpc", json.dumps({"id": 12, "src": src, "method": "No.Such"}))
        reply = json.loads((await observer.wait(f"{src}/rpc", 2))[1])
        assert reply["error"] == {"code": 404, "message": "No handler for No.Such"}
        # debug log lines in the documented format
        line = (await observer.wait(f"{p}/debug/log"))[-1].decode()
        assert re.fullmatch(rf"{p} \d+ \d+\.\d{{3}} \d\|[\w.]+:\d+ .+", line), line
        # status_update republishes every status/<key>
        observer.publish(f"{p}/command", "status_update")
        status = json.loads((await observer.wait(f"{p}/status/pm1:0"))[0])
        assert shape(status) == shape(fixture("shelly/pm_mini_g3/status_pm1_0.json"))
        assert json.loads((await observer.wait(f"{p}/status/mqtt"))[0]) == {"connected": True}
        sys_status = json.loads((await observer.wait(f"{p}/status/sys"))[0])
        assert sys_status["mac"] == dev.mac and isinstance(sys_status["uptime"], int)
        # notifications: NotifyFullStatus on connect, NotifyStatus with counters each minute
        await fleet.wait_until(fleet.clock.now() + 130)
        frames = [json.loads(b) for b in await observer.wait(f"{p}/events/rpc", 3)]
        assert all(f["src"] == p and f["dst"] == f"{p}/events" for f in frames)
        assert frames[0]["method"] == "NotifyFullStatus" and "pm1:0" in frames[0]["params"]
        counters = [f for f in frames if "aenergy" in f["params"].get("pm1:0", {})]
        assert counters and all(isinstance(f["params"]["ts"], float) for f in counters)
        minute_ts = counters[-1]["params"]["pm1:0"]["aenergy"]["minute_ts"]
        assert minute_ts % 60 == 0


async def test_will_outage_reboot_and_duplicates(
    mosquitto: MosquittoServer, observer: Observer
) -> None:
    seed = int(uuid.uuid4().int % 10000)
    async with Fleet(
        devices=1,
        models=["switch"],
        broker=mosquitto.url,
        speed=60,
        seed=seed,
        engine=None,
        tick_s=0.05,
    ) as fleet:
        dev = fleet.devices[0]
        p = dev.id
        await fleet.wait_connected()
        await observer.wait(f"{p}/online")
        dev.fault_outage(120)  # two real seconds at 60x
        assert (await observer.wait(f"{p}/online", 2))[1] == b"false"  # the will fired
        late = Observer(mosquitto.port, f"{p}/online")
        try:
            await late.wait(f"{p}/online")
            assert late.messages[0][1:] == (b"false", True)  # the will is retained
        finally:
            late.close()
        assert (await observer.wait(f"{p}/online", 3))[2] == b"true"  # back after the outage
        connects = fleet.mqtt[p].connects
        dev.boot_time_s = 0.05
        await dev.reboot()
        await fleet.wait_connected()
        assert fleet.mqtt[p].connects == connects + 1
        assert observer.on(f"{p}/online")[-2:] == [b"false", b"true"]
        dev.duplicate_publishes = True
        observer.publish(f"{p}/command/switch:0", "off")
        await observer.wait(f"{p}/events/rpc")
        async with asyncio.timeout(10):
            while True:
                outs = [
                    b
                    for b in observer.on(f"{p}/events/rpc")
                    if json.loads(b)["params"].get("switch:0", {}).get("output") is False
                ]
                if len(outs) >= 2:
                    break
                await asyncio.sleep(0.02)
        assert outs[0] == outs[1]  # the same notification, published twice
        assert dev.component_status("switch:0")["source"] == "MQTT"  # type: ignore[index]


async def test_status_ntf_and_broker_credentials() -> None:
    # mosquitto started as root drops to user "mosquitto", who cannot read the private temp dir
    with MosquittoServer(users={"meter": "pw-1"}) as broker:
        obs = Observer(broker.port, user="meter", pw="pw-1")
        try:
            async with Fleet(
                devices=1, models=["3em"], broker=broker.url, speed=60, engine=None, tick_s=0.05
            ) as fleet:
                dev = fleet.devices[0]
                await fleet.wait_connected()
                await dev.call("MQTT.SetConfig", {"config": {"status_ntf": True}})
                dev.boot_time_s = 0.05
                await dev.reboot()
                await fleet.wait_connected()
                await fleet.wait_until(fleet.clock.now() + 70)
                st = json.loads((await obs.wait(f"{dev.id}/status/emdata:0"))[-1])
                assert shape(st) == shape(fixture("shelly/pro_3em/status_emdata_0.json"))
            bad = broker.url.replace("pw-1", "wrong")
            async with Fleet(devices=1, broker=bad, engine=None) as fleet:
                link = fleet.mqtt[fleet.devices[0].id]
                async with asyncio.timeout(10):
                    while link.failures == 0:
                        await asyncio.sleep(0.02)
                assert not link.connected()
                assert "bad user name or password" in str(
                    link.last_error
                ) or "not authorised" in str(link.last_error)
        finally:
            obs.close()


def _ca_and_certs(tmp: Path) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(k: ec.EllipticCurvePrivateKey) -> str:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def issue(
        cn: str, key: Any, ca_key: Any, ca_name: x509.Name, *, ca: bool = False, san: bool = False
    ) -> str:
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    out: dict[str, str] = {}
    for label in ("ca", "other_ca"):
        k = ec.generate_private_key(ec.SECP256R1())
        out[f"{label}_key"] = pem_key(k)
        out[label] = issue(f"{label} test", k, k, name(f"{label} test"), ca=True)
        if label == "ca":
            ca_key = k
    skey, ckey = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    out["server"] = issue("127.0.0.1", skey, ca_key, name("ca test"), san=True)
    out["server_key"] = pem_key(skey)
    out["client"] = issue("meter", ckey, ca_key, name("ca test"))
    out["client_key"] = pem_key(ckey)
    for label, pem in out.items():
        (tmp / f"{label}.pem").write_text(pem)
    return out


async def test_tls_with_uploaded_ca_and_client_certificate(tmp_path: Path) -> None:
    pems = _ca_and_certs(tmp_path)
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {tmp_path}/ca.pem\ncertfile {tmp_path}/server.pem\n"
        f"keyfile {tmp_path}/server_key.pem\nrequire_certificate true\ntls_version tlsv1.2\n"
    )
    with MosquittoServer(extra_config=extra) as broker:
        obs = Observer(broker.port)
        try:
            async with Fleet(devices=1, unprovisioned=True, engine=None, tick_s=0.05) as fleet:
                dev = fleet.devices[0]
                link = fleet.mqtt[dev.id]
                dev.boot_time_s = 0.05
                assert (await dev.call("MQTT.GetConfig", None))["enable"] is False  # out of the box
                for method, key in (
                    ("Shelly.PutUserCA", "ca"),
                    ("Shelly.PutTLSClientCert", "client"),
                    ("Shelly.PutTLSClientKey", "client_key"),
                ):
                    data = pems[key]
                    await dev.call(method, {"data": data[:500], "append": False})
                    res = await dev.call(method, {"data": data[500:], "append": True})
                    assert res == {"len": len(data)}
                cfg = {
                    "enable": True,
                    "server": f"127.0.0.1:{tls_port}",
                    "ssl_ca": "user_ca.pem",
                    "use_client_cert": True,
                }
                assert await dev.call("MQTT.SetConfig", {"config": cfg}) == {
                    "restart_required": True
                }
                assert not link.connected()  # applies at reboot
                await dev.reboot()
                await fleet.wait_connected()
                assert (await obs.wait(f"{dev.id}/online"))[-1] == b"true"
                # a device trusting another CA refuses the broker
                await dev.call("Shelly.PutUserCA", {"data": pems["other_ca"]})
                failures = link.failures
                await dev.reboot()
                async with asyncio.timeout(10):
                    while link.failures == failures:
                        await asyncio.sleep(0.02)
                assert not link.connected() and "CERTIFICATE_VERIFY_FAILED" in str(link.last_error)
                # "*" skips validation
                await dev.call("MQTT.SetConfig", {"config": {"ssl_ca": "*"}})
                await dev.reboot()
                await fleet.wait_connected()
        finally:
            obs.close()
