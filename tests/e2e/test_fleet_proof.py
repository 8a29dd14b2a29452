"""The proof of issue 11 ("Fleet I"), end to end in one run.

200 unprovisioned simulated Shellies (PM Mini Gen3, Pro 3EM, Plus 1PM) stand on their own loopback
addresses, port 80, in 127.0.61.0/24; six more (the fault cases) in 127.0.62.0/24. kilowatch serve
runs in this event loop with SQLite and its managed mosquitto, TLS listener on. Then, as an
installer would:

1. **discover** by scanning both networks: every device lands in the registry;
2. **adopt** them all in one call: per-device broker users, kilowatch's CA uploaded, MQTT over
   TLS, reboot, until each is connected and its energy is in the store;
3. **apply** a profile: the shipped metering script (``kilowatch:hourly_energy.js``), a generated
   device password per device, the debug log over MQTT, the system name from ``{{ device.id }}``;
   the registry records the script as ``kilowatch fleet apply`` does (``registry_updates``).

Then every device is connected and publishing, its energy is in the store (within the counters
the simulator really had), its debug log lines too, the broker finds them all, the registry knows
how to reach each and which script runs there, a second apply changes nothing, the secrets file
is owner-only and no log line (``kilowatch`` at DEBUG, the rest at INFO) holds a password.

The faults run in the same calls as the 200, each with its own outcome while the others succeed:
a device offline, a device whose password kilowatch has wrong, a device that takes 4 s to boot, a
script over the size limit (a second profile for one device) and a bad client certificate (a
third profile for one device: refused when the profile is loaded; material that gets past that
is refused by the device at the TLS step).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from kilowatch.broker.credentials import accepts, credentials
from kilowatch.broker.mosquitto import find_mosquitto, reload_running
from kilowatch.broker.tls import export_ca, tls_dir
from kilowatch.cli.fleet_profiles import registry_updates
from kilowatch.errors import FleetError
from kilowatch.fleet.adopt import AdoptOptions, Outcome, adopt
from kilowatch.fleet.adopt import Step as AdoptStep
from kilowatch.fleet.apply import (
    ApplyOptions,
    ApplyReport,
    Backoff,
    SecretPasswords,
    Status,
    apply_fleet,
)
from kilowatch.fleet.discovery import from_broker, parse_targets, scan
from kilowatch.fleet.profile import Profile, load_profile
from kilowatch.fleet.registry import open_rpc, record_found
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.lan import connect_lan
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.scriptdeploy import SCRIPT_LIMIT_BYTES
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.fleet.tlsmaterial import TlsMaterial, load_material
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import Settings
from kilowatch.service.server import Running
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration, Store
from kilowatch.testing.service import running_service, service_settings
from shellysim import Fleet, ha1_for
from shellysim.profiles import LoadKind

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto 2.x is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
METERING_SCRIPT = ROOT / "src" / "kilowatch" / "fleet" / "scripts" / "hourly_energy.js"
MAIN_NET = "127.0.61.0/24"
FAULT_NET = "127.0.62.0/24"
DEVICES = 200
SPEED = 1.0
"""Real time: a Shelly's ``status/<component>`` messages carry no timestamp, so kilowatch stamps
them on receipt; on a faster clock they would land in another day than the device's own
NotifyStatus frames."""
WAIT_S = 40.0
SLOW_BOOT_S = 4.0
LOADS = [(LoadKind.BASE,), None, (LoadKind.BASE,)]
"""pm1 and switch meter a base load that always draws (their default loads may rest for the
minute this runs, which would leave nothing to compare); the 3EM keeps its own."""
FAST = Backoff(attempts=2, base_s=0.05, cap_s=0.1)
OWNERS_PASSWORD = "the-owners-password"

PROFILE = """\
[system]
name = "{{ device.id }}"
debug_mqtt = true

[auth]
password = "generate"

[[scripts]]
name = "kilowatch-hourly"
file = "kilowatch:hourly_energy.js"
enable = true
version = "1"
"""
BIG_PROFILE = """\
[[scripts]]
name = "big"
file = "big.js"
"""
BAD_CERT_PROFILE = """\
[tls]
cert = "client.pem"
key = "client.key"
"""


# --- kilowatch serve in this loop --------------------------------------------------------------


@dataclass
class Site:
    settings: Settings
    running: Running
    store: Store
    session: aiohttp.ClientSession
    box: SecretBox

    @property
    def tls_server(self) -> str:
        assert self.running.mosquitto is not None
        port = next(x.port for x in self.running.mosquitto.listeners if x.tls is not None)
        return f"127.0.0.1:{port}"

    async def adopt_opener(self, reg: Registration, password: str | None) -> ShellyRpc:
        assert reg.address is not None
        return await connect_lan(
            reg.address, session=self.session, password=password, device_id=reg.device
        )

    def opener(self, reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
        """What ``kilowatch fleet apply`` uses: the registry's way back, the secrets file."""
        return open_rpc(reg, secrets=self.box, session=self.session, mqtt=None)

    async def reload(self) -> object:
        return await reload_running(self.settings.data_dir, self.store)

    async def apply(self, profile: Profile, regs: Sequence[Registration]) -> ApplyReport:
        return await apply_fleet(
            profile, regs, self.opener, passwords=SecretPasswords(self.box),
            options=ApplyOptions(concurrency=64, retry=FAST),
        )  # fmt: skip


@contextlib.asynccontextmanager
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    settings = service_settings(tmp_path)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        running_service(settings) as running,
        open_store(settings.store_url) as store,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        box = SecretBox.in_data_dir(settings.data_dir)
        yield Site(settings, running, store, session, box)


# --- helpers ------------------------------------------------------------------------------------


def bad_client_cert(where: Path) -> tuple[Path, Path, TlsMaterial]:
    """A client certificate with an Ed25519 key, which Shelly devices cannot use: as files (which
    kilowatch refuses to load) and as material built around that check (which the device
    refuses)."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kilowatch-proof-client")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, None)
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    (where / "client.pem").write_text(cert_pem)
    (where / "client.key").write_text(key_pem)
    return where / "client.pem", where / "client.key", TlsMaterial(cert=cert_pem, key=key_pem)


def counter_of(status: dict[str, Any]) -> tuple[str, float] | None:
    """``(channel, Wh)`` of a single-channel meter's cumulative counter, from Shelly.GetStatus."""
    for channel in ("pm1:0", "switch:0"):
        if channel in status:
            return channel, float(status[channel]["aenergy"]["total"])
    return None


async def counters(fleet: Fleet) -> dict[str, tuple[str, float]]:
    out = {}
    for dev in fleet.devices:
        got = counter_of(await dev.call("Shelly.GetStatus", None))
        if got is not None:
            out[dev.id] = got
    return out


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.1)


def ask_status_update(running: Running, prefixes: Sequence[str]) -> None:
    """Publish ``status_update`` on every ``<prefix>/command`` as kilowatch's own broker user."""
    mosquitto = running.mosquitto
    assert mosquitto is not None
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"kw-ask-{uuid.uuid4().hex}")
    client.username_pw_set(mosquitto.user, mosquitto.password)
    client.connect("127.0.0.1", running.mqtt_port)
    client.loop_start()
    try:
        sent = [client.publish(f"{p}/command", "status_update", qos=1) for p in prefixes]
        for info in sent:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def fresh_readings(
    store: Store, ids: set[str], since: dict[tuple[str, str], float], *, timeout: float
) -> dict[tuple[str, str], Any]:
    """The latest reading of every channel, once every device in ``ids`` has one newer than
    ``since`` (it went on publishing after it was provisioned)."""
    deadline = time.monotonic() + timeout
    while True:
        readings = {(r.device, r.channel): r for r in await store.latest()}
        newer = {d for (d, c), r in readings.items() if r.ts > since.get((d, c), 0.0)}
        if newer >= ids:
            return readings
        late = sorted(ids - newer)
        assert time.monotonic() < deadline, f"{len(late)} device(s) stopped publishing: {late[:5]}"
        await asyncio.sleep(0.25)


async def stored_energy(store: Store) -> dict[tuple[str, str], float]:
    """Energy kilowatch accounted per channel from yesterday to tomorrow (consumed + returned,
    Wh)."""
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = await store.energy(
        EnergyQuery(
            by="day", tz="UTC", start=today - dt.timedelta(days=1), end=today + dt.timedelta(days=2)
        )
    )
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r.device or "", r.channel or "")
        out[key] = out.get(key, 0.0) + r.energy_wh + r.returned_energy_wh
    return out


def by_device(results: Sequence[Any]) -> dict[str, Any]:
    return {r.device: r for r in results}


# --- the proof ----------------------------------------------------------------------------------


async def test_200_devices_discovered_adopted_provisioned_with_faults_per_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="kilowatch")
    began = time.monotonic()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "fleet.toml").write_text(PROFILE)
    # {{ device.id }} in the code: the limit is checked on the code as it is for each device
    pad = SCRIPT_LIMIT_BYTES - len("let ID = '';\n// \n") - 10
    (profiles / "big.js").write_text("let ID = '{{ device.id }}';\n// " + "x" * pad + "\n")
    (profiles / "big.toml").write_text(BIG_PROFILE)
    (profiles / "badcert.toml").write_text(BAD_CERT_PROFILE)
    bad_cert, _, bad_material = bad_client_cert(profiles)

    async with (
        site(tmp_path) as s,
        Fleet(
            devices=DEVICES, models=("pm1", "3em", "switch"), http_hosts=MAIN_NET,
            unprovisioned=True, speed=SPEED, seed=61, loads=LOADS,
        ) as fleet,
        Fleet(
            devices=6, models=("pm1",), http_hosts=FAULT_NET, unprovisioned=True,
            speed=SPEED, seed=62,
        ) as faulty,
    ):  # fmt: skip
        offline, locked, slow, big, badcert, control = faulty.devices
        locked.auth_ha1 = ha1_for(locked.id, OWNERS_PASSWORD)
        slow.boot_time_s = SLOW_BOOT_S
        ids = {d.id for d in fleet.devices}
        all_ids = ids | {d.id for d in faulty.devices}

        # 1. discover: a real scan of both networks (254 addresses each)
        found = await scan(parse_targets([MAIN_NET, FAULT_NET]), session=s.session)
        assert {f.device for f in found} == all_ids
        addresses = {f.device: f.address for f in found}
        assert all(addresses[d.id] == fleet.address(d) for d in fleet.devices)
        summary = await record_found(s.store, found, now=time.time())
        assert set(summary.new) == all_ids
        regs = {r.device: r for r in await s.store.registry()}
        assert set(regs) == all_ids
        discovered_s = time.monotonic() - began

        # 2. adopt everything in one call; the offline device went down after the scan
        offline.fault_outage(10 * 3600)
        ca = load_material(ca=export_ca(tls_dir(s.settings.data_dir))[0])
        options = AdoptOptions(
            server=s.tls_server, tls=ca, password="not-the-owners-password", wait_s=WAIT_S,
            concurrency=64,
        )  # fmt: skip
        at_adopt = await counters(fleet)
        t_adopt = time.monotonic()
        adopted = by_device(
            await adopt(
                s.store, list(regs.values()), opener=s.adopt_opener, secrets_box=s.box,
                options=options, reload=s.reload,
            )
        )  # fmt: skip
        adopt_s = time.monotonic() - t_adopt
        adopted_counters = await counters(fleet)
        for device in ids | {slow.id, big.id, badcert.id, control.id}:
            result = adopted[device]
            assert result.outcome is Outcome.ADOPTED, result
            assert result.changed == ("credentials", "tls", "mqtt", "reboot"), result
        assert adopted[slow.id].seconds > SLOW_BOOT_S
        for dev, error in ((offline, "DeviceConnectionError"), (locked, "InvalidAuthError")):
            result = adopted[dev.id]
            assert (result.outcome, result.step, result.error_type) == (
                Outcome.FAILED, AdoptStep.CONNECT, error
            ), result  # fmt: skip
        assert locked.active_mqtt.get("enable") is False  # nothing reached it
        users = await credentials(s.store)
        for dev in fleet.devices:
            kept = s.box.get(dev.id)
            assert kept is not None and kept.broker_password is not None
            assert accepts(users[dev.id], kept.broker_password)
            assert dev.mqtt_pass == kept.broker_password
            assert dev.active_mqtt["user"] == dev.id
            assert dev.active_mqtt["ssl_ca"] == "user_ca.pem"
            assert dev.active_mqtt["server"] == s.tls_server

        # 3. apply: the metering profile to the 200 and to the offline, locked, slow and control
        # devices; at the same time a too-large script to one device and a bad certificate to
        # another. kilowatch's password for the locked device is a wrong one.
        profile = load_profile(profiles / "fleet.toml")
        big_profile = load_profile(profiles / "big.toml")
        with pytest.raises(FleetError, match=r"Ed25519") as refused:
            load_profile(profiles / "badcert.toml")
        assert str(bad_cert) in str(refused.value)
        # the same material past kilowatch's check, as if it had loaded: the device refuses it
        forced = Profile(path=profiles / "badcert.toml", tls_material=bad_material)
        kept = s.box.get(locked.id) or DeviceSecrets()
        s.box.put(locked.id, replace(kept, device_password="a-wrong-one"))
        main_regs = [r for d, r in regs.items() if d not in (big.id, badcert.id)]
        since = {(r.device, r.channel): r.ts for r in await s.store.latest()}
        t_apply = time.monotonic()
        report, big_report, cert_report = await asyncio.gather(
            s.apply(profile, main_regs),
            s.apply(big_profile, [regs[big.id]]),
            s.apply(forced, [regs[badcert.id]]),
        )
        apply_s = time.monotonic() - t_apply
        applied = await counters(fleet)
        results = by_device(report.devices)
        await s.store.register(registry_updates(profile, report))  # as kilowatch fleet apply
        for device in ids | {slow.id, control.id}:
            result = results[device]
            assert result.status is Status.OK, result.to_json()
            assert result.steps == ("system", "scripts", "auth", "verify"), result.to_json()
        gone = results[offline.id]
        assert gone.status is Status.FAILED and gone.attempts == FAST.attempts
        assert gone.error is not None and gone.error.type == "DeviceConnectionError"
        wrong = results[locked.id]
        assert wrong.status is Status.FAILED and wrong.attempts == 1, wrong.to_json()
        assert wrong.error is not None and wrong.error.type == "InvalidAuthError"
        (too_big,) = big_report.devices
        assert too_big.status is Status.FAILED and too_big.steps == (), too_big.to_json()
        assert too_big.error is not None and too_big.error.type == "FleetError"
        assert "over the device limit" in too_big.error.message
        assert big.scripts.slots == {}  # refused before any write
        (cert,) = cert_report.devices
        assert cert.status is Status.FAILED and cert.steps == (), cert.to_json()
        assert cert.error is not None and cert.error.type == "RpcCallError", cert.to_json()
        assert "PutTLSClientKey" in cert.error.message
        assert badcert.active_mqtt["ssl_ca"] == "user_ca.pem"  # its broker connection is intact

        # every provisioned device: name, debug log, its own password, the metering script
        for dev in [*fleet.devices, slow, control]:
            held = s.box.get(dev.id)
            assert held is not None and held.device_password, dev.id
            assert dev.auth_ha1 == ha1_for(dev.id, held.device_password)
            assert dev.config["sys"]["device"]["name"] == dev.id
            assert dev.config["sys"]["debug"]["mqtt"]["enable"] is True
            (script,) = dev.scripts.slots.values()
            assert script.name == "kilowatch-hourly" and script.enable
            assert script.code == METERING_SCRIPT.read_text()
        passwords = {s.box.get(d).device_password for d in ids}  # type: ignore[union-attr]
        assert len(passwords) == DEVICES  # one of its own each

        # publishing, and their energy in the store, within what the devices really counted
        await until(
            lambda: all(fleet.mqtt[d].connected() for d in ids), 10, "every device connected"
        )
        # each device publishes its whole status when asked (its counters, stamped on receipt)
        await asyncio.to_thread(ask_status_update, s.running, sorted(ids))
        await fresh_readings(s.store, ids, since, timeout=20)
        # The energy kilowatch accounted for each single-channel meter covers at least what the
        # device counted from the end of its adoption to the end of the apply, and at most what
        # it counted from before its adoption until now.
        deadline = time.monotonic() + 20
        while True:
            energy = await stored_energy(s.store)
            short = [
                d for d, (channel, wh) in adopted_counters.items()
                if energy.get((d, channel), 0.0) < applied[d][1] - wh - 1e-3
            ]  # fmt: skip
            if not short:
                break
            assert time.monotonic() < deadline, f"energy missing in the store: {short[:5]}"
            await asyncio.sleep(0.25)
        now = await counters(fleet)
        for device, (channel, wh) in at_adopt.items():
            assert energy.get((device, channel), 0.0) <= now[device][1] - wh + 1e-3, device
        moved = [d for d in at_adopt if applied[d][1] - adopted_counters[d][1] > 0]
        assert len(moved) > 10, "too few loads ran for the energy check to mean anything"
        # the debug log over MQTT reaches kilowatch (the device logs every RPC it answers)
        logs = await asyncio.gather(*(s.store.logs(d, limit=1) for d in sorted(ids)))
        assert all(logs), f"{sum(1 for lines in logs if not lines)} device(s) without a log line"

        # the broker finds all 200 by their retained online flag and MQTT RPC
        mosquitto = s.running.mosquitto
        assert mosquitto is not None
        async with MqttRpc(
            "127.0.0.1", s.running.mqtt_port, username=mosquitto.user, password=mosquitto.password
        ) as mqtt:  # fmt: skip
            on_broker = {f.device: f for f in await from_broker(mqtt, wait=2.0)}
        assert set(on_broker) >= ids
        assert all(on_broker[d].prefix == d for d in ids)

        # the registry: the way back to each device
        registry = {r.device: r for r in await s.store.registry()}
        for dev in fleet.devices:
            reg = registry[dev.id]
            assert (reg.transport, reg.prefix, reg.credentials) == ("lan", dev.id, dev.id)
            assert reg.address == fleet.address(dev) and reg.mac == dev.mac
            assert reg.adopted_at is not None and reg.discovered_by == "scan"
            assert reg.script is not None, dev.id
            assert (reg.script.name, reg.script.version) == ("kilowatch-hourly", "1")
            assert reg.script.sha256 == hashlib.sha256(METERING_SCRIPT.read_bytes()).hexdigest()

        # a second apply changes nothing
        revs = {d.id: (await d.call("Sys.GetStatus", None))["cfg_rev"] for d in fleet.devices}
        again = await s.apply(profile, [regs[d] for d in ids])
        assert again.summary()["unchanged"] == DEVICES, again.summary()
        assert {d.id: (await d.call("Sys.GetStatus", None))["cfg_rev"] for d in fleet.devices} == (
            revs
        )

        # secrets: owner-only, and none in any log line
        mode = stat.S_IMODE(s.box.path.stat().st_mode)
        assert mode == 0o600, oct(mode)
        secrets = [OWNERS_PASSWORD]
        for device in all_ids:
            held = s.box.get(device)
            if held is not None:
                secrets += [p for p in (held.device_password, held.broker_password) if p]
        assert len(secrets) > 2 * DEVICES
        logged = caplog.text
        assert logged  # something was logged, so the check below means something
        leaked = [p for p in secrets if p in logged]
        assert not leaked, f"{len(leaked)} password(s) in the log"
        print(
            f"\nproof: discover {discovered_s:.1f} s, adopt {adopt_s:.1f} s, "
            f"apply {apply_s:.1f} s, total {time.monotonic() - began:.1f} s"
        )
