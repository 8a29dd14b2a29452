"""Firmware updates of simulated devices as real ones do them (shelly-api.md §17): a parameter
the firmware does not know is ignored (stable is installed), ``stage`` beta installs beta, the
new version shows after the reboot, a persistent failure, one update at a time, the OTA events
over MQTT; and the Gen1 plug's ``/ota``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_sim_mqtt import Observer

from kilowatch.testing import MosquittoServer
from shellysim import MODELS, Device, Fleet, ManualClock, mac_for
from shellysim.gen1http import BETA_FW, FW, STABLE_FW, Gen1HttpPlug

T0 = 1_767_225_600.0
GEN1_HOST = "127.0.90.202"


def make() -> Device:
    dev = Device(MODELS["pm1"], mac=mac_for(90, 1), clock=ManualClock(T0), seed=90)
    dev.boot_time_s = 0.01
    return dev


async def call(dev: Device, method: str, params: dict[str, Any] | None = None) -> Any:
    frame = await dev.handle_frame(
        {"id": 1, "src": "t", "method": method, "params": params}, source="http"
    )
    assert frame is not None
    return frame


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_an_unknown_parameter_is_ignored_and_stable_installed() -> None:
    async with make() as dev:
        frame = await call(dev, "Shelly.Update", {"stag": "beta"})  # a typo: ignored
        assert frame["result"] is None
        await until(lambda: dev.ver == "1.5.1" and dev.online)
        assert dev.update_requests == [{"stag": "beta"}]
        info = (await call(dev, "Shelly.GetDeviceInfo"))["result"]
        assert info["ver"] == "1.5.1"
        status = (await call(dev, "Sys.GetStatus"))["result"]
        assert status["available_updates"] == {"beta": {"version": "1.6.0-beta2"}}


async def test_stage_beta_installs_beta_and_then_nothing_is_offered() -> None:
    async with make() as dev:
        await call(dev, "Shelly.Update", {"stage": "beta"})
        await until(lambda: dev.ver == "1.6.0-beta2" and dev.online)
        assert (await call(dev, "Shelly.CheckForUpdate"))["result"] == {}
        assert (await call(dev, "Sys.GetStatus"))["result"]["available_updates"] == {}
        assert dev.config["sys"]["device"]["fw_id"].endswith("1.6.0-beta2-gd3a2a9c")
        refused = await call(dev, "Shelly.Update", {"stage": "stable"})
        assert refused["error"]["code"] == -109


async def test_fail_updates_fails_every_update_until_cleared_and_one_runs_at_a_time() -> None:
    async with make() as dev:
        events: list[str] = []
        dev.add_sink(
            lambda m, p: (
                events.extend(e["event"] for e in p["events"]) if m == "NotifyEvent" else None
            )
        )
        dev.fail_updates = True
        for _ in range(2):
            events.clear()
            await call(dev, "Shelly.Update", {"stage": "stable"})
            busy = await call(dev, "Shelly.Update", {"stage": "stable"})
            assert busy["error"] == {"code": -109, "message": "An update is already in progress"}
            await until(lambda: "ota_error" in events)
            await asyncio.sleep(0.05)
            assert dev.ver == "1.4.4" and "ota_success" not in events
        dev.fail_updates = False
        await call(dev, "Shelly.Update", {"stage": "stable"})
        await until(lambda: dev.ver == "1.5.1" and dev.online)
        assert len(dev.update_requests) == 5


async def test_ota_events_are_published_as_notify_event_over_mqtt(
    mosquitto: MosquittoServer,
) -> None:
    async with Fleet(devices=1, engine=None, http=False, broker=mosquitto.url, seed=9013) as f:
        await f.wait_connected()
        dev = f.devices[0]
        # connected is not yet ready: notifications flow once subscribed and announced
        await until(lambda: any("MQTT connected" in line for line in dev.log_ring))
        observer = Observer(mosquitto.port, f"{dev.id}/events/rpc")
        try:
            await dev.call("Shelly.Update", {"stage": "stable"})
            await until(lambda: dev.ver == "1.5.1" and dev.online)
            await f.wait_connected()
            await asyncio.sleep(0.2)
            frames = [json.loads(p) for p in observer.on(f"{dev.id}/events/rpc")]
        finally:
            observer.client.loop_stop()
            observer.client.disconnect()
        items = [
            e for fr in frames if fr["method"] == "NotifyEvent" for e in fr["params"]["events"]
        ]
        sys_events = [e["event"] for e in items if e["component"] == "sys"]
        assert sys_events[0] == "ota_begin" and "ota_success" in sys_events
        assert [e["progress_percent"] for e in items if e["event"] == "ota_progress"] == [
            0, 25, 50, 75, 100
        ]  # fmt: skip
        assert all(fr["src"] == dev.id and fr["dst"] == f"{dev.id}/events" for fr in frames)


async def test_gen1_plug_updates_through_ota_and_can_fail() -> None:
    async with Fleet(devices=0) as fleet, aiohttp.ClientSession() as http:
        plug = Gen1HttpPlug(host=GEN1_HOST, clock=fleet.clock, seed=91)
        async with plug:
            base = f"http://{GEN1_HOST}"

            async def get(path: str) -> dict[str, Any]:
                async with http.get(base + path) as resp:
                    body: dict[str, Any] = await resp.json()
                    return body

            update = (await get("/status"))["update"]
            assert update == {
                "status": "idle", "has_update": True, "new_version": STABLE_FW,
                "old_version": FW, "beta_version": BETA_FW,
            }  # fmt: skip
            assert (await get("/ota"))["status"] == "idle"  # no parameter: only the status
            plug.fail_next_update = True
            assert (await get("/ota?update=true"))["status"] == "pending"
            await until(lambda: plug.ota_status == "updating")
            await until(lambda: plug.ota_status == "idle")
            assert (await get("/status"))["update"]["old_version"] == FW

            await get("/ota?update=true")
            await until(lambda: plug.fw == STABLE_FW)
            await until(lambda: plug.online)
            status = await get("/status")
            assert status["update"]["old_version"] == STABLE_FW and status["has_update"] is False
            assert (await get("/shelly"))["fw"] == STABLE_FW

            await get("/ota?beta=true")
            await until(lambda: plug.fw == BETA_FW)
            assert plug.update_requests == [{"update": "true"}] * 2 + [{"beta": "true"}]


@pytest.mark.parametrize("params", [None, {}])
async def test_no_params_installs_stable(params: dict[str, Any] | None) -> None:
    async with make() as dev:
        await call(dev, "Shelly.Update", params)
        await until(lambda: dev.ver == "1.5.1" and dev.online)
