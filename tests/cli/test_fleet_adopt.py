"""``kilowatch fleet adopt``: the command as a user runs it (a subprocess) against kilowatch serve
with its managed mosquitto and simulated devices registered in the store; its checks of the broker
address devices get; its refusals before anything is touched."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kilowatch.broker.credentials import credentials
from kilowatch.broker.mosquitto import find_mosquitto
from kilowatch.cli.fleet_adopt import mqtt_server
from kilowatch.errors import ConfigError
from kilowatch.fleet.adopt import ha1
from kilowatch.fleet.secrets import SecretBox
from kilowatch.service.config import Settings, load_settings
from kilowatch.service.server import Running, serve
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration

if TYPE_CHECKING:
    from conftest import Run

SRC = Path(__file__).resolve().parents[2] / "src"
T0 = 1_767_258_000
needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto 2.x is not installed"
)


def _settings(tmp_path: Path, **more: Any) -> Settings:
    values = {
        "broker": "managed", "store": f"sqlite:///{tmp_path}/kilowatch.db",
        "mqtt_client_id": f"kw-test-{uuid.uuid4().hex[:12]}", "data_dir": str(tmp_path / "data"),
        "tz": "UTC", "mqtt_port": 0, **more,
    }  # fmt: skip
    return load_settings(values, env={})


def _args(settings: Settings) -> list[str]:
    return ["--store", settings.store_url, "--data-dir", str(settings.data_dir)]


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[Running]:
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(serve(settings, stop, on_ready=ready.set_result))
        waiting: set[asyncio.Future[Any]] = {ready, task}
        await asyncio.wait(waiting, timeout=30, return_when="FIRST_COMPLETED")
        try:
            assert ready.done(), "kilowatch did not become ready"
            yield ready.result()
        finally:
            stop.set()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILOWATCH_")}
    env |= {"PYTHONPATH": str(SRC), "HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "kilowatch", "fleet", "adopt", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@needs_mosquitto
async def test_adopt_all_reports_per_device_and_exits_1_when_one_failed(tmp_path: Path) -> None:
    from shellysim import Fleet

    settings = _settings(tmp_path)
    async with _serving(settings) as running, Fleet(
        devices=3, models=("pm1",), unprovisioned=True, start=T0, speed=60.0, engine=None
    ) as fleet:  # fmt: skip
        good_a, good_b, locked = fleet.devices
        locked.auth_ha1 = ha1(locked.id, "owners-password")
        async with open_store(settings.store_url) as store:
            await store.register([
                Registration(device=d.id, address=fleet.url(d).removeprefix("http://"), gen=3)
                for d in fleet.devices
            ])  # fmt: skip
        server = f"127.0.0.1:{running.mqtt_port}"
        common = ["--mqtt-server", server, "--wait", "20", *_args(settings)]
        out = await asyncio.to_thread(_cli, tmp_path, "--all", "--json", *common)
        assert out.returncode == 1, out.stderr
        assert "loopback address" in out.stderr  # the explicit loopback server is warned about
        report = json.loads(out.stdout)
        outcomes = {d["device"]: d for d in report["devices"]}
        assert {d: o["outcome"] for d, o in outcomes.items()} == {
            good_a.id: "adopted", good_b.id: "adopted", locked.id: "failed"
        }  # fmt: skip
        assert outcomes[locked.id]["step"] == "connect"
        assert outcomes[locked.id]["error_type"] == "InvalidAuthError"
        assert (report["adopted"], report["already-adopted"], report["failed"]) == (2, 0, 1)

        box = SecretBox.in_data_dir(settings.data_dir)
        for dev in (good_a, good_b):
            kept = box.get(dev.id)
            assert kept is not None and kept.broker_password is not None
            assert kept.broker_password not in out.stdout + out.stderr
            assert fleet.mqtt[dev.id].connected()

        password = tmp_path / "device-password"
        password.write_text("owners-password\n")
        again = await asyncio.to_thread(
            _cli, tmp_path, good_a.id, locked.id, "--password-file", str(password), *common
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 adopted, 1 already adopted, 0 failed" in again.stdout
        assert "owners-password" not in again.stdout + again.stderr
        async with open_store(settings.store_url) as store:
            assert set(await credentials(store)) == {d.id for d in fleet.devices}
            registry = {r.device: r for r in await store.registry()}
        assert all(registry[d.id].adopted_at is not None for d in fleet.devices)


@needs_mosquitto
async def test_without_a_running_managed_mosquitto_nothing_is_touched(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with open_store(settings.store_url) as store:
        await store.register([Registration(device="shellypmminig3-aabbccddeeff",
                                           address="127.0.0.1:9")])  # fmt: skip
    out = await asyncio.to_thread(
        _cli, tmp_path, "--all", "--mqtt-server", "127.0.0.1:1883", *_args(settings)
    )
    assert out.returncode == 1
    assert "no managed mosquitto runs for" in out.stderr and "start kilowatch serve" in out.stderr
    assert not (settings.data_dir / "fleet").exists()  # no secrets file written


def test_refusals_before_anything_is_opened(kilowatch: Run, tmp_path: Path) -> None:
    args = ["--store", f"sqlite:///{tmp_path}/k.db", "--data-dir", str(tmp_path / "d")]
    out = kilowatch("fleet", "adopt", *args)
    assert out.returncode == 1 and "device ids, --all or --select" in out.stderr
    out = kilowatch("fleet", "adopt", "--all", "--mqtt-server", "192.168.1.2", *args)
    assert out.returncode == 1 and "must be HOST:PORT" in out.stderr
    out = kilowatch("fleet", "adopt", "--all", "--ca", "x.pem", *args)
    assert out.returncode == 1 and "--ca goes with --tls" in out.stderr
    assert not (tmp_path / "k.db").exists()


def test_the_broker_address_devices_get(tmp_path: Path) -> None:
    lan = _settings(tmp_path, mqtt_host="192.168.1.2", mqtt_port=1883)
    assert mqtt_server(lan, None, tls=False) == ("192.168.1.2:1883", None)
    with pytest.raises(ConfigError, match="no TLS listener"):
        mqtt_server(lan, None, tls=True)
    tls = _settings(tmp_path, mqtt_host="192.168.1.2", mqtt_port=1883, mqtt_tls_local=True)
    assert mqtt_server(tls, None, tls=True) == ("192.168.1.2:8883", None)

    loopback = _settings(tmp_path, mqtt_host="127.0.0.1", mqtt_port=1883)
    with pytest.raises(ConfigError, match="loopback, which devices on the LAN cannot reach"):
        mqtt_server(loopback, None, tls=False)
    server, warning = mqtt_server(loopback, "127.0.0.1:1883", tls=False)
    assert server == "127.0.0.1:1883" and warning is not None and "loopback" in warning
    assert mqtt_server(loopback, "10.0.0.5:1884", tls=False) == ("10.0.0.5:1884", None)
    assert mqtt_server(loopback, "[fd00::5]:1883", tls=False) == ("[fd00::5]:1883", None)

    anywhere = _settings(tmp_path, mqtt_host="0.0.0.0", mqtt_port=1883)
    with pytest.raises(ConfigError, match="no address a device can use"):
        mqtt_server(anywhere, None, tls=False)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        mqtt_server(anywhere, "host-without-port", tls=False)
