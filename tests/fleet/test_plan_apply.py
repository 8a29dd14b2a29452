"""Plan and apply against simulated devices out of the box: drift, convergence over TLS to a real
mosquitto, a second apply that writes nothing, and per-device failures while the rest succeed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kilowatch.fleet.apply import (
    ApplyOptions,
    ApplyReport,
    Backoff,
    SecretPasswords,
    Status,
    apply_fleet,
    plan_fleet,
)
from kilowatch.fleet.plan import MQTT_PASS_KEY, Step
from kilowatch.fleet.profile import Profile, load_profile, parse_profile
from kilowatch.fleet.registry import open_rpc
from kilowatch.fleet.rpc.base import ShellyRpc, Transport
from kilowatch.fleet.rpc.lan import connect_lan
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.scriptdeploy import SCRIPT_LIMIT_BYTES
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.store.protocol import Registration
from kilowatch.testing import MosquittoServer
from kilowatch.testing.servers import free_port
from kilowatch.testing.tls import self_signed_cert
from shellysim import Fleet, ha1_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "profiles"
MQTT_PASSWORD = "broker-pw-1"
READS = {"get", "list", "getcode", "getstatus", "getconfig", "getdeviceinfo"}
FAST = Backoff(attempts=2, base_s=0.01, cap_s=0.02)


def is_write(method: str) -> bool:
    verb = method.split(".", 1)[1].lower()
    return not (verb in READS or verb.startswith(("get", "list")))


class Recording:
    """A real transport, with every method it sends listed in ``sent``."""

    def __init__(self, inner: Transport, sent: list[str]) -> None:
        self.inner, self.sent = inner, sent

    @property
    def label(self) -> str:
        return self.inner.label

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        self.sent.append(method)
        return await self.inner.call(method, params, timeout=timeout)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Lab:
    """Simulated devices registered as kilowatch would, reached on the LAN with the passwords of
    a real secrets file."""

    fleet: Fleet
    session: aiohttp.ClientSession
    box: SecretBox
    regs: list[Registration]
    sent: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passwords(self) -> SecretPasswords:
        return SecretPasswords(self.box)

    @asynccontextmanager
    async def open(self, reg: Registration) -> AsyncIterator[ShellyRpc]:
        assert reg.address is not None
        held = self.box.get(reg.credentials or reg.device)
        password = held.device_password if held is not None else None
        rpc = await connect_lan(
            reg.address, session=self.session, password=password, device_id=reg.device
        )
        async with rpc:
            rpc.transport = Recording(rpc.transport, self.sent.setdefault(reg.device, []))
            yield rpc

    def writes(self, device: str | None = None) -> list[str]:
        ids = [device] if device else list(self.sent)
        return [m for d in ids for m in self.sent.get(d, []) if is_write(m)]

    async def plan(self, profile: Profile, **kw: Any) -> Any:
        return await plan_fleet(profile, self.regs, self.open, passwords=self.passwords, **kw)

    async def apply(self, profile: Profile, **kw: Any) -> ApplyReport:
        kw.setdefault("options", ApplyOptions(retry=FAST))
        return await apply_fleet(profile, self.regs, self.open, passwords=self.passwords, **kw)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A real mosquitto with a TLS listener whose self-signed certificate is its own CA."""
    where = tmp_path_factory.mktemp("broker-tls")
    cert, key = self_signed_cert(where)
    port = free_port()
    extra = f"listener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
    with MosquittoServer(extra_config=extra):
        yield cert, port


@pytest.fixture
def profile_dir(tmp_path: Path, tls_broker: tuple[Path, int]) -> Path:
    """The shipped example profile, beside the broker's CA, pointed at the test broker."""
    ca, port = tls_broker
    where = tmp_path / "profile"
    shutil.copytree(EXAMPLE, where)
    shutil.copy(ca, where / "kilowatch-ca.pem")
    text = (where / "home.toml").read_text()
    (where / "home.toml").write_text(text.replace("192.168.1.20:8883", f"127.0.0.1:{port}"))
    return where


@pytest.fixture
def env() -> dict[str, str]:
    return {"KILOWATCH_MQTT_PASSWORD": MQTT_PASSWORD}


@pytest.fixture
def profile(profile_dir: Path, env: dict[str, str]) -> Profile:
    return load_profile(profile_dir / "home.toml", env=env)


def registrations(fleet: Fleet) -> list[Registration]:
    return [
        Registration(
            device=dev.id,
            mac=dev.mac,
            model=dev.spec.model,
            address=f"127.0.0.1:{fleet.port(dev)}",
            transport="lan",
            credentials=dev.id,
            name=f"Meter {i}",
            room="kitchen" if i % 2 else "cellar",
        )
        for i, dev in enumerate(fleet.devices)
    ]


@asynccontextmanager
async def lab_of(tmp_path: Path, devices: int, **fleet_kw: Any) -> AsyncIterator[Lab]:
    async with (
        Fleet(devices=devices, models=["pm1"], unprovisioned=True, tick_s=0.05, **fleet_kw) as f,
        aiohttp.ClientSession() as session,
    ):
        box = SecretBox(tmp_path / "data" / "fleet" / "secrets.json")
        yield Lab(f, session, box, registrations(f))


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with lab_of(tmp_path, 3) as lab:
        yield lab


async def test_plan_of_fresh_devices_shows_drift_and_writes_nothing(
    lab: Lab, profile: Profile
) -> None:
    plans = await lab.plan(profile)
    assert [p.device for p in plans] == [r.device for r in lab.regs]
    first = plans[0]
    assert first.error is None
    fields = {c.field: c for c in first.changes}
    assert fields["mqtt.enable"].actual is False and fields["mqtt.enable"].desired is True
    assert fields["mqtt.ssl_ca"].desired == "user_ca.pem"
    assert fields["mqtt.topic_prefix"].desired == f"home/cellar/{first.device}"
    assert fields["mqtt.user"].desired == first.device
    assert fields["mqtt.pass"].desired == "$KILOWATCH_MQTT_PASSWORD"
    assert fields["sys.device.name"].desired == "Meter 0 (cellar)"
    assert fields["sys.location.tz"].desired == "Europe/Vienna"
    assert "missing" in fields["script:announce"].actual
    assert fields["tls"].actual is None
    assert (fields["auth"].actual, fields["auth"].desired) == ("disabled", "enabled")
    assert fields["firmware"].advisory and fields["firmware"].actual == "1.4.4"
    assert first.steps == (Step.TLS, Step.MQTT, Step.SYSTEM, Step.SCRIPTS, Step.AUTH)
    assert MQTT_PASSWORD not in repr(plans) and MQTT_PASSWORD not in str(first.to_json())
    assert lab.writes() == []


async def test_apply_converges_then_a_second_apply_writes_nothing(
    lab: Lab, profile: Profile
) -> None:
    report = await lab.apply(profile)
    assert report.summary()["ok"] == 3, report.to_json()
    assert not report.failed
    for result in report.devices:
        assert result.steps == (
            "tls",
            "mqtt",
            "system",
            "scripts",
            "auth",
            "reboot",
            "verify",
        )
        assert result.notices == (
            "firmware 1.4.4 below minimum 1.5.1: use kilowatch fleet firmware update",
        )
        assert result.attempts == 1 and result.error is None
    for dev, reg in zip(lab.fleet.devices, lab.regs, strict=True):
        held = lab.box.get(dev.id)
        assert held is not None and held.device_password
        assert dev.auth_ha1 == ha1_for(dev.id, held.device_password)
        assert dev.mqtt_pass == MQTT_PASSWORD
        assert dev.config["sys"]["device"]["name"] == f"{reg.name} ({reg.room})"
        assert [s.name for s in dev.scripts.slots.values()] == ["announce"]
        assert dev.kvs.get({"key": MQTT_PASS_KEY})["value"]
    # The devices run the new config after the reboot: connected over TLS to the broker.
    for reg in lab.regs:
        async with lab.open(reg) as rpc:
            for _ in range(100):
                if (await rpc.mqtt_get_status()).get("connected"):
                    break
                await asyncio.sleep(0.05)
            assert (await rpc.mqtt_get_status())["connected"] is True
    lab.sent.clear()
    again = await lab.apply(profile)
    assert again.summary()["unchanged"] == 3, again.to_json()
    assert all(d.steps == () for d in again.devices)
    assert all([c.field for c in d.changes] == ["firmware"] for d in again.devices)
    assert lab.writes() == []
    body = again.to_json()
    assert body["summary"] == {
        "devices": 3,
        "ok": 0,
        "unchanged": 3,
        "failed": 0,
        "planned": 0,
    }
    assert body["devices"][0]["status"] == "unchanged"
    assert body["devices"][0]["notices"] == [
        "firmware 1.4.4 below minimum 1.5.1: use kilowatch fleet firmware update"
    ]


async def test_dry_run_writes_nothing(lab: Lab, profile: Profile) -> None:
    report = await lab.apply(profile, options=ApplyOptions(dry_run=True))
    assert report.dry_run and report.summary()["planned"] == 3
    assert report.devices[0].steps == ("tls", "mqtt", "system", "scripts", "auth")
    assert lab.writes() == []
    assert not report.failed


async def test_offline_device_fails_alone(lab: Lab, profile: Profile) -> None:
    down = lab.fleet.devices[1]
    down.fault_outage(3600)
    report = await lab.apply(profile)
    by_id = {d.device: d for d in report.devices}
    failed = by_id[down.id]
    assert failed.status is Status.FAILED and failed.attempts == FAST.attempts
    assert failed.error is not None and failed.error.type == "DeviceConnectionError"
    assert report.failed and report.summary()["ok"] == 2


async def test_wrong_stored_password_fails_that_device(lab: Lab, profile: Profile) -> None:
    locked = lab.fleet.devices[0]
    locked.auth_ha1 = ha1_for(locked.id, "the-real-one")
    lab.box.put(locked.id, DeviceSecrets(device_password="a-wrong-one"))
    report = await lab.apply(profile)
    result = {d.device: d for d in report.devices}[locked.id]
    assert result.status is Status.FAILED and result.attempts == 1
    assert result.error is not None and result.error.type == "InvalidAuthError"
    assert lab.writes(locked.id) == []
    assert report.summary()["ok"] == 2


async def test_script_over_the_limit_fails_that_device_before_any_write(
    lab: Lab, profile_dir: Path, env: dict[str, str]
) -> None:
    # The device's name goes into the code: only the device with a long name is over the limit.
    pad = SCRIPT_LIMIT_BYTES - 100
    (profile_dir / "big.js").write_text("let NAME = '{{ device.name }}';\n// " + "x" * pad + "\n")
    (profile_dir / "big.toml").write_text(
        '[system]\nname = "{{ device.name }}"\n\n[[scripts]]\nname = "big"\nfile = "big.js"\n'
    )
    profile = load_profile(profile_dir / "big.toml", env=env)
    lab.regs[2] = replace(lab.regs[2], name="N" * 200)
    report = await lab.apply(profile)
    result = report.devices[2]
    assert result.status is Status.FAILED and result.error is not None
    assert result.error.type == "FleetError" and "over the device limit" in result.error.message
    assert lab.writes(lab.regs[2].device) == []
    assert [d.status for d in report.devices[:2]] == [Status.OK, Status.OK]


async def test_retry_succeeds_after_a_brief_outage(lab: Lab, profile: Profile) -> None:
    flaky = lab.fleet.devices[0]
    flaky.fault_outage(0.6)
    options = ApplyOptions(retry=Backoff(attempts=6, base_s=0.2, cap_s=1.0))
    report = await lab.apply(profile, options=options)
    result = {d.device: d for d in report.devices}[flaky.id]
    assert result.status is Status.OK, result.to_json()
    assert result.attempts > 1
    assert not report.failed


async def test_env_password_change_is_planned_and_applied(
    lab: Lab, profile_dir: Path, env: dict[str, str]
) -> None:
    text = '[auth]\npassword_env = "DEVICE_PW"\n'
    (profile_dir / "auth.toml").write_text(text)
    first = parse_profile(profile_dir / "auth.toml", text, env={"DEVICE_PW": "one-1"})
    assert (await lab.apply(first)).summary()["ok"] == 3
    second = parse_profile(profile_dir / "auth.toml", text, env={"DEVICE_PW": "two-2"})
    plans = await lab.plan(second)
    assert [str(c) for c in plans[0].changes] == ["auth.password: (other) → $DEVICE_PW"]
    assert (await lab.apply(second)).summary()["ok"] == 3
    dev = lab.fleet.devices[0]
    assert dev.auth_ha1 == ha1_for(dev.id, "two-2")
    assert (await lab.apply(second)).summary()["unchanged"] == 3


async def test_a_script_not_started_at_boot_runs_after_the_reboot(
    lab: Lab, profile_dir: Path, env: dict[str, str]
) -> None:
    text = (
        '[mqtt]\nserver = "127.0.0.1:1"\n\n'
        '[[scripts]]\nname = "manual"\nfile = "announce.js"\nenable = false\n'
        '[scripts.vars]\nsite = "s"\ntopic = "t"\n'
    )
    (profile_dir / "manual.toml").write_text(text)
    profile = load_profile(profile_dir / "manual.toml", env=env)
    report = await lab.apply(profile)
    assert report.summary()["ok"] == 3, report.to_json()
    assert report.devices[0].steps == ("mqtt", "scripts", "reboot", "scripts", "verify")
    for dev in lab.fleet.devices:
        (slot,) = dev.scripts.slots.values()
        assert slot.running and not slot.enable
    lab.sent.clear()
    assert (await lab.apply(profile)).summary()["unchanged"] == 3
    assert lab.writes() == []


async def test_firmware_drift_is_reported_never_applied(lab: Lab, profile_dir: Path) -> None:
    text = '[firmware]\nstage = "stable"\n'
    profile = parse_profile(profile_dir / "fw.toml", text, env={})
    plans = await lab.plan(profile)
    assert [str(c) for c in plans[0].changes] == ["firmware: 1.4.4 → 1.5.1 (stable)"]
    assert plans[0].pending == ()
    report = await lab.apply(profile)
    assert report.summary()["unchanged"] == 3 and not report.failed
    assert report.devices[0].notices == (
        "firmware 1.4.4, 1.5.1 (stable) offered: use kilowatch fleet firmware update",
    )
    assert lab.writes() == []
    current = parse_profile(profile_dir / "fw.toml", '[firmware]\nminimum = "1.4.4"\n', env={})
    assert all(p.changes == () for p in await lab.plan(current))


class MaxInFlight:
    """A progress listener that records the most devices worked on at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.steps: list[tuple[str, str]] = []

    def started(self, device: str) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def step(self, device: str, step: str) -> None:
        self.steps.append((device, step))

    def finished(self, device: str, status: Status) -> None:
        self.now -= 1


async def test_concurrency_is_bounded_and_progress_told(lab: Lab, profile: Profile) -> None:
    seen = MaxInFlight()
    report = await lab.apply(
        profile, options=ApplyOptions(concurrency=2, retry=FAST), progress=seen
    )
    assert report.summary()["ok"] == 3
    assert seen.most == 2 and seen.now == 0
    one = [step for device, step in seen.steps if device == lab.regs[0].device]
    assert one == ["plan", "tls", "mqtt", "system", "scripts", "auth", "reboot", "verify"]


async def test_a_slow_reboot_is_waited_for_within_its_bound(lab: Lab, profile: Profile) -> None:
    slow, too_slow = lab.fleet.devices[0], lab.fleet.devices[1]
    slow.boot_time_s = 1.0
    too_slow.boot_time_s = 6.0
    options = ApplyOptions(retry=FAST, reboot_timeout_s=2.5)
    report = await lab.apply(profile, options=options)
    by_id = {d.device: d for d in report.devices}
    assert by_id[slow.id].status is Status.OK and by_id[slow.id].attempts == 1
    failed = by_id[too_slow.id]
    assert failed.status is Status.FAILED, failed.to_json()
    assert failed.error is not None
    assert failed.error.type in {"DeviceTimeoutError", "DeviceConnectionError"}
    assert failed.steps[-1] == "auth"  # everything done but the wait for its return


async def test_over_mqtt_a_device_is_configured_but_never_cut_off(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """A device kilowatch reaches only through the broker (a remote site): system settings and
    scripts apply over MQTT RPC; changing the MQTT link it is reached by is refused."""
    async with (
        Fleet(devices=2, models=["pm1"], broker=mosquitto.url, tick_s=0.05) as fleet,
        MqttRpc("127.0.0.1", mosquitto.port) as mqtt,
        aiohttp.ClientSession() as session,
    ):
        await fleet.wait_connected()
        box = SecretBox(tmp_path / "secrets.json")
        regs = [
            Registration(device=d.id, mac=d.mac, transport="mqtt", prefix=d.id, name="Remote")
            for d in fleet.devices
        ]

        def opener(reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
            return open_rpc(reg, secrets=box, session=session, mqtt=mqtt)

        where = tmp_path / "remote.toml"
        text = '[system]\nname = "{{ device.name }}"\ntz = "Europe/Lisbon"\n'
        remote = parse_profile(where, text, env={})
        report = await apply_fleet(remote, regs, opener, passwords=SecretPasswords(box))
        assert report.summary()["ok"] == 2, report.to_json()
        assert all(d.config["sys"]["location"]["tz"] == "Europe/Lisbon" for d in fleet.devices)
        again = await apply_fleet(remote, regs, opener, passwords=SecretPasswords(box))
        assert again.summary()["unchanged"] == 2

        moved = parse_profile(where, '[mqtt]\nserver = "127.0.0.9:1883"\n', env={})
        report = await apply_fleet(moved, regs, opener, passwords=SecretPasswords(box))
        assert report.summary()["failed"] == 2
        error = report.devices[0].error
        assert error is not None and "would cut kilowatch off" in error.message
        assert all(d.config["mqtt"]["server"] != "127.0.0.9:1883" for d in fleet.devices)
