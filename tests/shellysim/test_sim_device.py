"""The device model on a manual clock: identity, payload shapes, RPC semantics and errors."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from simhelpers import fixture, shape

from shellysim import MODELS, Device, ManualClock, Truth, mac_for
from shellysim.errors import RpcCallError
from shellysim.scripts import SCRIPT_MAX_BYTES

T0 = 1720717200.0  # 2024-07-11 17:00 UTC, a whole hour


def make(
    model: str = "pm1", *, clock: ManualClock | None = None, truth: Truth | None = None
) -> Device:
    return Device(
        MODELS[model], mac=mac_for(7, 1), clock=clock or ManualClock(T0), truth=truth, seed=7
    )


async def call(dev: Device, method: str, params: dict[str, Any] | None = None) -> Any:
    frame = await dev.handle_frame(
        {"id": 1, "src": "t", "method": method, "params": params}, source="http"
    )
    assert frame is not None
    if "error" in frame:
        raise RpcCallError(frame["error"]["code"], frame["error"]["message"])
    return frame["result"]


async def error_of(
    dev: Device, method: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    frame = await dev.handle_frame(
        {"id": 9, "src": "t", "method": method, "params": params}, source="ws"
    )
    assert frame is not None and "error" in frame, frame
    assert frame["id"] == 9 and frame["src"] == dev.id and frame["dst"] == "t"
    err: dict[str, Any] = frame["error"]
    return err


@pytest.mark.parametrize(
    ("model", "prefix", "code", "app", "gen"),
    [
        ("pm1", "shellypmminig3", "S3PM-001PCEU16", "MiniPMG3", 3),
        ("switch", "shellyplus1pm", "SNSW-001P16EU", "Plus1PM", 2),
        ("plug", "shellyplusplugs", "SNPL-00112EU", "PlusPlugS", 2),
        ("3em", "shellypro3em", "SPEM-003CEBEU", "Pro3EM", 2),
        ("em", "shellyproem50", "SPEM-002CEBEU50", "ProEM", 2),
    ],
)
async def test_identity(model: str, prefix: str, code: str, app: str, gen: int) -> None:
    async with make(model) as dev:
        info = await call(dev, "Shelly.GetDeviceInfo")
    assert info["id"] == f"{prefix}-{dev.mac.lower()}"
    assert info["mac"] == dev.mac and re.fullmatch(r"[0-9A-F]{12}", dev.mac)
    assert (info["model"], info["app"], info["gen"]) == (code, app, gen)
    real = {
        "name",
        "id",
        "mac",
        "slot",
        "model",
        "gen",
        "fw_id",
        "ver",
        "app",
        "auth_en",
        "auth_domain",
    }
    assert real <= set(info)
    assert info["auth_en"] is False and info["auth_domain"] is None
    assert ("profile" in info) == (model == "3em")


@pytest.mark.parametrize(
    ("model", "key", "fixture_file"),
    [
        ("pm1", "pm1:0", "shelly/pm_mini_g3/status_pm1_0.json"),
        ("3em", "em:0", "shelly/pro_3em/status_em_0.json"),
        ("3em", "emdata:0", "shelly/pro_3em/status_emdata_0.json"),
        ("em", "em1:0", "shelly/pro_em_50/status_em1_0.json"),
        ("em", "em1data:0", "shelly/pro_em_50/status_em1data_0.json"),
        ("pm1", "sys", "shelly/pm_mini_g3/status_sys.json"),
        ("pm1", "mqtt", "shelly/pm_mini_g3/status_mqtt.json"),
    ],
)
async def test_status_matches_recorded_payload(model: str, key: str, fixture_file: str) -> None:
    clock = ManualClock(T0)
    async with make(model, clock=clock) as dev:
        clock.advance(3 * 3600)
        dev.tick()
        mine = dev.component_status(key)
    recorded = fixture(fixture_file)
    assert mine is not None
    # every field a real device sends is there, with the same JSON kind; sys may add utc_offset
    # a recorded null or empty object only pins the key (its content varies between captures)
    loose = {k for k, v in recorded.items() if v is None or v == {}}
    assert {k: v for k, v in shape(mine).items() if k in recorded and k not in loose} == {
        k: v for k, v in shape(recorded).items() if k not in loose
    }
    assert set(recorded) <= set(mine)
    assert set(mine) - set(recorded) <= {"utc_offset"}


async def test_switch_status_has_the_recorded_fields() -> None:
    async with make("switch") as dev:
        mine = dev.component_status("switch:0")
    recorded = fixture("shelly/1pm_mini_g3/status_switch_0.json")
    assert mine is not None
    common = set(recorded) - {"tag", "counts"}  # newer-firmware fields
    assert common <= set(mine)
    assert {k: shape(mine)[k] for k in common} == {k: shape(recorded)[k] for k in common}


async def test_mqtt_config_is_the_real_default_and_pass_is_write_only() -> None:
    async with make() as dev:
        cfg = await call(dev, "Mqtt.GetConfig")
        assert cfg == {
            "enable": False,
            "server": None,
            "client_id": dev.id,
            "user": None,
            "ssl_ca": None,
            "topic_prefix": dev.id,
            "rpc_ntf": True,
            "status_ntf": False,
            "use_client_cert": False,
            "enable_rpc": True,
            "enable_control": True,
        }
        rev = (await call(dev, "Sys.GetConfig"))["cfg_rev"]
        res = await call(
            dev, "MQTT.SetConfig", {"config": {"enable": True, "server": "b:1883", "pass": "pw"}}
        )
        assert res == {"restart_required": True}
        cfg = await call(dev, "MQTT.GetConfig")
        assert cfg["enable"] is True and cfg["server"] == "b:1883" and cfg["rpc_ntf"] is True
        assert "pass" not in cfg and dev.mqtt_pass == "pw"
        assert (await call(dev, "Sys.GetConfig"))["cfg_rev"] == rev + 1
        assert (await call(dev, "Sys.GetStatus"))["restart_required"] is True
        # setting the same values again is not a change
        await call(dev, "MQTT.SetConfig", {"config": {"enable": True}})
        assert (await call(dev, "Sys.GetConfig"))["cfg_rev"] == rev + 1
        # null resets: client_id falls back to the device id
        await call(dev, "MQTT.SetConfig", {"config": {"client_id": "x"}})
        await call(dev, "MQTT.SetConfig", {"config": {"client_id": None}})
        assert (await call(dev, "MQTT.GetConfig"))["client_id"] == dev.id
        bad = await error_of(dev, "MQTT.SetConfig", {"config": {"ssl_ca": "mine.pem"}})
        assert bad["code"] == -103
        bad = await error_of(dev, "MQTT.SetConfig", {"config": {"topic_prefix": "a/#"}})
        assert bad["code"] == -103


async def test_sys_set_config_tz_and_debug() -> None:
    async with make() as dev:
        res = await call(
            dev,
            "Sys.SetConfig",
            {"config": {"location": {"tz": "Europe/Sofia"}, "debug": {"mqtt": {"enable": True}}}},
        )
        assert res == {"restart_required": False}
        cfg = await call(dev, "Sys.GetConfig")
        assert cfg["location"]["tz"] == "Europe/Sofia" and cfg["debug"]["mqtt"]["enable"] is True
        assert cfg["debug"]["websocket"] == {"enable": False}  # merge kept siblings
        st = await call(dev, "Sys.GetStatus")
        assert st["utc_offset"] == 3 * 3600  # Sofia in July
        assert (
            await error_of(dev, "Sys.SetConfig", {"config": {"location": {"tz": "Mars/Base"}}})
        )["code"] == -103
        assert (await error_of(dev, "Sys.SetConfig", {"config": {"debug": {"level": "loud"}}}))[
            "code"
        ] == -103


async def test_error_frames() -> None:
    async with make("switch") as dev:
        assert await error_of(dev, "Switch.Frobnicate", {"id": 0}) == {
            "code": 404,
            "message": "No handler for Switch.Frobnicate",
        }
        assert await error_of(dev, "Switch.GetStatus") == {
            "code": -103,
            "message": "Missing required 'id'",
        }
        assert await error_of(dev, "Switch.GetStatus", {"id": 5}) == {
            "code": -105,
            "message": "Argument 'id', value 5 not found!",
        }
        assert (await error_of(dev, "Switch.Set", {"id": 0, "on": "yes"}))["code"] == -103
        assert (await error_of(dev, "PM1.GetStatus", {"id": 0}))["code"] == 404  # not this model
        assert (await error_of(dev, "Script.Start", {"id": 1}))["code"] == -105
        # method names are case-insensitive
        assert (await call(dev, "switch.getstatus", {"id": 0}))["id"] == 0
        assert (await call(dev, "SWITCH.GETCONFIG", {"id": 0}))["id"] == 0
        # a frame without id is a notification: executed, no reply
        reply = await dev.handle_frame(
            {"method": "Switch.Set", "params": {"id": 0, "on": False}}, source="mqtt"
        )
        assert reply is None
        assert dev.component_status("switch:0")["output"] is False  # type: ignore[index]


async def test_list_methods_and_components() -> None:
    async with make("3em") as dev:
        methods = (await call(dev, "Shelly.ListMethods"))["methods"]
        for m in (
            "EM.GetStatus",
            "EMData.GetData",
            "EMData.GetRecords",
            "Mqtt.SetConfig",
            "Script.PutCode",
            "KVS.Set",
            "Shelly.PutUserCA",
            "Shelly.Update",
        ):
            assert m in methods
        comps = await call(dev, "Shelly.GetComponents", {"keys": ["em:0", "sys"]})
        assert [c["key"] for c in comps["components"]] == ["em:0", "sys"]
        assert comps["total"] == 2 and "status" in comps["components"][0]
        assert (await call(dev, "Shelly.GetComponents", {"dynamic_only": True}))["components"] == []
        status = await call(dev, "Shelly.GetStatus")
        config = await call(dev, "Shelly.GetConfig")
        assert {"em:0", "emdata:0", "sys", "mqtt", "wifi", "cloud"} <= set(status)
        assert {"em:0", "emdata:0", "sys", "mqtt"} <= set(config)


async def test_switch_set_toggle_and_energy_gate() -> None:
    clock = ManualClock(T0 + 12 * 3600)  # midday: the air conditioner runs
    truth = Truth()
    async with make("switch", clock=clock, truth=truth) as dev:
        assert await call(dev, "Switch.Set", {"id": 0, "on": False}) == {"was_on": True}
        before = dev.component_status("switch:0")["aenergy"]["total"]  # type: ignore[index]
        clock.advance(600)
        dev.tick()
        st = dev.component_status("switch:0")
        assert st is not None and st["apower"] == 0.0 and st["output"] is False
        assert st["aenergy"]["total"] == before
        assert st["source"] == "http"
        assert await call(dev, "Switch.Toggle", {"id": 0}) == {"was_on": False}
        res = await call(dev, "Switch.ResetCounters", {"id": 0, "type": ["aenergy"]})
        assert res == {"aenergy": {"total": before}}
        assert dev.component_status("switch:0")["aenergy"]["total"] == 0  # type: ignore[index]
        assert (await error_of(dev, "Switch.ResetCounters", {"id": 0, "type": ["x"]}))[
            "code"
        ] == -103
        before = 0.0
        clock.advance(600)
        dev.tick()
        assert dev.component_status("switch:0")["aenergy"]["total"] > before  # type: ignore[index]


async def test_counters_integrate_power_and_match_truth() -> None:
    clock = ManualClock(T0)
    truth = Truth()
    frames: list[tuple[str, dict[str, Any]]] = []
    async with make("pm1", clock=clock, truth=truth) as dev:
        dev.add_sink(lambda m, p: frames.append((m, p)))
        for _ in range(24 * 60):
            clock.advance(60)
            dev.tick()
        st = dev.component_status("pm1:0")
    assert st is not None
    day_imp, _ = truth.total(dev.id, "pm1:0", T0, T0 + 86400)
    assert day_imp > 1000  # a boiler uses kWh per day
    assert st["aenergy"]["total"] == pytest.approx(day_imp, abs=0.001)
    assert st["aenergy"]["minute_ts"] == int(clock.now() // 60 * 60)
    # by_minute[0] is the last complete minute, in mWh
    prev_minute = clock.now() - 60
    imp, _ = truth_minute(dev, prev_minute)
    assert st["aenergy"]["by_minute"][0] == pytest.approx(imp * 1000, abs=0.001)
    energy_frames = [
        p for m, p in frames if m == "NotifyStatus" and "aenergy" in p.get("pm1:0", {})
    ]
    assert len(energy_frames) == 24 * 60  # one per minute rollover
    assert all(
        set(p["pm1:0"]["aenergy"]) == {"total", "by_minute", "minute_ts"} for p in energy_frames
    )


def truth_minute(dev: Device, start: float) -> tuple[float, float]:
    meter = dev.meters()[0]
    return meter.profile.energy_wh(start, start + 60)


async def test_fast_clock_reports_every_slot_boundary() -> None:
    clock = ManualClock(T0)
    frames: list[dict[str, Any]] = []
    async with make("pm1", clock=clock) as dev:
        dev.add_sink(lambda m, p: frames.append(p))
        clock.advance(6 * 3600 + 30)  # one big tick
        dev.tick()
    ts = [p["ts"] for p in frames if "aenergy" in p.get("pm1:0", {})]
    boundaries = [T0 + 900 * i for i in range(1, 25)]
    assert all(b in ts for b in boundaries)


async def test_fast_clock_reports_every_minute_from_minute_reports_from() -> None:
    """From ``minute_reports_from`` on, a big tick reports each minute with its own ts and the
    power of every channel (a 3EM's phases included, changed or not); before it, only slots."""
    clock = ManualClock(T0)
    frames: list[dict[str, Any]] = []
    async with make("3em", clock=clock) as dev:
        dev.minute_reports_from = T0 + 3600 - 40  # from the first whole minute after it
        dev.add_sink(lambda m, p: frames.append(p))
        clock.advance(2 * 3600 + 30)  # one big tick
        dev.tick()
    with_power = [p["ts"] for p in frames if "a_act_power" in p.get("em:0", {})]
    with_energy = [p["ts"] for p in frames if "total_act" in p.get("emdata:0", {})]
    minutes = [T0 + 3600 + 60 * i for i in range(61)]
    assert all(m in with_power and m in with_energy for m in minutes)
    assert [t for t in with_energy if t < T0 + 3600] == [T0 + 900, T0 + 1800, T0 + 2700]
    assert not [t for t in with_power if t < T0 + 3600]


async def test_counter_reset_fault_keeps_truth() -> None:
    clock = ManualClock(T0)
    truth = Truth()
    async with make("3em", clock=clock, truth=truth) as dev:
        clock.advance(3600)
        dev.tick()
        before = dev.component_status("emdata:0")["total_act"]  # type: ignore[index]
        assert before > 0
        dev.fault_counter_reset()
        assert dev.component_status("emdata:0")["total_act"] == 0  # type: ignore[index]
        clock.advance(3600)
        dev.tick()
        after = dev.component_status("emdata:0")["total_act"]  # type: ignore[index]
    imp, _ = truth.total(dev.id, "em:0", T0, T0 + 7200)
    assert imp == pytest.approx(before + after, abs=0.02)
    phases = sum(truth.total(dev.id, f"em:0/{p}", T0, T0 + 7200)[0] for p in "abc")
    assert phases == pytest.approx(imp, abs=1e-6)


async def test_reset_counters_returns_previous_totals() -> None:
    clock = ManualClock(T0)
    async with make("pm1", clock=clock) as dev:
        clock.advance(3 * 3600)
        dev.tick()
        total = dev.component_status("pm1:0")["aenergy"]["total"]  # type: ignore[index]
        res = await call(dev, "PM1.ResetCounters", {"id": 0})
        assert res == {"aenergy": {"total": total}, "ret_aenergy": {"total": 0.0}}
        assert dev.component_status("pm1:0")["aenergy"]["total"] == 0  # type: ignore[index]


async def test_emdata_history_adds_up() -> None:
    clock = ManualClock(T0)
    truth = Truth()
    async with make("3em", clock=clock, truth=truth) as dev:
        clock.advance(2 * 3600)
        dev.tick()
        blocks = (await call(dev, "EMData.GetRecords", {"id": 0}))["data_blocks"]
        assert blocks == [{"ts": T0 + 60, "period": 60, "records": 119}]
        start = int(T0 + 900)
        res = await call(dev, "EMData.GetData", {"id": 0, "ts": start, "end_ts": start + 900})
        assert len(res["keys"]) == 51 and res["keys"][0] == "a_total_act_energy"
        rows = res["data"][0]["values"]
        assert res["data"][0]["ts"] == start and res["data"][0]["period"] == 60 and len(rows) == 15
        assert all(len(r) == 51 for r in rows)
        got = sum(r[0] + r[16] + r[32] for r in rows)
        imp, _ = truth.total(dev.id, "em:0", start, start + 900)
        assert got == pytest.approx(imp, abs=0.05)
        chunked = await call(dev, "EMData.GetData", {"id": 0, "ts": int(T0)})
        assert len(chunked["data"][0]["values"]) == 60 and chunked["next_record_ts"] == T0 + 61 * 60


async def test_em1data_history_keys() -> None:
    clock = ManualClock(T0)
    async with make("em", clock=clock) as dev:
        clock.advance(600)
        dev.tick()
        res = await call(dev, "EM1Data.GetData", {"id": 1, "ts": int(T0), "add_keys": True})
        assert res["keys"][:2] == ["total_act_energy", "total_act_ret_energy"]
        assert len(res["keys"]) == 14 and all(len(r) == 14 for r in res["data"][0]["values"])
        assert (await error_of(dev, "EM1Data.GetData", {"id": 2, "ts": 0}))["code"] == -105


async def test_kvs_limits() -> None:
    async with make() as dev:
        res = await call(dev, "KVS.Set", {"key": "a", "value": {"x": 1}})
        assert res["rev"] == 1 and isinstance(res["etag"], str)
        assert await call(dev, "KVS.Get", {"key": "a"}) == {"etag": res["etag"], "value": {"x": 1}}
        assert (await error_of(dev, "KVS.Get", {"key": "zz"}))["code"] == -105
        assert (await error_of(dev, "KVS.Set", {"key": "k" * 43, "value": 1}))["code"] == -103
        await call(dev, "KVS.Set", {"key": "k" * 42, "value": "v" * 253})
        assert (await error_of(dev, "KVS.Set", {"key": "b", "value": "v" * 254}))["code"] == -103
        assert (await error_of(dev, "KVS.Set", {"key": "a", "value": 2, "etag": "nope"}))[
            "code"
        ] == -109
        for i in range(48):
            await call(dev, "KVS.Set", {"key": f"n{i}", "value": i})
        assert (await error_of(dev, "KVS.Set", {"key": "one-too-many", "value": 1}))["code"] == -108
        assert (await call(dev, "Sys.GetStatus"))["kvs_rev"] == 50
        listed = await call(dev, "KVS.List", {"match": "n1*"})
        assert set(listed["keys"]) == {"n1", *(f"n1{i}" for i in range(10))}
        many = await call(dev, "KVS.GetMany", {"match": "n4*"})
        assert many["total"] == 9 and many["items"][0]["key"] == "n4"
        assert (await call(dev, "KVS.Delete", {"key": "a"}))["rev"] == 51


async def test_script_management_without_engine() -> None:
    async with make() as dev:
        assert await call(dev, "Script.Create", {"name": "hourly"}) == {"id": 1}
        assert await call(dev, "Script.PutCode", {"id": 1, "code": "let a = 1;"}) == {"len": 10}
        assert await call(
            dev, "Script.PutCode", {"id": 1, "code": "\nprint(a);", "append": True}
        ) == {"len": 20}
        assert await call(dev, "Script.GetCode", {"id": 1, "offset": 4, "len": 5}) == {
            "data": "a = 1",
            "left": 11,
        }
        assert (await call(dev, "Script.GetCode", {"id": 1}))["data"] == "let a = 1;\nprint(a);"
        too_big = "x" * (SCRIPT_MAX_BYTES + 1)
        assert (await error_of(dev, "Script.PutCode", {"id": 1, "code": too_big}))["code"] == -108
        # honest about the missing engine: Start fails, the script does not pretend to run
        assert (await error_of(dev, "Script.Start", {"id": 1}))["code"] == -114
        assert (await call(dev, "Script.GetStatus", {"id": 1}))["running"] is False
        assert (await error_of(dev, "Script.Eval", {"id": 1, "code": "1"}))["code"] == -109
        await call(dev, "Script.SetConfig", {"id": 1, "config": {"enable": True}})
        assert await call(dev, "Script.GetConfig", {"id": 1}) == {
            "id": 1,
            "name": "hourly",
            "enable": True,
        }
        for i in range(2, 11):
            assert (await call(dev, "Script.Create", {}))["id"] == i
        assert (await error_of(dev, "Script.Create", {}))["code"] == -108
        assert await call(dev, "Script.Delete", {"id": 3}) is None
        listed = (await call(dev, "Script.List"))["scripts"]
        assert [s["id"] for s in listed] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
        assert listed[0] == {"id": 1, "name": "hourly", "enable": True, "running": False}
        assert "script:1" in await call(dev, "Shelly.GetStatus")


async def test_script_runs_in_engine_and_putcode_on_running_is_109() -> None:
    scripting = pytest.importorskip("shellysim.scripting")
    engine = scripting.ScriptEngine()
    dev = Device(MODELS["pm1"], mac=mac_for(7, 2), clock=ManualClock(T0), engine=engine)
    async with dev:
        await call(dev, "Script.Create", {})
        await call(dev, "Script.PutCode", {"id": 1, "code": "let n = 41;"})
        assert await call(dev, "Script.Start", {"id": 1}) == {"was_running": False}
        try:
            assert (await call(dev, "Script.GetStatus", {"id": 1}))["running"] is True
            assert (await error_of(dev, "Script.PutCode", {"id": 1, "code": "x"}))["code"] == -109
            assert await call(dev, "Script.Eval", {"id": 1, "code": "n + 1"}) == {"result": "42"}
        finally:
            assert await call(dev, "Script.Stop", {"id": 1}) == {"was_running": True}
        assert (await call(dev, "Script.GetStatus", {"id": 1}))["running"] is False


def _pem_pair() -> tuple[str, str, str]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    fmt = serialization.PrivateFormat.PKCS8
    pem_key = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    ed = ed25519.Ed25519PrivateKey.generate()
    pem_ed = ed.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key.decode(), pem_ed.decode()


async def test_tls_uploads_in_chunks_with_validation() -> None:
    cert, key, ed_key = _pem_pair()
    async with make() as dev:
        half = len(cert) // 2
        assert await call(dev, "Shelly.PutUserCA", {"data": cert[:half], "append": False}) == {
            "len": half
        }
        assert dev.tls.get("user_ca") is None  # incomplete
        assert await call(dev, "Shelly.PutUserCA", {"data": cert[half:], "append": True}) == {
            "len": len(cert)
        }
        assert dev.tls.get("user_ca") == cert
        assert (await call(dev, "Shelly.PutTLSClientKey", {"data": key}))["len"] == len(key)
        broken = cert.replace(cert.splitlines()[3], "A" * 64)
        assert (await error_of(dev, "Shelly.PutTLSClientCert", {"data": broken}))["code"] == -103
        assert (await error_of(dev, "Shelly.PutTLSClientKey", {"data": ed_key}))["code"] == -103
        assert await call(dev, "Shelly.PutUserCA", {"data": None}) == {"len": 0}
        assert dev.tls.get("user_ca") is None


async def test_set_auth_validates() -> None:
    from shellysim import ha1_for

    async with make() as dev:
        assert (
            await error_of(
                dev, "Shelly.SetAuth", {"user": "root", "realm": dev.id, "ha1": "0" * 64}
            )
        )["code"] == -103
        assert (
            await error_of(dev, "Shelly.SetAuth", {"user": "admin", "realm": "x", "ha1": "0" * 64})
        )["code"] == -103
        ha1 = ha1_for(dev.id, "pw")
        assert (
            await call(dev, "Shelly.SetAuth", {"user": "admin", "realm": dev.id, "ha1": ha1})
            is None
        )
        info = await call(dev, "Shelly.GetDeviceInfo")
        assert info["auth_en"] is True and info["auth_domain"] == dev.id


async def test_reboot_restarts_uptime_and_keeps_counters() -> None:
    clock = ManualClock(T0)
    async with make(clock=clock) as dev:
        dev.boot_time_s = 0.01
        clock.advance(7200)
        dev.tick()
        total = dev.component_status("pm1:0")["aenergy"]["total"]  # type: ignore[index]
        assert (await call(dev, "Sys.GetStatus"))["uptime"] == 7200
        ups: list[bool] = []
        dev.add_lifecycle_listener(ups.append)
        await dev.reboot()
        assert ups == [False, True]
        assert (await call(dev, "Sys.GetStatus"))["uptime"] == 0
        assert dev.component_status("pm1:0")["aenergy"]["total"] == total  # type: ignore[index]


async def test_ota_update_events_and_failure() -> None:
    clock = ManualClock(T0)
    async with make(clock=clock) as dev:
        dev.boot_time_s = 0.01
        events: list[dict[str, Any]] = []
        dev.add_sink(lambda m, p: events.extend(p["events"]) if m == "NotifyEvent" else None)
        check = await call(dev, "Shelly.CheckForUpdate")
        assert check["stable"]["version"] == "1.5.1" and "build_id" in check["stable"]
        assert (await call(dev, "Sys.GetStatus"))["available_updates"]["stable"] == {
            "version": "1.5.1"
        }
        dev.fail_next_update = True
        assert await call(dev, "Shelly.Update", {"stage": "stable"}) is None
        await wait_for(lambda: any(e["event"] == "ota_error" for e in events))
        assert dev.ver == "1.4.4"
        events.clear()
        await call(dev, "Shelly.Update", {"stage": "stable"})
        await wait_for(lambda: dev.ver == "1.5.1" and dev.online)
        names = [e["event"] for e in events if e["component"] == "sys"]
        assert names[0] == "ota_begin" and names[-1] == "ota_success"
        progress = [e["progress_percent"] for e in events if e["event"] == "ota_progress"]
        assert progress == sorted(progress) and progress[-1] == 100
        assert all("id" not in e and isinstance(e["ts"], float) for e in events)
        info = await call(dev, "Shelly.GetDeviceInfo")
        assert info["ver"] == "1.5.1" and info["fw_id"].endswith("1.5.1-g0dcd6e0")
        assert "stable" not in await call(dev, "Shelly.CheckForUpdate")
        assert (await error_of(dev, "Shelly.Update", {"stage": "stable"}))["code"] == -109


async def test_factory_reset() -> None:
    async with make() as dev:
        dev.boot_time_s = 0.01
        await call(dev, "MQTT.SetConfig", {"config": {"enable": True, "server": "b:1"}})
        await call(dev, "Script.Create", {})
        await call(dev, "KVS.Set", {"key": "a", "value": 1})
        await call(dev, "Shelly.FactoryReset")
        await wait_for(lambda: not dev.scripts.slots and dev.online)
        assert (await call(dev, "MQTT.GetConfig"))["enable"] is False
        assert (await call(dev, "KVS.List"))["keys"] == {}


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_clock_skew_shifts_reported_times_not_truth() -> None:
    clock = ManualClock(T0)
    truth = Truth()
    frames: list[dict[str, Any]] = []
    async with make("pm1", clock=clock, truth=truth) as dev:
        dev.add_sink(lambda m, p: frames.append(p))
        dev.fault_clock_skew(-300)
        clock.advance(120)
        dev.tick()
        assert (await call(dev, "Sys.GetStatus"))["unixtime"] == int(T0 + 120 - 300)
        st = dev.component_status("pm1:0")
        assert st is not None and st["aenergy"]["minute_ts"] == int(T0 + 120 - 300)
        assert frames[-1]["ts"] == pytest.approx(T0 + 120 - 300)
    assert min(int(s) for s in truth.as_dict()[dev.id]["pm1:0"]) == T0  # truth keeps true time


async def test_update_can_reset_counters() -> None:
    clock = ManualClock(T0 - 6 * 3600)  # 11:00 UTC: the PV channel feeds in
    async with make("em", clock=clock) as dev:
        dev.boot_time_s = 0.0
        dev.reset_counters_on_update = True
        clock.advance(3600)
        dev.tick()
        assert dev.component_status("em1data:1")["total_act_ret_energy"] > 0  # type: ignore[index]
        await call(dev, "Shelly.Update", {"stage": "beta"})
        await wait_for(lambda: dev.ver == "1.6.0-beta2" and dev.online)
        assert dev.component_status("em1data:1")["total_act_ret_energy"] == 0  # type: ignore[index]
        assert await call(dev, "Shelly.CheckForUpdate") == {}


async def test_more_documented_shapes() -> None:
    clock = ManualClock(T0)
    async with make("3em", clock=clock) as dev:
        dev.boot_time_s = 0.0
        sys_cfg = await call(dev, "Sys.GetConfig")
        assert set(sys_cfg) == {
            "device",
            "location",
            "debug",
            "ui_data",
            "rpc_udp",
            "sntp",
            "cfg_rev",
        }
        assert {"name", "mac", "fw_id", "discoverable", "eco_mode", "profile"} <= set(
            sys_cfg["device"]
        )
        assert set(sys_cfg["debug"]) >= {"level", "file_level", "mqtt", "websocket", "udp"}
        assert sys_cfg["debug"]["udp"] == {"addr": None}
        events: list[dict[str, Any]] = []
        dev.add_sink(lambda m, p: events.append(p) if m == "NotifyEvent" else None)
        await call(dev, "EM.SetConfig", {"id": 0, "config": {"name": "mains"}})
        item = events[-1]["events"][0]
        assert item == {
            "component": "em:0",
            "id": 0,
            "event": "config_changed",
            "ts": item["ts"],
            "restart_required": False,
            "cfg_rev": sys_cfg["cfg_rev"] + 1,
        }
        await call(dev, "Shelly.Update", {"stage": "stable"})
        await wait_for(lambda: dev.ver == "1.5.1" and dev.online)
        recorded = fixture("shelly/pm_mini_g3/NotifyEvent_ota_progress.json")["params"]
        mine = next(p for p in events if p["events"][0]["event"] == "ota_progress")
        assert shape(mine) == shape(recorded)
        await call(dev, "Script.Create", {})
        assert await call(dev, "Script.GetStatus", {"id": 1}) == {
            "id": 1,
            "running": False,
            "mem_free": 25200,
            "cpu": 0,
        }


async def test_switch_toggle_after_runs_on_the_simulated_clock() -> None:
    clock = ManualClock(T0, speed=600)  # 30 simulated seconds = 0.05 s
    async with make("switch", clock=clock) as dev:
        assert await call(dev, "Switch.Set", {"id": 0, "on": False, "toggle_after": 30}) == {
            "was_on": True
        }
        st = dev.component_status("switch:0")
        assert st is not None and st["timer_duration"] == 30.0 and st["timer_started_at"] == T0
        await wait_for(lambda: dev.component_status("switch:0")["output"] is True)  # type: ignore[index]
        st = dev.component_status("switch:0")
        assert st is not None and st["source"] == "timer" and "timer_duration" not in st
        bad = await error_of(dev, "Switch.Set", {"id": 0, "on": True, "toggle_after": "soon"})
        assert bad["code"] == -103
