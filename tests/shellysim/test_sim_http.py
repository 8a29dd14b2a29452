"""HTTP and WebSocket RPC of simulated devices, digest auth, and aioshelly as a real client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from shellysim import Fleet, ha1_for

PASSWORD = "s3cret-pw"


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet(devices=2, models=["switch", "3em"], speed=60, engine=None, tick_s=0.05) as f:
        yield f


async def test_http_forms(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    url = fleet.url(dev)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{url}/shelly")
        assert r.status_code == 200 and r.headers["connection"] == "close"
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["id"] == dev.id and r.json()["gen"] == 2
        r = await c.get(f"{url}/rpc/Switch.Set?id=0&on=false")
        assert r.status_code == 200 and r.json() == {"was_on": True}
        r = await c.post(f"{url}/rpc/Switch.Toggle", json={"id": 0})
        assert r.json() == {"was_on": False}
        r = await c.post(
            f"{url}/rpc",
            json={"id": 3, "src": "me", "method": "switch.getstatus", "params": {"id": 0}},
        )
        frame = r.json()
        assert frame["id"] == 3 and frame["src"] == dev.id and frame["dst"] == "me"
        assert frame["result"]["output"] is True and frame["result"]["source"] == "http"
        cfg = json.dumps({"enable": True, "server": "127.0.0.1:1", "status_ntf": True})
        r = await c.get(f"{url}/rpc/MQTT.SetConfig", params={"config": cfg})
        assert r.json() == {"restart_required": True}
        r = await c.get(f"{url}/rpc/MQTT.GetConfig")
        assert r.json()["server"] == "127.0.0.1:1" and r.json()["status_ntf"] is True
        r = await c.get(
            f"{url}/rpc/Sys.SetConfig", params={"config": '{"device":{"name":"Meter box"}}'}
        )
        assert (await c.get(f"{url}/shelly")).json()["name"] == "Meter box"
        r = await c.get(f"{url}/rpc/Nope.Nothing")
        assert r.status_code == 404 and r.json() == {
            "code": 404,
            "message": "No handler for Nope.Nothing",
        }
        r = await c.get(f"{url}/rpc/Switch.GetStatus?id=4")
        assert r.status_code >= 400
        assert r.json() == {"code": -105, "message": "Argument 'id', value 4 not found!"}
        r = await c.post(f"{url}/rpc", json={"id": 4, "method": "Switch.GetStatus", "params": {}})
        assert r.status_code == 200 and r.json()["error"] == {
            "code": -103,
            "message": "Missing required 'id'",
        }
        assert "dst" not in r.json()
        other = fleet.devices[1]
        r = await c.get(f"{fleet.url(other)}/rpc/EM.GetStatus?id=0")
        assert r.json()["id"] == 0 and "total_act_power" in r.json()


async def test_digest_auth_on_http(fleet: Fleet) -> None:
    dev = fleet.devices[1]
    url = fleet.url(dev)
    async with httpx.AsyncClient() as c:
        ha1 = ha1_for(dev.id, PASSWORD)
        r = await c.post(
            f"{url}/rpc/Shelly.SetAuth", json={"user": "admin", "realm": dev.id, "ha1": ha1}
        )
        assert r.status_code == 200
        r = await c.get(f"{url}/rpc/Shelly.GetStatus")
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Digest qop="auth", realm="' + dev.id + '", nonce="')
        assert challenge.endswith("algorithm=SHA-256")
        ok = await c.get(f"{url}/rpc/Shelly.GetStatus", auth=httpx.DigestAuth("admin", PASSWORD))
        assert ok.status_code == 200 and "em:0" in ok.json()
        bad = await c.get(f"{url}/rpc/Shelly.GetStatus", auth=httpx.DigestAuth("admin", "nope"))
        assert bad.status_code == 401
        post = await c.post(
            f"{url}/rpc",
            json={"id": 1, "method": "EM.GetStatus", "params": {"id": 0}},
            auth=httpx.DigestAuth("admin", PASSWORD),
        )
        assert post.json()["result"]["id"] == 0
        # exempt: /shelly and Shelly.GetDeviceInfo
        assert (await c.get(f"{url}/shelly")).json()["auth_en"] is True
        info = await c.get(f"{url}/rpc/Shelly.GetDeviceInfo")
        assert info.status_code == 200 and info.json()["auth_domain"] == dev.id
        r = await c.post(
            f"{url}/rpc/Shelly.SetAuth",
            json={"user": "admin", "realm": dev.id, "ha1": None},
            auth=httpx.DigestAuth("admin", PASSWORD),
        )
        assert r.status_code == 200
        assert (await c.get(f"{url}/rpc/Shelly.GetStatus")).status_code == 200


async def test_websocket_auth_frame_and_notifications(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    url = fleet.url(dev)
    dev.auth_ha1 = ha1_for(dev.id, PASSWORD)
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/rpc") as ws:
        await ws.send_json({"id": 1, "src": "user_1", "method": "Shelly.GetStatus"})
        frame = json.loads(await ws.receive_str(timeout=5))
        assert frame["id"] == 1 and frame["src"] == dev.id and frame["dst"] == "user_1"
        assert frame["error"]["code"] == 401
        challenge = json.loads(frame["error"]["message"])
        assert set(challenge) == {"auth_type", "nonce", "nc", "realm", "algorithm"}
        assert challenge["auth_type"] == "digest" and challenge["realm"] == dev.id
        assert challenge["algorithm"] == "SHA-256" and isinstance(challenge["nonce"], int)
        # GetDeviceInfo is exempt
        await ws.send_json({"id": 2, "src": "user_1", "method": "Shelly.GetDeviceInfo"})
        assert json.loads(await ws.receive_str(timeout=5))["result"]["auth_en"] is True


async def test_aioshelly_connects_authenticates_and_gets_notifications(fleet: Fleet) -> None:
    from aioshelly.common import ConnectionOptions
    from aioshelly.exceptions import InvalidAuthError
    from aioshelly.rpc_device import RpcDevice, RpcUpdateType

    dev = fleet.devices[0]
    dev.auth_ha1 = ha1_for(dev.id, PASSWORD)
    port = fleet.port(dev)
    async with aiohttp.ClientSession() as session:
        wrong = await RpcDevice.create(
            session, None, ConnectionOptions("127.0.0.1", "admin", "x", port=port)
        )
        with pytest.raises(InvalidAuthError):
            await wrong.initialize()
        await wrong.shutdown()

        opts = ConnectionOptions("127.0.0.1", "admin", PASSWORD, port=port)
        device = await RpcDevice.create(session, None, opts)
        updates: list[Any] = []
        device.subscribe_updates(lambda d, kind: updates.append(kind))
        await device.initialize()
        try:
            assert device.initialized and device.requires_auth
            assert device.shelly["id"] == dev.id and device.gen == 2
            assert device.status["switch:0"]["id"] == 0
            assert device.config["mqtt"]["client_id"] == dev.id
            await device.switch_set(0, False)
            async with asyncio.timeout(10):
                while RpcUpdateType.STATUS not in updates or device.status["switch:0"]["output"]:
                    await asyncio.sleep(0.02)
            assert device.status["switch:0"]["output"] is False  # merged from NotifyStatus
            await device.trigger_reboot(500)
            async with asyncio.timeout(10):
                while RpcUpdateType.DISCONNECTED not in updates:
                    await asyncio.sleep(0.02)
        finally:
            await device.shutdown()


async def test_emdata_csv_download() -> None:
    start = 1_767_225_600.0
    async with Fleet(devices=1, models=["3em"], speed=7200, start=start, engine=None,
                     tick_s=0.05) as fleet:  # fmt: skip
        await fleet.wait_until(start + 3 * 3600)
        dev = fleet.devices[0]
        url = f"{fleet.url(dev)}/emdata/0/data.csv?ts={int(start)}&end_ts={int(start + 7200)}"
        async with httpx.AsyncClient() as c:
            r = await c.get(url)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            rows = r.text.strip().split("\n")
            header = rows[0].split(",")
            assert header[:2] == ["timestamp", "a_total_act_energy"] and len(header) == 52
            assert (
                len(rows) == 1 + 119
            )  # records start one minute after boot; GetData chunks joined
            first = rows[1].split(",")
            assert int(first[0]) == start + 60 and len(first) == 52
            gd = await dev.call(
                "EMData.GetData", {"id": 0, "ts": int(start + 60), "end_ts": int(start + 120)}
            )
            assert [float(v) for v in first[1:]] == pytest.approx(
                gd["data"][0]["values"][0], abs=1e-3
            )
            r = await c.get(f"{fleet.url(dev)}/em1data/0/data.csv?ts=0")
            assert r.status_code == 404  # a Pro 3EM has no EM1Data


async def test_debug_log_websocket(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    url = fleet.url(dev)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/debug/log") as r:
            assert r.status == 404  # disabled out of the box
        await dev.call("Sys.SetConfig", {"config": {"debug": {"websocket": {"enable": True}}}})
        async with s.ws_connect(f"{url}/debug/log") as ws:
            await dev.call("Switch.GetConfig", {"id": 0})
            entry = json.loads(await ws.receive_str(timeout=5))
            assert set(entry) == {"ts", "level", "data", "fd"}
            assert isinstance(entry["ts"], float) and entry["level"] == 2
            assert "Switch.GetConfig" in entry["data"]
