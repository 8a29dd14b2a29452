"""Device logs end to end: a simulated device on a real mosquitto gets ``[system] debug_mqtt =
true`` from a profile (applied over the broker, as for a remote site), sends its debug log on
``<prefix>/debug/log``, ``kilowatch serve``'s intake stores the lines, and ``kilowatch logs``
prints them (and the device's ``config_changed`` event); its power per minute is there for the
device page's chart."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
from typer.testing import CliRunner

from kilowatch.cli.app import build_app
from kilowatch.fleet.apply import SecretPasswords, apply_fleet
from kilowatch.fleet.profile import parse_profile
from kilowatch.fleet.registry import open_rpc
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.service.config import load_settings
from kilowatch.service.server import Running, serve
from kilowatch.store import Registration, open_store
from kilowatch.testing import MosquittoServer
from kilowatch.web.devicedata import device_power
from shellysim import Fleet


def kilowatch_logs(*args: str) -> list[str]:
    result = CliRunner().invoke(
        build_app(["logs"]), ["logs", *args], env={"KILOWATCH_STORE": "", "KILOWATCH_CONFIG": ""}
    )
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout.splitlines()


async def test_debug_log_lines_reach_kilowatch_logs(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    settings = load_settings(
        {
            "broker": mosquitto.url,
            "store": url,
            "data_dir": str(tmp_path),
            "mqtt_client_id": f"kilowatch-logs-{uuid.uuid4().hex[:8]}",
            "tz": "UTC",
        },
        env={},
    )
    stop, ready = asyncio.Event(), asyncio.Event()

    def on_ready(_: Running) -> None:
        ready.set()

    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        service = tg.create_task(serve(settings, stop, on_ready=on_ready, web=None))
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            async with (
                Fleet(devices=1, models=["pm1"], broker=mosquitto.url, engine=None) as fleet,
                MqttRpc("127.0.0.1", mosquitto.port) as mqtt,
                aiohttp.ClientSession() as session,
                open_store(url) as store,
            ):
                await fleet.wait_connected()
                dev = fleet.devices[0]
                box = SecretBox(tmp_path / "secrets.json")
                regs = [Registration(dev.id, mac=dev.mac, transport="mqtt", prefix=dev.id)]

                def opener(reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
                    return open_rpc(reg, secrets=box, session=session, mqtt=mqtt)

                async with asyncio.timeout(20):
                    while await store.device(dev.id) is None:  # the intake saw it
                        await asyncio.sleep(0.05)
                assert await store.logs(dev.id) == [], "debug log off out of the box"
                profile = parse_profile(
                    tmp_path / "p.toml", "[system]\ndebug_mqtt = true\n", env={}
                )
                report = await apply_fleet(profile, regs, opener, passwords=SecretPasswords(box))
                assert report.summary()["ok"] == 1, report.to_json()
                async with opener(regs[0]) as rpc:
                    await rpc.call("Shelly.GetDeviceInfo")
                async with asyncio.timeout(20):
                    while not any(
                        "Shelly.GetDeviceInfo" in x.message for x in await store.logs(dev.id)
                    ):
                        await asyncio.sleep(0.05)
                # and the device page's chart has the minute means of its power
                async with asyncio.timeout(20):
                    while True:
                        chart = await device_power(store, dev.id, hours=24, now=time.time())
                        if any(w is not None for w in chart["total_w"]):
                            break
                        await asyncio.sleep(0.05)
                assert list(chart["channels"]) == ["pm1:0"] and len(chart["total_w"]) == 1440
        finally:
            stop.set()
        await service
    seconds = time.monotonic() - started

    # the command runs its own event loop: in a thread, as from a shell beside the service
    lines = await asyncio.to_thread(kilowatch_logs, dev.id, "--store", url, "--limit", "50")
    asked = [x for x in lines if "Shelly.GetDeviceInfo via" in x]
    assert asked and asked[-1] == lines[-1], "the newest line is printed last"
    assert " info  shelly_notification.c:164  Shelly.GetDeviceInfo via " in lines[-1]
    events = await asyncio.to_thread(kilowatch_logs, dev.id, "--events", "--store", url)
    assert any(" sys  config_changed  " in x for x in events), events
    print(f"\n{len(lines)} log lines through mosquitto and the intake in {seconds:.1f} s")
