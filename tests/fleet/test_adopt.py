"""``kilowatch.fleet.adopt`` end to end: unprovisioned simulated Shellies, kilowatch serve with
its managed mosquitto in this event loop, the LAN RPC client, the secrets file. Devices end up
publishing with their own broker users, their energy in the store, registered; a second run
changes nothing; one device's fault (wrong password, offline, slow reboot) is its own outcome.

Also the batch credentials functions adoption relies on (``broker.credentials.add_devices`` /
``rotate_devices``: one read and one write of the store's meta).
"""

from __future__ import annotations

import contextlib
import stat
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kilowatch.broker.credentials import (
    CREDENTIALS_KEY,
    DeviceKind,
    NewUser,
    accepts,
    add_device,
    add_devices,
    credentials,
    rotate_devices,
)
from kilowatch.broker.mosquitto import find_mosquitto, reload_running
from kilowatch.broker.tls import export_ca, tls_dir
from kilowatch.errors import ConfigError
from kilowatch.fleet.adopt import (
    AdoptOptions,
    DeviceResult,
    Outcome,
    Step,
    adopt,
    ha1,
)
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.lan import connect_lan
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.fleet.tlsmaterial import load_material
from kilowatch.service.config import Settings
from kilowatch.service.server import Running
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration, Store
from kilowatch.testing.service import running_service, service_settings

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto 2.x is not installed"
)
T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
NOW = 1_800_000_000.0
WAIT_S = 20.0
SPEED = 60.0  # a simulated minute per second: counters reach the store within a second or two


# --- the batch credentials ------------------------------------------------------------------------


async def test_add_devices_writes_every_user_at_once_or_none(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path}/kw.db") as store:
        writes = _count_meta_writes(store)
        made = await add_devices(
            store,
            [NewUser(device="dev-a"), NewUser(device="dev-b", prefix="home/b", password="pw-b")],
            now=NOW,
        )
        assert writes == [CREDENTIALS_KEY]
        assert made["dev-b"][1] == "pw-b" and made["dev-b"][0].prefix == "home/b"
        stored = await credentials(store)
        assert accepts(stored["dev-a"], made["dev-a"][1]) and accepts(stored["dev-b"], "pw-b")
        assert stored["dev-b"].publish == ("home/b/#", "/system/dev-b/status")

        with pytest.raises(ConfigError, match=r"dev-a.*already has credentials"):
            await add_devices(store, [NewUser(device="dev-c"), NewUser(device="dev-a")], now=NOW)
        with pytest.raises(ConfigError, match="listed twice"):
            await add_devices(store, [NewUser(device="dev-d"), NewUser(device="dev-d")], now=NOW)
        assert set(await credentials(store)) == {"dev-a", "dev-b"}  # nothing of either

        rotated = await rotate_devices(store, {"dev-a": "new-a", "dev-b": None}, now=NOW + 1)
        stored = await credentials(store)
        assert accepts(stored["dev-a"], "new-a") and not accepts(stored["dev-a"], made["dev-a"][1])
        assert accepts(stored["dev-b"], rotated["dev-b"][1]) and stored["dev-b"].rotated == NOW + 1
        with pytest.raises(ConfigError, match=r"dev-x.*no broker credentials"):
            await rotate_devices(store, {"dev-a": None, "dev-x": None}, now=NOW)
        assert accepts((await credentials(store))["dev-a"], "new-a")  # left as it was


def _count_meta_writes(store: Store) -> list[str]:
    writes: list[str] = []
    put = store.put_meta

    async def counting(key: str, value: Any) -> None:
        writes.append(key)
        await put(key, value)

    store.put_meta = counting  # type: ignore[method-assign]
    return writes


# --- end to end -----------------------------------------------------------------------------------


@dataclass
class Site:
    """kilowatch serve (managed mosquitto, SQLite), the adopting side's own store connection, a
    session for the LAN RPC client, and the secrets file."""

    settings: Settings
    running: Running
    store: Store
    session: aiohttp.ClientSession
    box: SecretBox

    @property
    def plain_server(self) -> str:
        return f"127.0.0.1:{self.running.mqtt_port}"

    @property
    def tls_server(self) -> str:
        assert self.running.mosquitto is not None
        port = next(x.port for x in self.running.mosquitto.listeners if x.tls is not None)
        return f"127.0.0.1:{port}"

    async def opener(self, reg: Registration, password: str | None) -> ShellyRpc:
        assert reg.address is not None
        return await connect_lan(
            reg.address, session=self.session, password=password, device_id=reg.device
        )

    async def reload(self) -> object:
        return await reload_running(self.settings.data_dir, self.store)

    async def adopt(
        self, regs: Sequence[Registration], *, tls: bool = False, **options: Any
    ) -> list[DeviceResult]:
        material = None
        if tls:
            material = load_material(ca=export_ca(tls_dir(self.settings.data_dir))[0])
        server = self.tls_server if tls else self.plain_server
        opts = AdoptOptions(server=server, tls=material, wait_s=WAIT_S, **options)
        return await adopt(
            self.store, regs, opener=self.opener, secrets_box=self.box, options=opts,
            reload=self.reload,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    settings = service_settings(tmp_path)
    async with (
        running_service(settings) as running,
        open_store(settings.store_url) as store,
        aiohttp.ClientSession() as session,
    ):
        yield Site(settings, running, store, session, SecretBox.in_data_dir(settings.data_dir))


def registration(fleet: Any, dev: Any) -> Registration:
    address = fleet.url(dev).removeprefix("http://")
    return Registration(device=dev.id, address=address, gen=2, discovered_by="scan")


def by_device(results: Sequence[DeviceResult]) -> dict[str, DeviceResult]:
    return {r.device: r for r in results}


async def has_energy(store: Store, device: str) -> bool:
    """Whether the ledger counts a counter of ``device`` (its state is committed with its
    energy)."""
    return any(key[0] == device for key in await store.load_ledger_states())


@needs_mosquitto
async def test_five_new_devices_are_adopted_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    from shellysim import Fleet

    async with site(tmp_path) as s, Fleet(
        devices=5, models=("pm1", "switch"), unprovisioned=True, start=T0, speed=SPEED,
        engine=None,
    ) as fleet:  # fmt: skip
        regs = [registration(fleet, dev) for dev in fleet.devices]
        started = time.monotonic()
        results = await s.adopt(regs)
        first_s = time.monotonic() - started
        assert [r.outcome for r in results] == [Outcome.ADOPTED] * 5, results
        for r in results:
            assert r.changed == ("credentials", "mqtt", "reboot"), r
        users = await credentials(s.store)
        kept = {dev.id: s.box.get(dev.id) for dev in fleet.devices}
        registry = {r.device: r for r in await s.store.registry()}
        for dev in fleet.devices:
            secrets = kept[dev.id]
            assert secrets is not None and secrets.broker_password is not None
            assert secrets.device_password is None  # not asked for
            assert accepts(users[dev.id], secrets.broker_password)
            assert dev.mqtt_pass == secrets.broker_password
            assert dev.active_mqtt["user"] == dev.id and dev.active_mqtt["ssl_ca"] is None
            assert dev.active_mqtt["status_ntf"] is True and dev.active_mqtt["rpc_ntf"] is True
            assert fleet.mqtt[dev.id].connected()
            assert await has_energy(s.store, dev.id)
            reg = registry[dev.id]
            assert (reg.transport, reg.prefix, reg.credentials) == ("lan", dev.id, dev.id)
            assert reg.adopted_at is not None and reg.mac == dev.mac and reg.gen in (2, 3)
        mode = stat.S_IMODE(s.box.path.stat().st_mode)
        assert mode == 0o600, oct(mode)
        for secrets in kept.values():  # a repr never shows a password
            assert secrets is not None and str(secrets.broker_password) not in repr(secrets)

        revs = {dev.id: (await dev.call("Sys.GetStatus", None))["cfg_rev"] for dev in fleet.devices}
        boots = {dev.id: dev.boot_ts for dev in fleet.devices}
        again = await s.adopt(regs)
        assert [(r.outcome, r.changed) for r in again] == [(Outcome.ALREADY, ())] * 5, again
        assert {
            d.id: (await d.call("Sys.GetStatus", None))["cfg_rev"] for d in fleet.devices
        } == revs
        assert {dev.id: dev.boot_ts for dev in fleet.devices} == boots  # no reboot
        assert await credentials(s.store) == users
        assert {dev.id: s.box.get(dev.id) for dev in fleet.devices} == kept
        assert {r.device: r.adopted_at for r in await s.store.registry()} == {
            d: r.adopted_at for d, r in registry.items()
        }
        assert first_s < WAIT_S


@needs_mosquitto
async def test_faults_are_per_device_wrong_password_offline_slow_reboot(tmp_path: Path) -> None:
    """A device whose password is not the one given fails with InvalidAuthError, an address
    nothing answers on fails to connect, a record that cannot be a broker user fails its check,
    a device that takes seconds to boot is still adopted;
    the others are adopted all the same. Devices that did not answer get no broker user: one
    made by hand for an offline device is left as it is (the device may still log in with it)."""
    from shellysim import Fleet

    async with site(tmp_path) as s, Fleet(
        devices=3, models=("pm1",), unprovisioned=True, start=T0, speed=SPEED, engine=None
    ) as fleet:  # fmt: skip
        normal, locked, slow = fleet.devices
        locked.auth_ha1 = ha1(locked.id, "the-owners-password")
        slow.boot_time_s = 4.0
        with _closed_port() as port:
            offline = Registration(
                device="shellypmminig3-0ff11e000000", address=f"127.0.0.1:{port}"
            )
            odd = Registration(device="kilowatch", address="127.0.0.1:9")  # the service's user
            regs = [registration(fleet, d) for d in fleet.devices] + [offline, odd]
            results = by_device(await s.adopt(regs, password="not-the-password"))
        assert (results["kilowatch"].step, results["kilowatch"].error_type) == (
            Step.CHECK, "ConfigError"
        )  # fmt: skip
        assert results[normal.id].outcome is Outcome.ADOPTED
        assert results[slow.id].outcome is Outcome.ADOPTED, results[slow.id]
        assert results[slow.id].seconds > 4.0
        bad = results[locked.id]
        assert (bad.outcome, bad.step, bad.error_type) == (
            Outcome.FAILED, Step.CONNECT, "InvalidAuthError"
        ), bad  # fmt: skip
        assert "not-the-password" not in (bad.error or "")
        gone = results[offline.device]
        assert (gone.outcome, gone.step, gone.error_type) == (
            Outcome.FAILED, Step.CONNECT, "DeviceConnectionError"
        ), gone  # fmt: skip
        assert locked.active_mqtt.get("enable") is False  # nothing reached it
        assert {r.device for r in await s.store.registry()} == {normal.id, slow.id}

        assert set(await credentials(s.store)) == {normal.id, slow.id}

        by_hand, _ = await add_device(
            s.store, offline.device, kind=DeviceKind.SHELLY, prefix=None, now=NOW
        )
        again = by_device(await s.adopt([offline, registration(fleet, locked)],
                                        password="the-owners-password"))  # fmt: skip
        assert again[offline.device].step is Step.CONNECT
        assert (await credentials(s.store))[offline.device] == by_hand  # not rotated
        assert s.box.get(offline.device) is None
        assert again[locked.id].outcome is Outcome.ADOPTED, again[locked.id]
        kept = s.box.get(locked.id)
        assert kept is not None and kept.device_password == "the-owners-password"
        assert kept.broker_password is not None and locked.mqtt_pass == kept.broker_password


@needs_mosquitto
async def test_tls_and_a_device_password_then_nothing_changes(tmp_path: Path) -> None:
    """With TLS the devices get kilowatch's CA and connect to the TLS listener; with
    set_password each gets its own password, kept in the secrets file (one already had an
    owner's password, given). A second run with neither password given changes nothing."""
    from shellysim import Fleet

    async with site(tmp_path) as s, Fleet(
        devices=2, models=("pm1",), unprovisioned=True, start=T0, speed=SPEED, engine=None
    ) as fleet:  # fmt: skip
        owned = fleet.devices[1]
        owned.auth_ha1 = ha1(owned.id, "owners")
        regs = [registration(fleet, d) for d in fleet.devices]
        results = await s.adopt(regs, tls=True, set_password=True, password="owners")
        assert [r.outcome for r in results] == [Outcome.ADOPTED] * 2, results
        for r in results:
            assert r.changed == (
                "device-password", "credentials", "tls", "mqtt", "auth", "reboot"
            ), r  # fmt: skip
        for dev in fleet.devices:
            secrets = s.box.get(dev.id)
            assert secrets is not None and secrets.device_password not in (None, "owners")
            assert dev.auth_ha1 == ha1(dev.id, secrets.device_password)
            assert dev.active_mqtt["ssl_ca"] == "user_ca.pem"
            assert dev.active_mqtt["server"] == s.tls_server
            assert fleet.mqtt[dev.id].connected()
        again = await s.adopt(regs, tls=True, set_password=True)
        assert [(r.outcome, r.changed) for r in again] == [(Outcome.ALREADY, ())] * 2, again


@needs_mosquitto
async def test_a_crash_after_the_credentials_converges_on_the_next_run(tmp_path: Path) -> None:
    """The broker knows a password the secrets file does not (a crash between the two writes,
    or a user made by hand): the next run gives the device a new one both know. The secrets file
    has one the broker does not (a crash before the store write): replaced the same way."""
    from shellysim import Fleet

    async with site(tmp_path) as s, Fleet(
        devices=2, models=("pm1",), unprovisioned=True, start=T0, speed=SPEED, engine=None
    ) as fleet:  # fmt: skip
        by_hand, boxed = fleet.devices
        await add_device(s.store, by_hand.id, kind=DeviceKind.SHELLY, prefix=None, now=NOW)
        s.box.put(boxed.id, DeviceSecrets(None, "never-reached-the-broker"))
        results = await s.adopt([registration(fleet, d) for d in fleet.devices])
        assert [r.outcome for r in results] == [Outcome.ADOPTED] * 2, results
        users = await credentials(s.store)
        for dev in fleet.devices:
            secrets = s.box.get(dev.id)
            assert secrets is not None and secrets.broker_password is not None
            assert accepts(users[dev.id], secrets.broker_password)
            assert dev.mqtt_pass == secrets.broker_password
        assert users[by_hand.id].rotated is not None


@contextlib.contextmanager
def _closed_port() -> Any:
    """A loopback port nothing listens on (bound, never listening, so no one else takes it)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
