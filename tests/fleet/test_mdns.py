"""mDNS discovery, only ever inside two network namespaces this test makes: the simulator
advertises its devices in namespace a, kilowatch browses in namespace b, and the devices stand on
their own addresses there, port 80, like real ones. Nothing here multicasts on the host's own
interfaces (zeroconf never runs in this process); where namespaces cannot be made, the tests skip
with the reason."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from kilowatch.testing.netns import NetnsPair, netns_available, netns_pair

DEVICES = 5

SIMULATOR = """
import asyncio, json, sys
from shellysim import Fleet

async def main():
    async with Fleet(devices={devices}, models=["pm1", "switch", "3em", "em", "plug"],
                     engine=None, http_hosts={hosts!r}, mdns_interfaces=[{interface!r}]) as f:
        print(json.dumps([{{"id": d.id, "address": f.host(d), "port": f.port(d),
                            "gen": d.spec.gen, "app": d.spec.app}} for d in f.devices]),
              flush=True)
        # run until the test closes stdin; leaving sends the goodbyes
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""

BROWSER = """
import asyncio, json, urllib.request
from kilowatch.fleet.mdns import browse

found = asyncio.run(browse(seconds={seconds!r}))
out = []
for f in found:
    # what was found is where the device answers: ask it who it is
    with urllib.request.urlopen(f.url + "/shelly", timeout=5) as r:
        shelly = json.load(r)
    out.append({{"id": f.device_id, "addresses": list(f.addresses), "port": f.port, "gen": f.gen,
                 "app": f.app, "host": f.host, "name": f.name, "txt": dict(f.txt),
                 "shelly_id": shelly["id"]}})
print(json.dumps(out))
"""

ERRORS = """
import asyncio, json
from kilowatch.errors import ConfigError
from kilowatch.fleet.mdns import browse

out = {{}}
for label, kwargs in [("name", {{"interfaces": ["veth1"]}}),
                      ("foreign", {{"interfaces": ["10.231.99.1"]}}),
                      ("empty", {{"interfaces": []}}),
                      ("zero", {{"seconds": 0}}),
                      ("ok", {{"interfaces": [{address!r}], "seconds": 0.3}})]:
    try:
        out[label] = ["found", len(asyncio.run(browse(**kwargs)))]
    except ConfigError as err:
        out[label] = ["ConfigError", str(err)]
print(json.dumps(out))
"""


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    ok, why = netns_available()
    if not ok:
        pytest.skip(f"mDNS is tested only inside network namespaces: {why}")
    with netns_pair() as made:
        yield made


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line ``proc`` prints, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"the simulator did not start: {err[-2000:]}")
    return line


def _browse(pair: NetnsPair, seconds: float) -> list[dict[str, Any]]:
    done = pair.run(pair.b, BROWSER.format(seconds=seconds), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def test_browse_finds_exactly_the_advertised_devices(pair: NetnsPair) -> None:
    assert _browse(pair, 0.5) == []  # nothing answers before the simulator starts
    hosts = [f"10.231.7.{10 + i}" for i in range(DEVICES)]
    for host in hosts:
        pair.add_address(pair.a, host)
    code = SIMULATOR.format(devices=DEVICES, hosts=hosts, interface=pair.a.address)
    sim = pair.start(pair.a, code)
    advertised = {d["id"]: d for d in json.loads(_line(sim, timeout=60))}
    assert len(advertised) == DEVICES

    found = _browse(pair, 1.5)

    assert sorted(f["id"] for f in found) == sorted(advertised)  # exactly them, each once
    for f in found:
        dev = advertised[f["id"]]
        assert f["addresses"] == [dev["address"]] and f["port"] == 80 == dev["port"]
        assert f["gen"] == dev["gen"] and f["txt"]["gen"] == str(dev["gen"])
        assert f["app"] == dev["app"] and f["txt"]["id"] == dev["id"]
        assert f["name"] == f"{dev['id']}._shelly._tcp.local."
        assert f["host"] == f"{dev['id']}.local."
        assert f["shelly_id"] == dev["id"]  # GET /shelly at the found address answers as it
    assert {f["gen"] for f in found} == {2, 3}

    assert sim.stdin is not None
    sim.stdin.close()
    assert sim.wait(timeout=20) == 0  # a clean exit (the goodbyes were sent)


def test_browse_refuses_bad_interfaces_and_durations(pair: NetnsPair) -> None:
    done = pair.run(pair.b, ERRORS.format(address=pair.b.address), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["name"][0] == "ConfigError" and "not an IP address" in out["name"][1]
    assert out["foreign"][0] == "ConfigError" and "no interface" in out["foreign"][1]
    assert out["empty"][0] == "ConfigError"
    assert out["zero"][0] == "ConfigError" and "browse time" in out["zero"][1]
    assert out["ok"] == ["found", 0]


def test_the_namespaces_go_away_even_when_the_test_fails() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    with pytest.raises(RuntimeError, match="boom"), netns_pair() as made:
        names = (made.a.name, made.b.name)
        sleeper = made.start(made.a, "import time; time.sleep(60)")
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(name in listing for name in names)
        raise RuntimeError("boom")
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listing for name in names)
    assert sleeper.poll() is not None  # the process started inside was ended too
