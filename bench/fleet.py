"""How fast kilowatch provisions a fleet: 500 new devices at once against a sample one at a time.

Issue 11's bench. Child processes (two by default, ``--simulators``) run the simulated devices
(``kilowatch simulate --unprovisioned --http-hosts ...``: each device on its own loopback address,
port 80; real devices are separate machines on the LAN, so the devices' own work should not
share one core with kilowatch's) and this process provisions them through the code
``kilowatch fleet apply`` runs (``kilowatch.fleet.apply.apply_fleet`` with the registry's
``open_rpc`` and the secrets file) with a full profile: the MQTT config (server, user, password,
prefix), the system name from ``{{ device.id }}``, the shipped metering script, a generated device
password, the reboot the new MQTT config asks for, and the verifying second plan. The devices
then connect to a real mosquitto (anonymous, loopback) and publish.

1. discovery: one scan of every address (not timed; it fills the registry as ``fleet discover``);
2. **sequential**: ``--sample`` devices (10) provisioned strictly one at a time
   (``concurrency=1``), first, while the machine is quiet (the fair figure for one device);
3. **fleet**: the ``--devices`` others (500) at once, ``--concurrency`` (128) in flight.

``devices_per_s`` = devices ÷ wall seconds of the fleet run; ``sequential_devices_per_s`` = sample
÷ wall seconds of the sequential run; ``ratio`` = the first ÷ the second. Goal: ratio ≥ 30 and the
500 in under 60 s. Where the time goes, per step (``plan``, ``mqtt``, ``system``, ``scripts``,
``auth``, ``reboot``, ``verify``), is printed for both runs: the mean seconds from one step's start
to the next's.

Only loopback addresses are used; the children are stopped (SIGTERM to their process group,
then SIGKILL) on exit, on an error, on Ctrl-C and on SIGTERM. Needs root (port 80) and
mosquitto. ``online_after`` counts the devices whose retained ``<prefix>/online`` is ``true``
on the bench's broker afterwards (all of them, or the goal is not met). The last line printed
is one JSON object.

    PYTHONPATH=src python bench/fleet.py [--devices 500] [--sample 10] [--concurrency 128]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ipaddress
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import aiohttp  # noqa: E402

from kilowatch.fleet.apply import (  # noqa: E402
    ApplyOptions,
    ApplyReport,
    Backoff,
    SecretPasswords,
    Status,
    apply_fleet,
)
from kilowatch.fleet.discovery import parse_targets, scan  # noqa: E402
from kilowatch.fleet.profile import load_profile  # noqa: E402
from kilowatch.fleet.registry import open_rpc, registration_for  # noqa: E402
from kilowatch.fleet.rpc.base import ShellyRpc  # noqa: E402
from kilowatch.fleet.rpc.mqtt import MqttRpc  # noqa: E402
from kilowatch.fleet.secrets import SecretBox  # noqa: E402
from kilowatch.store.protocol import Registration  # noqa: E402
from kilowatch.testing import MosquittoServer  # noqa: E402

FLEET_HOSTS = "127.0.70.1-127.0.71.244"
"""500 addresses (.70.1 to .71.244, .70.255 and .71.0 included: all of 127/8 is loopback)."""
SAMPLE_HOSTS = "127.0.72.1-127.0.72.254"
"""Where the sequential sample stands (its first ``--sample`` addresses)."""
MODELS = "pm1,switch,3em"
PASSWORD_ENV = "KILOWATCH_BENCH_MQTT_PASSWORD"
PROFILE = """\
[mqtt]
server = "{server}"
user = "{{{{ device.id }}}}"
password_env = "{password_env}"
topic_prefix = "{{{{ device.id }}}}"
status_ntf = true
rpc_ntf = true

[system]
name = "{{{{ device.id }}}}"

[auth]
password = "generate"

[[scripts]]
name = "kilowatch-hourly"
file = "kilowatch:hourly_energy.js"
enable = true
version = "1"
"""
CHILD_READY_S = 120.0
"""How long the child may take to stand up every device."""


def addresses(spec: str, n: int) -> list[str]:
    """The first ``n`` addresses of an inclusive range ``a-b`` (every address, .0 and .255 too)."""
    first, last = (ipaddress.IPv4Address(x) for x in spec.split("-"))
    count = int(last) - int(first) + 1
    if n > count:
        raise SystemExit(f"{spec} holds {count} addresses, fewer than {n}")
    return [str(first + i) for i in range(n)]


# --- the simulated devices in a child process ------------------------------------------------


@contextlib.contextmanager
def simulators(
    hosts: Sequence[str], *, processes: int, duration: float, logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``kilowatch simulate`` in ``processes`` child processes (each its own process group, the
    devices dealt out in turn, its output in ``logs/simulator-<i>.log``), all stopped however
    this process ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILOWATCH_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(processes):
            mine = hosts[i::processes]
            cmd = [
                sys.executable, "-m", "kilowatch", "simulate", "--devices", str(len(mine)),
                "--models", MODELS, "--unprovisioned", "--http-hosts", ",".join(mine),
                "--duration", str(duration), "--seed", str(70 + i),
            ]  # fmt: skip
            with (logs / f"simulator-{i}.log").open("wb") as out:
                children.append(
                    subprocess.Popen(
                        cmd,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield children
    finally:
        for child in children:
            stop(child)


def stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=5)


async def wait_ready(
    children: Sequence[subprocess.Popen[bytes]],
    hosts: Sequence[str],
    session: aiohttp.ClientSession,
    logs: Path,
) -> None:
    """Until every device answers ``GET /shelly`` (the children bind them one after another)."""
    deadline = time.monotonic() + CHILD_READY_S
    while True:
        for i, child in enumerate(children):
            if child.poll() is not None:
                err = (logs / f"simulator-{i}.log").read_text(errors="replace")
                raise SystemExit(f"a simulator exited with {child.returncode}:\n{err[-3000:]}")
        found = await scan(parse_targets(hosts), session=session, concurrency=128, timeout=2.0)
        if len(found) == len(hosts):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(found)} of {len(hosts)} devices answer")
        await asyncio.sleep(0.5)


# --- provisioning ----------------------------------------------------------------------------


class StepClock:
    """A :class:`kilowatch.fleet.apply.Progress` that times each step of each device."""

    def __init__(self) -> None:
        self.current: dict[str, tuple[str, float]] = {}
        self.spent: dict[str, list[float]] = defaultdict(list)

    def _close(self, device: str) -> None:
        held = self.current.pop(device, None)
        if held is not None:
            step, began = held
            self.spent[step.split(" ")[0]].append(time.monotonic() - began)

    def started(self, device: str) -> None:
        pass

    def step(self, device: str, step: str) -> None:
        self._close(device)
        self.current[device] = (step, time.monotonic())

    def finished(self, device: str, status: Status) -> None:
        self._close(device)

    def summary(self) -> dict[str, float]:
        """Mean seconds per step (devices that ran it)."""
        return {k: round(sum(v) / len(v), 3) for k, v in self.spent.items()}


async def provision(
    profile_path: Path,
    regs: Sequence[Registration],
    *,
    box: SecretBox,
    session: aiohttp.ClientSession,
    concurrency: int,
) -> tuple[ApplyReport, float, StepClock]:
    """``kilowatch fleet apply``'s work on ``regs``: ``(report, wall seconds, step times)``."""
    profile = load_profile(profile_path)
    clock = StepClock()

    def opener(reg: Registration) -> AbstractAsyncContextManager[ShellyRpc]:
        return open_rpc(reg, secrets=box, session=session, mqtt=None)

    options = ApplyOptions(concurrency=concurrency, retry=Backoff())
    began = time.monotonic()
    report = await apply_fleet(
        profile, regs, opener, passwords=SecretPasswords(box), options=options, progress=clock
    )
    return report, time.monotonic() - began, clock


async def count_online(port: int, expected: int, *, timeout: float = 20.0) -> int:
    """How many devices say ``online`` on the broker (retained ``<prefix>/online`` = ``true``),
    waiting up to ``timeout`` for all ``expected``: the provisioned devices connected."""
    deadline = time.monotonic() + timeout
    async with MqttRpc("127.0.0.1", port) as mqtt:
        while True:
            online = len(await mqtt.online_prefixes(1.0))
            if online >= expected or time.monotonic() > deadline:
                return online


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_of(pid: int) -> float:
    """CPU seconds of process ``pid`` (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def failures(report: ApplyReport) -> list[dict[str, Any]]:
    return [d.to_json() for d in report.devices if d.status is not Status.OK]


@contextlib.asynccontextmanager
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    fleet_hosts = addresses(args.hosts, args.devices)
    sample_hosts = addresses(args.sample_hosts, args.sample)
    if set(fleet_hosts) & set(sample_hosts):
        raise SystemExit("--hosts and --sample-hosts overlap")
    if not all(ipaddress.IPv4Address(h).is_loopback for h in fleet_hosts + sample_hosts):
        raise SystemExit("only loopback addresses may be used")
    box = SecretBox.in_data_dir(work / "data")
    with MosquittoServer() as broker:
        server = f"127.0.0.1:{broker.port}"
        profile_path = work / "fleet.toml"
        profile_path.write_text(PROFILE.format(server=server, password_env=PASSWORD_ENV))
        os.environ[PASSWORD_ENV] = "bench-broker-password"
        hosts = fleet_hosts + sample_hosts
        with simulators(
            hosts, processes=args.simulators, duration=args.child_timeout, logs=work
        ) as children:
            async with http_session() as session:
                t0 = time.monotonic()
                await wait_ready(children, hosts, session, work)
                print(f"{len(hosts)} simulated devices up in {time.monotonic() - t0:.1f} s")
                found = await scan(parse_targets(hosts), session=session, concurrency=128)
                now = time.time()
                regs = {f.address: registration_for(f, now=now) for f in found}
                sample = [regs[h] for h in sample_hosts]
                fleet = [regs[h] for h in fleet_hosts]

                seq, seq_s, seq_steps = await provision(
                    profile_path, sample, box=box, session=session, concurrency=1
                )
                seq_rate = len(sample) / seq_s
                print(
                    f"sequential: {len(sample)} devices in {seq_s:.2f} s = {seq_rate:.2f} "
                    f"devices/s ({seq_s / len(sample):.2f} s each); steps {seq_steps.summary()}"
                )
                cpu0, child0 = cpu_self(), sum(cpu_of(c.pid) for c in children)
                profiler = cProfile.Profile() if args.profile else None
                if profiler is not None:
                    profiler.enable()
                par, par_s, par_steps = await provision(
                    profile_path, fleet, box=box, session=session, concurrency=args.concurrency
                )
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                cpu = {
                    "bench": round(cpu_self() - cpu0, 2),
                    "simulators": round(sum(cpu_of(c.pid) for c in children) - child0, 2),
                }
                par_rate = len(fleet) / par_s
                online = await count_online(broker.port, len(hosts))
                print(
                    f"fleet: {len(fleet)} devices in {par_s:.2f} s = {par_rate:.2f} devices/s "
                    f"(concurrency {args.concurrency}); steps {par_steps.summary()}; CPU s {cpu}"
                )
    failed = failures(seq) + failures(par)
    print(f"online on the broker afterwards: {online} of {len(hosts)}")
    for entry in failed[:10]:
        print("failed:", json.dumps(entry))
    ratio = par_rate / seq_rate
    print(f"ratio: {ratio:.1f}x (goal >= 30x, and the {len(fleet)} in under 60 s)")
    return {
        "bench": "fleet",
        "devices": len(fleet),
        "seconds": round(par_s, 2),
        "devices_per_s": round(par_rate, 2),
        "sample": len(sample),
        "sequential_seconds": round(seq_s, 2),
        "sequential_devices_per_s": round(seq_rate, 3),
        "ratio": round(ratio, 1),
        "failed": len(failed),
        "concurrency": args.concurrency,
        "simulator_processes": args.simulators,
        "steps_s": {"sequential": seq_steps.summary(), "fleet": par_steps.summary()},
        "fleet_cpu_s": cpu,
        "online_after": online,
        "goal_met": ratio >= 30 and par_s < 60 and not failed and online == len(hosts),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: context
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--sample", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--hosts", default=FLEET_HOSTS, help="inclusive range a-b")
    parser.add_argument("--sample-hosts", default=SAMPLE_HOSTS, help="inclusive range a-b")
    parser.add_argument(
        "--simulators", type=int, default=2, help="child processes the devices are dealt to"
    )
    parser.add_argument("--profile", help="write cProfile stats of the fleet run to this file")
    parser.add_argument(
        "--child-timeout", type=float, default=900.0, help="the simulator stops itself after this"
    )
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the finally clauses stop the simulator and mosquitto
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="kw-bench-fleet-") as tmp:
        summary = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
