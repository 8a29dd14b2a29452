"""``kilowatch fleet discover`` and ``kilowatch fleet list``: the real command in a subprocess
scanning simulated devices on their own loopback addresses (port 80) and asking a real mosquitto;
its errors as one line; which broker it asks by default."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cliproc import run_kilowatch

from kilowatch.errors import ConfigError
from kilowatch.fleet.discovery import Found, How
from kilowatch.fleet.registry import record_found
from kilowatch.service.config import BrokerAddress, load_settings
from kilowatch.store import open_store
from kilowatch.testing import MosquittoServer
from shellysim import Fleet

if TYPE_CHECKING:
    from conftest import Run

# Networks of their own: other tests' simulated devices stand on 127.0.1.x:80, and a test
# running beside this one (pytest-xdist) must not find them, nor fight over their port 80.
SCAN_NET = "127.0.42.0/24"
MIXED_NET = "127.0.43.0/24"


def _store_args(tmp_path: Path) -> list[str]:
    return ["--store", f"sqlite:///{tmp_path}/k.db", "--data-dir", str(tmp_path / "data")]


async def test_discover_scans_records_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    async with Fleet(
        devices=40, models=["pm1", "switch", "3em", "em"], engine=None, http_hosts=SCAN_NET
    ) as fleet:
        ids = {d.id for d in fleet.devices}
        args = ["fleet", "discover", "--scan", SCAN_NET, "--no-broker", *_store_args(tmp_path)]
        started = time.perf_counter()
        code, out, err = await run_kilowatch(*args, "--format", "json")
        elapsed = time.perf_counter() - started
        assert code == 0, err
        first = json.loads(out)
        assert {d["device"] for d in first["devices"]} == ids
        assert (first["new"], first["updated"], first["unchanged"]) == (40, 0, 0)
        for d in first["devices"]:
            dev = fleet.device(d["device"])
            assert d["address"] == fleet.address(dev) and d["how"] == "scan"
            assert d["mac"] == dev.mac and d["outcome"] == "new"
        assert elapsed < 30, f"discover of a /24 took {elapsed:.1f} s"

        code, out, err = await run_kilowatch(*args)  # the table this time
        assert code == 0, err
        assert "40 devices: 0 new, 0 updated, 40 unchanged" in out
        for dev in fleet.devices:
            assert dev.id in out
        assert out.count("unchanged") == 41  # each row, and the summary

    code, out, err = await run_kilowatch(
        "fleet", "list", *_store_args(tmp_path), "--format", "json"
    )
    assert code == 0, err
    listed = json.loads(out)
    assert [r["device"] for r in listed] == sorted(ids)
    assert {r["transport"] for r in listed} == {"lan"}
    assert all(r["credentials"] == r["device"] and r["discovered_by"] == "scan" for r in listed)


async def test_discover_scan_and_broker_together(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with (
        Fleet(devices=4, engine=None, broker=mosquitto.url, http_hosts=MIXED_NET, seed=5) as lan,
        Fleet(devices=3, engine=None, broker=mosquitto.url, http=False, seed=6) as remote,
    ):
        await lan.wait_connected()
        await remote.wait_connected()
        code, out, err = await run_kilowatch(
            "fleet", "discover", "--scan", MIXED_NET.replace("0/24", "1-20"),
            "--broker", mosquitto.url, "--broker-wait", "1", "--format", "json",
            *_store_args(tmp_path),
        )  # fmt: skip
        assert code == 0, err
    found = {d["device"]: d for d in json.loads(out)["devices"]}
    for dev in lan.devices:  # on the LAN and on the broker: its address, and its prefix
        assert found[dev.id]["address"] == lan.address(dev)
        assert (found[dev.id]["how"], found[dev.id]["prefix"]) == ("scan", dev.id)
    for dev in remote.devices:  # only the broker sees them
        assert found[dev.id]["address"] is None
        assert (found[dev.id]["how"], found[dev.id]["prefix"]) == ("broker", dev.id)
    code, out, err = await run_kilowatch(
        "fleet", "list", *_store_args(tmp_path), "--format", "json"
    )
    transports = {r["device"]: r["transport"] for r in json.loads(out)}
    assert {transports[d.id] for d in lan.devices} == {"lan"}
    assert {transports[d.id] for d in remote.devices} == {"mqtt"}


def test_a_bad_spec_is_one_line_and_creates_nothing(tmp_path: Path, kilowatch: Run) -> None:
    out = kilowatch(
        "fleet", "discover", "--scan", "127.0.1.0/24", "--scan", "127.0.1.9-127.0.1.2",
        "--no-broker", *_store_args(tmp_path),
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("error: --scan 127.0.1.9-127.0.1.2: the range ends (127.0.1.2)")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "k.db").exists()

    huge = kilowatch("fleet", "discover", "--scan", "10.0.0.0/8", *_store_args(tmp_path))
    assert huge.returncode == 1 and "16,777,214 addresses" in huge.stderr

    nothing = kilowatch("fleet", "discover", "--no-broker", *_store_args(tmp_path))
    assert nothing.returncode == 1
    assert "nothing to discover with: pass --scan SPEC" in nothing.stderr

    both = kilowatch("fleet", "discover", "--broker", "mqtt://x", "--no-broker")
    assert both.returncode == 1 and "contradict" in both.stderr


def test_an_unreachable_broker_that_was_asked_for_is_an_error(
    tmp_path: Path, kilowatch: Run
) -> None:
    # 127.0.0.1:1 refuses connections: nothing listens on port 1 of a test machine
    out = kilowatch(
        "fleet", "discover", "--broker", "mqtt://127.0.0.1:1", *_store_args(tmp_path)
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.startswith("error: ")
    assert len(out.stderr.strip().splitlines()) == 1


def _record(tmp_path: Path, found: list[Found]) -> None:
    async def go() -> None:
        async with open_store(f"sqlite:///{tmp_path}/k.db") as store:
            await record_found(store, found, now=1_780_272_000.0)

    asyncio.run(go())


def test_list_selects_and_never_prints_a_secret(tmp_path: Path, kilowatch: Run) -> None:
    def found(device: str, model: str, name: str | None = None) -> Found:
        return Found(device, device[-12:].upper(), model, 3, "1.4.4", None, name, True,
                     "127.0.1.7", How.SCAN)  # fmt: skip

    _record(
        tmp_path,
        [
            found("shellypmminig3-ecda3bc4ddb0", "S3PM-001PCEU16", "Fridge"),
            found("shellypro3em-a0b1c2d3e4f5", "SPEM-003CEBEU"),
        ],
    )
    out = kilowatch("fleet", "list", "--select", "model=S3PM*", *_store_args(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "shellypmminig3-ecda3bc4ddb0" in out.stdout and "Fridge" in out.stdout
    assert "shellypro3em" not in out.stdout
    listed = kilowatch("fleet", "list", "--format", "json", *_store_args(tmp_path))
    assert len(json.loads(listed.stdout)) == 2
    bad = kilowatch("fleet", "list", "--select", "colour=red", *_store_args(tmp_path))
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: --select colour=red: unknown key 'colour'; use KEY=GLOB")
    missing = kilowatch("fleet", "list", "--store", f"sqlite:///{tmp_path}/none.db")
    assert missing.returncode == 1 and "no store at" in missing.stderr


# --- the broker asked by default ------------------------------------------------------------------


def _choice(values: dict[str, Any], url: str | None = None) -> Any:
    from kilowatch.cli.fleet_discover import broker_choice

    settings = load_settings({"data_dir": "/tmp/kw-none", **values}, env={})
    return broker_choice(settings, url, disabled=False)


def test_the_default_broker_follows_the_settings() -> None:
    # kilowatch's own broker on loopback lets local clients in without a user
    assert _choice({}).address == BrokerAddress("127.0.0.1", 1883, False)
    assert _choice({"mqtt_port": 1999}).address == BrokerAddress("127.0.0.1", 1999, False)
    # an external broker: its URL, with the settings' user when the URL has none
    assert _choice({"broker": "mqtts://h.example:8884", "mqtt_user": "u", "mqtt_password": "p"})\
        .address == BrokerAddress("h.example", 8884, True, "u", "p")  # fmt: skip
    # the embedded broker's own user
    embedded = _choice({"broker": "embedded", "mqtt_host": "0.0.0.0", "mqtt_user": "u",
                        "mqtt_password": "p"})  # fmt: skip
    assert embedded.address == BrokerAddress("127.0.0.1", 1883, False, "u", "p")
    # beyond loopback without a user: kilowatch's password is not to be had
    beyond = _choice({"mqtt_host": "0.0.0.0"})
    assert beyond.address is None and "pass --broker" in beyond.why_not
    # --broker wins, and is explicit (a failure is then an error)
    chosen = _choice({"mqtt_host": "0.0.0.0"}, "mqtt://a:b@127.0.0.1:1884")
    assert chosen.explicit and chosen.address == BrokerAddress("127.0.0.1", 1884, False, "a", "b")
    with pytest.raises(ConfigError, match="bad --broker 'http://x'"):
        _choice({}, "http://x")


def test_prefix_levels_follow_the_prefixes_the_intake_reads() -> None:
    from kilowatch.cli.fleet_discover import prefix_levels

    assert prefix_levels(load_settings({"data_dir": "/tmp/kw-none"}, env={})) == 1
    deeper = {"data_dir": "/tmp/kw-none", "shelly_topic_prefixes": "+,home/+,site/+/+"}
    assert prefix_levels(load_settings(deeper, env={})) == 3
