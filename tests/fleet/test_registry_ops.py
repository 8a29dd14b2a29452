"""The fleet registry's operations: what a sighting records (new, updated, unchanged; idempotent),
what it leaves as stored, ``--select`` expressions, and an RPC client per registered device (on
the LAN with the device password from the secrets file, over the broker by its prefix)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from kilowatch.errors import FleetError, InvalidAuthError
from kilowatch.fleet.discovery import Found, How
from kilowatch.fleet.registry import (
    RecordSummary,
    open_rpc,
    record_found,
    registration_for,
    registration_json,
    select,
)
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.store import Registration, Store, open_store
from kilowatch.testing import MosquittoServer
from shellysim import Fleet, ha1_for

NOW = 1_780_272_000.0
PM = "shellypmminig3-ecda3bc4ddb0"
PRO = "shellypro3em-a0b1c2d3e4f5"
FAR = "shellyplus1pm-44179394d4d4"


def _found(device: str, **changes: object) -> Found:
    base = Found(
        device=device, mac=device[-12:].upper(), model="S3PM-001PCEU16", gen=3, fw_ver="1.4.4",
        app="MiniPMG3", name=None, auth_en=False, address="127.0.1.7", how=How.SCAN,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'k.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("redis_url")
    )
    async with open_store(url) as s:
        yield s


def test_a_registration_from_what_was_found() -> None:
    lan = registration_for(_found(PM), now=NOW)
    assert lan == Registration(
        device=PM, mac="ECDA3BC4DDB0", model="S3PM-001PCEU16", gen=3, fw_ver="1.4.4",
        app="MiniPMG3", address="127.0.1.7", transport="lan", prefix=PM, credentials=PM,
        name=None, room=None, discovered_by="scan", seen_at=NOW,
    )  # fmt: skip
    far = registration_for(_found(FAR, address=None, how=How.BROKER, prefix="site7/a"), now=NOW)
    assert (far.transport, far.address, far.prefix, far.discovered_by) == (
        "mqtt", None, "site7/a", "broker",
    )  # fmt: skip


async def test_recording_is_idempotent(store: Store) -> None:
    found = [_found(PM), _found(PRO, model="SPEM-003CEBEU", address="127.0.1.8")]
    first = await record_found(store, found, now=NOW)
    assert first == RecordSummary(new=(PM, PRO))
    second = await record_found(store, found, now=NOW + 60)
    assert second == RecordSummary(unchanged=(PM, PRO))
    stored = {r.device: r for r in await store.registry()}
    assert stored[PM].seen_at == NOW + 60  # still, every sighting is recorded
    assert stored[PRO].address == "127.0.1.8" and stored[PRO].model == "SPEM-003CEBEU"

    moved = await record_found(store, [_found(PM, address="127.0.1.9", fw_ver="1.5.1")], now=NOW)
    assert moved == RecordSummary(updated=(PM,))
    assert moved.outcome(PM) == "updated" and moved.outcome(PRO) == ""
    assert (await store.registry())[0].address == "127.0.1.9"
    assert await record_found(store, [], now=NOW) == RecordSummary()


async def test_a_sighting_keeps_what_it_cannot_know(store: Store) -> None:
    await record_found(store, [_found(PM)], now=NOW)
    # the user named its room; adoption set its credentials reference
    await store.register([Registration(PM, room="Boiler room", credentials="pm-secrets")])
    # later seen on the broker only, under a custom prefix: still reachable on the LAN
    broker = _found(PM, address=None, how=How.BROKER, prefix="home/boiler")
    assert await record_found(store, [broker], now=NOW + 1) == RecordSummary(updated=(PM,))
    (reg,) = await store.registry()
    assert (reg.address, reg.transport, reg.prefix) == ("127.0.1.7", "lan", "home/boiler")
    assert (reg.room, reg.credentials, reg.discovered_by) == ("Boiler room", "pm-secrets", "scan")
    # a scan that knows no prefix leaves the broker's
    assert await record_found(store, [_found(PM)], now=NOW + 2) == RecordSummary(unchanged=(PM,))
    assert (await store.registry())[0].prefix == "home/boiler"


async def test_the_reported_name_only_fills_in_an_empty_one(store: Store) -> None:
    await record_found(store, [_found(PM, name="shelly-default")], now=NOW)
    assert (await store.registry())[0].name == "shelly-default"
    await store.register([Registration(PM, name="boiler")])  # the installer's name
    # a profile set the device's own name from it: a later sighting keeps the installer's
    seen = _found(PM, name="boiler (cellar)")
    assert await record_found(store, [seen], now=NOW + 1) == RecordSummary(unchanged=(PM,))
    assert (await store.registry())[0].name == "boiler"


# --- select -------------------------------------------------------------------------------------

REGS = [
    Registration(PM, model="S3PM-001PCEU16", app="MiniPMG3", room="Kitchen", name="Fridge",
                 fw_ver="1.4.4", gen=3, address="127.0.1.7", transport="lan"),
    Registration(PRO, model="SPEM-003CEBEU", app="Pro3EM", room="Garage", fw_ver="1.5.1", gen=2,
                 transport="mqtt"),
    Registration(FAR, model="SNSW-001P16EU", app="Plus1PM", name="Boiler"),
]  # fmt: skip


def _ids(expressions: list[str]) -> list[str]:
    return [r.device for r in select(REGS, expressions)]


def test_select_by_globs_anded() -> None:
    assert _ids([]) == [PM, PRO, FAR]
    assert _ids(["model=S3PM*"]) == [PM]
    assert _ids(["room=kitchen"]) == [PM]  # case-insensitive
    assert _ids(["shellyp*"]) == [PM, PRO, FAR]  # a bare glob matches ids
    assert _ids(["id=shellypro*"]) == [PRO]
    assert _ids(["app=Pro3EM"]) == [PRO]
    assert _ids(["name=B*"]) == [FAR]
    assert _ids(["room=*"]) == [PM, PRO, FAR]  # unset matches only *
    assert _ids(["room=?*"]) == [PM, PRO]
    assert _ids(["shelly*", "gen=3"]) == [PM]
    assert _ids(["fw=1.*,transport=mqtt"]) == [PRO]
    assert _ids(["model=S3PM*", "room=Garage"]) == []
    assert _ids(["address=127.0.1.*"]) == [PM]


def test_select_refuses_an_unknown_key_and_lists_the_valid_ones() -> None:
    with pytest.raises(FleetError) as err:
        select(REGS, ["model=S3PM*", "colour=red"])
    message = str(err.value)
    assert message.startswith("--select colour=red: unknown key 'colour'")
    for key in ("id", "model", "room", "app", "name"):
        assert key in message


def test_registration_json_holds_no_secret() -> None:
    out = registration_json(Registration(PM, credentials=PM, address="127.0.1.7"))
    assert out["credentials"] == PM and out["script"] is None and out["device"] == PM
    assert "password" not in str(out)


# --- the way back to a device -----------------------------------------------------------------

PASSWORD = "fleet-pw-1"


async def test_open_rpc_on_the_lan_with_the_device_password(tmp_path: Path) -> None:
    async with Fleet(devices=1, engine=None) as fleet:
        dev = fleet.devices[0]
        address = fleet.url(dev).removeprefix("http://")
        box = SecretBox.in_data_dir(tmp_path)
        box.put(dev.id, DeviceSecrets(device_password=PASSWORD))
        reg = Registration(dev.id, address=address, transport="lan", credentials=dev.id)
        async with aiohttp.ClientSession() as session:
            async with open_rpc(reg, secrets=box, session=session, mqtt=None) as rpc:
                await rpc.set_auth(dev.id, ha1_for(dev.id, PASSWORD))
            async with open_rpc(reg, secrets=box, session=session, mqtt=None) as rpc:
                assert (await rpc.sys_get_config())["device"]["mac"] == dev.mac
            async with open_rpc(reg, secrets=None, session=session, mqtt=None) as rpc:
                with pytest.raises(InvalidAuthError):
                    await rpc.sys_get_config()


async def test_open_rpc_over_the_broker_by_prefix(mosquitto: MosquittoServer) -> None:
    async with Fleet(devices=1, engine=None, broker=mosquitto.url, http=False, seed=77) as fleet:
        await fleet.wait_connected()
        dev = fleet.devices[0]
        reg = Registration(dev.id, transport="mqtt", prefix=dev.id)
        async with aiohttp.ClientSession() as session, MqttRpc("127.0.0.1", mosquitto.port) as mqtt:
            async with open_rpc(reg, secrets=None, session=session, mqtt=mqtt) as rpc:
                assert (await rpc.get_device_info())["id"] == dev.id
            with pytest.raises(FleetError, match=r"over MQTT only .* no broker is connected"):
                async with open_rpc(reg, secrets=None, session=session, mqtt=None):
                    pass
            with pytest.raises(FleetError, match="neither an address nor an MQTT prefix"):
                async with open_rpc(Registration(dev.id), secrets=None, session=session, mqtt=mqtt):
                    pass
