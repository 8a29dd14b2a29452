"""Fleet behaviour: the truth file, multi-vendor publishers, the ``kilowatch simulate`` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kilowatch.testing import MosquittoServer, free_port
from shellysim import Fleet
from shellysim.errors import SimConfigError

SRC = Path(__file__).resolve().parents[2] / "src"
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


async def test_truth_file_matches_counters(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    path = tmp_path / "truth.json"
    fleet = Fleet(
        devices=4,
        models=["pm1", "switch", "3em", "em"],
        speed=7200,
        start=T0,
        truth_path=path,
        broker=mosquitto.url,
        vendors=["gen1", "tasmota"],
        engine=None,
        tick_s=0.05,
        seed=3,
    )
    async with fleet:
        await fleet.wait_until(T0 + 3 * 3600)
        now = fleet.clock.now()
    # after the fleet stopped, counters and truth cover exactly the same time
    counters = {d.id: d.status() for d in fleet.devices}
    vendor_totals = {p.id: p.meter.aenergy.total_wh for p in fleet.publishers}
    truth = json.loads(path.read_text())
    by_id = {d: counters[d] for d in counters}
    expected_channels = {
        "shellypmminig3": {"pm1:0"},
        "shellyplus1pm": {"switch:0"},
        "shellypro3em": {"em:0", "em:0/a", "em:0/b", "em:0/c"},
        "shellyproem50": {"em1:0", "em1:1"},
    }
    for dev_id, status in by_id.items():
        assert set(truth[dev_id]) == expected_channels[dev_id.split("-")[0]]
        for slots in truth[dev_id].values():
            assert all(int(s) % 900 == 0 and len(v) == 2 for s, v in slots.items())
            # devices start integrating when they are built, a moment after the clock started:
            # at 7200x, a loaded machine's 0.2 s of set-up is half an hour of simulated time
            assert T0 <= min(int(s) for s in slots) < T0 + 3600
        total = {ch: sum(v[0] for v in slots.values()) for ch, slots in truth[dev_id].items()}
        ret = {ch: sum(v[1] for v in slots.values()) for ch, slots in truth[dev_id].items()}
        slack = 0.01  # counters are reported with 2-3 decimals
        if "pm1:0" in status:
            assert total["pm1:0"] == pytest.approx(status["pm1:0"]["aenergy"]["total"], abs=slack)
        if "switch:0" in status:
            assert total["switch:0"] == pytest.approx(
                status["switch:0"]["aenergy"]["total"], abs=slack
            )
        if "emdata:0" in status:
            assert total["em:0"] == pytest.approx(status["emdata:0"]["total_act"], abs=slack)
            assert total["em:0"] == pytest.approx(sum(total[f"em:0/{p}"] for p in "abc"), abs=1e-3)
        if "em1data:1" in status:
            # the Pro EM's second channel is a PV inverter: it feeds in (returned energy)
            assert ret["em1:1"] == pytest.approx(
                status["em1data:1"]["total_act_ret_energy"], abs=slack
            )
    for vid, wh in vendor_totals.items():
        channel = "relay/0" if vid.startswith("shellyplug-s-") else "ENERGY"
        got = sum(v[0] for v in truth[vid][channel].values())
        assert got == pytest.approx(wh, abs=1e-3)  # the file rounds to 1e-6 Wh per slot
    assert now >= T0 + 3 * 3600


def test_same_seed_same_devices_and_loads() -> None:
    runs = []
    for seed in (11, 11, 12):
        fleet = Fleet(devices=2, models=["3em"], start=T0, http=False, engine=None, seed=seed)
        meters = [m for d in fleet.devices for m in d.meters()]
        ids = [d.id for d in fleet.devices]
        noon = T0 + 12 * 3600  # every load draws something at midday
        runs.append((ids, [round(m.profile.energy_wh(noon, noon + 7200)[0], 6) for m in meters]))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0] and runs[0][1] != runs[2][1]
    assert len(set(runs[0][1])) == 6  # every phase has its own load


def test_bad_options_are_clear() -> None:
    with pytest.raises(SimConfigError, match="unknown device model 'toaster'"):
        Fleet(models=["toaster"])
    with pytest.raises(SimConfigError, match="invalid broker URL"):
        Fleet(broker="http://x")
    with pytest.raises(SimConfigError, match="only speak MQTT"):
        Fleet(vendors=["tasmota"])


def test_simulate_command(tmp_path: Path) -> None:
    truth = tmp_path / "t.json"
    port = _two_free_ports()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kilowatch", "simulate", "--devices", "2", "--models", "pm1,em",
         "--speed", "3600", "--duration", "20", "--truth", str(truth),
         "--http-port-base", str(port), "--unprovisioned"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = _poll_json(f"http://127.0.0.1:{port + 1}/shelly", proc)
        assert info["app"] == "ProEM" and str(info["id"]).startswith("shellyproem50-")
        mqtt = httpx.get(f"http://127.0.0.1:{port}/rpc/MQTT.GetConfig", timeout=5).json()
        assert mqtt["enable"] is False  # --unprovisioned: out of the box
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "simulating 2 device(s)" in out, err
    data = json.loads(truth.read_text())
    assert len(data) == 2


def _two_free_ports() -> int:
    import socket

    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _poll_json(url: str, proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, object]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"simulate exited early: {proc.communicate()}")
        try:
            body: dict[str, object] = httpx.get(url, timeout=1).json()
            return body
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def test_speed_change_keeps_time_continuous() -> None:
    import time as _time

    past = _time.time() - 3600
    async with Fleet(devices=1, start=past, speed=3600, http=False, engine=None) as fleet:
        await fleet.wait_until(_time.time())  # back-fill an hour in about a second
        caught_up = fleet.clock.now()
        fleet.clock.set_speed(1.0)
        assert fleet.clock.now() == pytest.approx(caught_up, abs=1.0)
        # a loaded machine may oversleep a little: 0.2 s real is 720 s simulated here
        assert fleet.clock.now() == pytest.approx(_time.time(), abs=720)
        t = fleet.clock.now()
        await asyncio.sleep(0.2)
        assert 0.1 < fleet.clock.now() - t < 2.0  # now one simulated second per second
        uptime = (await fleet.devices[0].call("Sys.GetStatus", None))["uptime"]
        assert uptime >= 3600 - 720
