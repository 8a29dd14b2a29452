"""``kilowatch demo`` as a user runs it: a subprocess, free ports, back-fill, health, Ctrl-C."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from kilowatch.demo import HOME, CatchUpClock
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import open_store
from kilowatch.web.views import display_name

SRC = Path(__file__).resolve().parents[2] / "src"
DAYS = 0.25
"""Six hours of history: 1.5 s of back-fill at the speed below."""
SPEED = 14_400.0


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float, seen: list[str]) -> str:
    """Lines of the demo's stdout until one matches ``pattern``; that line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break  # exited
        seen.append(line.rstrip())
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in time; output:\n" + "\n".join(seen))


def test_demo_backfills_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kilowatch", "demo", "--days", str(DAYS), "--speed", str(SPEED),
         "--mqtt-port", "0", "--http-port", "0", "--data-dir", str(tmp_path), "--tz", "UTC"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    seen: list[str] = []
    try:
        url = _read_until(proc, r"dashboard\s+http://", 30, seen).split()[-1]
        _read_until(proc, r"running in real time", 30, seen)
        health = httpx.get(f"{url}api/v1/health", timeout=5)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"
        check_dashboard(url, started)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "stopped." in out
    login = next(line for line in seen if "login" in line)
    assert "demo / kilowatch-demo" in login

    # Every simulated Shelly device has energy in the back-filled hours (before the demo started).
    store_url = f"sqlite:///{tmp_path / 'kilowatch.db'}"
    first_hour = datetime.fromtimestamp(started - DAYS * 86_400, UTC).replace(
        minute=0, second=0, microsecond=0
    ) + timedelta(hours=1)
    query = EnergyQuery(
        by="hour",
        tz="UTC",
        start=first_hour,
        end=datetime.fromtimestamp(started, UTC).replace(minute=0, second=0, microsecond=0),
        group="device",
    )

    async def rows() -> tuple[dict[str, int], int]:
        async with open_store(store_url) as store:
            found: dict[str, int] = {}
            for row in await store.energy(query):
                if row.energy_wh + row.returned_energy_wh > 0:
                    found[str(row.device)] = found.get(str(row.device), 0) + 1
            total = [r for r in await store.energy(replace(query, group="total")) if r.energy_wh]
            return found, len(total)

    async def shown() -> dict[str, tuple[str | None, str | None]]:
        async with open_store(store_url) as store:
            return {display_name(r): (r.model, r.fw_ver) for r in await store.devices()}

    # the devices are in the fleet registry: names, models and firmware, not raw ids and "-"
    names = asyncio.run(shown())
    for name in ("boiler", "air conditioner", "mains, three phases", "balcony PV feeding in"):
        model, fw = names[name]
        assert model and fw, names

    by_device, hours_with_energy = asyncio.run(rows())
    # every simulated Shelly device reached the ledger with back-filled (simulated-time) data...
    shelly = {d for d in by_device if not d.startswith("tasmota")}
    assert len(shelly) == len(HOME), by_device
    # ...and the home (the mains meter's base load never stops) used energy in every past hour
    expected_hours = int((query.end - query.start).total_seconds() // 3600)
    assert expected_hours >= 4
    assert hours_with_energy == expected_hours


def check_dashboard(url: str, started: float) -> None:
    """What a new user meets: the login page names the demo's login, a wrong password keeps the
    user name; the mains meter is the grid meter, the site's total is its energy, and it measured
    the other devices plus its own base load."""
    with httpx.Client(base_url=url, timeout=10) as c:
        login = c.get("/login").text
        assert "demo</code>" in login and "kilowatch-demo</code>" in login
        wrong = c.post("/login", data={"username": "demo", "password": "x", "next": "/"})
        assert wrong.status_code == 401 and 'name="username" value="demo"' in wrong.text
        r = c.post("/login", data={"username": "demo", "password": "kilowatch-demo", "next": "/"})
        assert r.status_code == 303, r.text
        # the session cookie is Secure (browsers send it to loopback over http; httpx does not)
        c.headers["cookie"] = f"kilowatch_session={r.cookies['kilowatch_session']}"
        # the Tasmota plug gets its name once kilowatch has heard of it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            devices = c.get("/api/v1/devices").json()["devices"]
            if any(d["display_name"] == "fridge" for d in devices):
                break
            time.sleep(0.2)
        assert "fridge" in {d["display_name"] for d in devices}, devices
        mains = next(d for d in devices if d["grid_meter"])
        assert mains["display_name"] == "mains, three phases"
        assert mains["model"] == "SPEM-003CEBEU" and mains["fw_ver"]
        assert c.get("/api/v1/settings").json()["grid_meters"] == [mains["device"]]
        # Total is the mains' energy, not the mains plus the sub-meters behind it
        today = c.get("/api/v1/overview").json()["periods"][0]
        params = {"by": "day", "tz": "UTC", "group": "total", "from": today["from"][:10]}
        of_mains = c.get("/api/v1/energy", params={**params, "device": mains["device"]}).json()
        assert abs(today["energy_wh"] - of_mains["totals"]["energy_wh"]) < 1e-6
        check_device_data(c, mains["device"], started)
        home = c.get("/").text  # no tariff in the demo: no "cost 0.00", a pointer to Settings
        assert 'class="cost"' not in home and 'id="no-tariff"' in home
        # per back-filled hour: the mains = the sub-meters + its own base load (3 phases of
        # 70-310 W) + the fridge, which runs before its plug joins (then it is a sub-meter)
        first = datetime.fromtimestamp(started - DAYS * 86_400, UTC) + timedelta(hours=1)
        last = datetime.fromtimestamp(started, UTC)
        hours = {
            "by": "hour", "tz": "UTC", "group": "device",
            "from": first.strftime("%Y-%m-%dT%H:00"), "to": last.strftime("%Y-%m-%dT%H:00"),
        }  # fmt: skip
        r = c.get("/api/v1/energy.csv", params=hours)
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) >= 4
        for row in rows:
            subs = [k for k in row if k.endswith(" import_wh")]
            assert {"boiler import_wh", "air conditioner import_wh"} <= set(subs), subs
            assert "mains, three phases import_wh" not in subs  # the grid meter is the total
            untracked = float(row["untracked_wh"])
            assert 3 * 70 - 1 <= untracked <= 3 * 310 + 110, row
            net = sum(float(row[k]) for k in subs) - sum(
                float(v) for k, v in row.items() if k.endswith(" export_wh")
            )
            grid = float(row["import_wh"]) - float(row["export_wh"])
            assert abs(grid - net - untracked) < 0.01, row


def check_device_data(c: httpx.Client, mains: str, started: float) -> None:
    """The device page's data as a new user meets it: the back-filled hours' power minute by
    minute (the catch-up reports every minute of the last day), the debug log the demo turned
    on and its config_changed event, the mains' reboot after the catch-up; the example rules."""
    power = c.get(f"/api/v1/devices/{mains}/power", params={"hours": 24}).json()
    minutes = [
        i
        for i, w in enumerate(power["total_w"])
        if w is not None and power["start"] + i * 60 < started
    ]
    back_filled = int(DAYS * 86_400 // 60)
    assert len(minutes) >= back_filled - 5, (len(minutes), back_filled)
    assert set(power["channels"]) == {"em:0", "em:0/a", "em:0/b", "em:0/c"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        kinds = {e["event"] for e in c.get(f"/api/v1/devices/{mains}/events").json()["events"]}
        if {"config_changed", "reboot"} <= kinds:
            break
        time.sleep(0.2)
    assert {"config_changed", "reboot"} <= kinds, kinds
    logs = c.get(f"/api/v1/devices/{mains}/logs").json()["logs"]
    assert any("Status change" in line["message"] for line in logs), logs[:3]
    rules = c.get("/api/v1/alerts/config").json()["rules"]
    assert {r["id"] for r in rules} == {"boiler-high", "device-offline"}, rules
    # what the demo changed is audited as the CLI's doing: rules, grid meter, the debug log
    entries = c.get("/api/v1/audit").json()["entries"]
    done = {(e["action"], e["result"]) for e in entries if e["actor"].startswith("cli:")}
    assert {("alerts.rules", "ok"), ("settings.change", "ok"), ("device.config", "ok")} <= done


def test_catch_up_clock_runs_fast_then_follows_real_time() -> None:
    start = time.time() - 3600
    clock = CatchUpClock(start=start, speed=3600)
    assert not clock.caught_up
    assert clock.speed == 3600
    assert abs(clock.now() - start) < 60  # a few ms of real time
    assert 0.9 < clock.real_delay(3600) < 1.1
    # past the catch-up point: one simulated second per real second
    assert clock.real_delay(7200) > 3000
    deadline = time.monotonic() + 5
    while not clock.caught_up and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clock.caught_up
    assert clock.speed == 1.0
    assert abs(clock.now() - time.time()) < 0.5
    assert clock.real_delay(10) == 10


def test_demo_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kilowatch", "demo", "--mqtt-port", str(port),
             "--http-port", "0", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} is in use" in lines[0]
    assert "--mqtt-port 0" in lines[0]


def test_a_mains_meter_measures_the_meters_behind_it() -> None:
    from shellysim import MODELS, Device, LoadKind, ManualClock, Truth

    clock = ManualClock(1_800_000_000.0)
    truth = Truth()

    def device(model: str, index: int, loads: tuple[LoadKind, ...]) -> Device:
        return Device(MODELS[model], mac=f"0200000000{index:02X}", clock=clock, loads=loads,
                      truth=truth)  # fmt: skip

    boiler = device("pm1", 1, (LoadKind.BOILER,))
    pv = device("plug", 2, (LoadKind.PV,))
    mains = device("3em", 3, (LoadKind.BASE,))
    mains.meter_behind(boiler.meters() + pv.meters())
    start = clock.now()
    clock.advance(6 * 3600)  # 09:00-15:00 local: the PV panel feeds in
    for dev in (boiler, pv, mains):
        dev.tick()

    def net(dev: Device, channel: str) -> float:
        imported, returned = truth.total(dev.id, channel, start, clock.now())
        return imported - returned

    own = sum(m.profile.energy_wh(start, clock.now())[0] for m in mains.meters())
    behind = net(boiler, "pm1:0") + net(pv, "switch:0")
    assert net(pv, "switch:0") < 0 < net(boiler, "pm1:0")
    assert abs(net(mains, "em:0") - (own + behind)) < 1e-6
    # the counters the device reports say the same
    counted = sum(m.aenergy.total_wh - m.ret_aenergy.total_wh for m in mains.meters())
    assert abs(counted - (own + behind)) < 1e-6
    status = mains.status()["em:0"]
    assert status["total_act_power"] == pytest.approx(
        sum(m.sample().power_w for m in mains.meters()), abs=0.01
    )
    with pytest.raises(ValueError, match="behind itself"):
        boiler.meter_behind(mains.meters())
