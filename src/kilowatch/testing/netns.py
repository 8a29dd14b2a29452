"""Two Linux network namespaces joined by a veth pair, for tests that must send multicast (mDNS).

Multicast is not loopback: a test that advertises or browses over mDNS on the machine's own
interfaces would talk to the whole network. Inside :func:`netns_pair` the only interfaces are
``lo`` and one end of a private veth link, so nothing leaves the pair. Code runs inside a
namespace as a subprocess (``ip netns exec NS python -c ...``): a namespace belongs to a process,
not to a coroutine. Needs root and iproute2; :func:`netns_available` says whether it can work and
why not, so a test can skip with the reason.

Names are unique per process and pair (``kwns-<pid>-<n>-a``; pytest-xdist workers are separate
processes), the namespaces are deleted on exit whatever happened, and namespaces left behind by a
process that no longer exists (killed mid-test) are swept the next time a pair is made.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from kilowatch.errors import KilowatchError

IP_TIMEOUT_S = 10.0
"""Longest wait for one ``ip`` command."""
PREFIX = "kwns"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+|probe)(-[ab])?$")
_counter = itertools.count(1)
DEFAULT_SUBNET = "10.231.7.0/24"


@dataclass(frozen=True, slots=True)
class Netns:
    """One namespace of a pair: its name, its end of the veth link and that end's address."""

    name: str
    device: str
    address: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KilowatchError(f"ip {' '.join(args)}: {err}") from err
    if check and done.returncode != 0:
        raise KilowatchError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


@functools.cache
def netns_available() -> tuple[bool, str]:
    """``(True, "")`` when network namespaces with a veth pair can be made here, else ``(False,
    why)`` (not root, no ``ip``, or the kernel or container refuses)."""
    if sys.platform != "linux":
        return False, f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return False, "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return False, "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except KilowatchError as err:
        return False, f"cannot create a network namespace: {err}"
    try:
        _ip("-n", probe, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    except KilowatchError as err:
        return False, f"cannot create a veth pair: {err}"
    finally:
        _ip("netns", "del", probe, check=False)
    return True, ""


def _sweep_stale() -> None:
    """Delete this module's namespaces whose creating process is gone."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = _NAME.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _ip("netns", "del", name, check=False)
        except PermissionError:
            pass  # alive, someone else's


class NetnsPair:
    """Namespaces ``a`` and ``b`` joined by a veth link; see :func:`netns_pair`."""

    def __init__(self, a: Netns, b: Netns, network: ipaddress.IPv4Network) -> None:
        self.a = a
        self.b = b
        self.network = network
        self._procs: list[subprocess.Popen[str]] = []

    def add_address(self, ns: Netns, address: str) -> None:
        """Give ``ns``'s end of the link one more address (in the pair's network)."""
        if ipaddress.ip_address(address) not in self.network:
            raise KilowatchError(f"{address} is not in the pair's network {self.network}")
        _ip("-n", ns.name, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", ns.device)

    def argv(self, ns: Netns, code: str) -> list[str]:
        """The command that runs Python ``code`` inside ``ns`` with this interpreter."""
        return ["ip", "netns", "exec", ns.name, sys.executable, "-c", code]

    def run(
        self, ns: Netns, code: str, *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` inside ``ns`` to its end; raises after ``timeout`` seconds."""
        return subprocess.run(
            self.argv(ns, code), capture_output=True, text=True, timeout=timeout, env=_env()
        )

    def start(self, ns: Netns, code: str) -> subprocess.Popen[str]:
        """Start Python ``code`` inside ``ns`` (stdin, stdout and stderr are pipes). The pair
        kills it on exit if it still runs; closing its stdin is a polite way to ask it to stop."""
        proc = subprocess.Popen(
            self.argv(ns, code),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._procs.append(proc)
        return proc

    def _stop_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _env() -> dict[str, str]:
    # the child imports what this process imports (pytest puts src/ on sys.path, not PYTHONPATH)
    paths = [p for p in sys.path if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@contextlib.contextmanager
def netns_pair(*, subnet: str = DEFAULT_SUBNET) -> Iterator[NetnsPair]:
    """Create namespaces ``a`` (``.1`` of ``subnet``) and ``b`` (``.2``) joined by a veth pair,
    with loopback up, multicast on and a multicast route on the veth; delete both on exit, after
    killing every process started with :meth:`NetnsPair.start` that still runs.

    Raises :class:`KilowatchError` when they cannot be made (check :func:`netns_available`).
    """
    network = ipaddress.IPv4Network(subnet)
    hosts = network.hosts()
    base = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
    a = Netns(f"{base}-a", "veth0", str(next(hosts)))
    b = Netns(f"{base}-b", "veth1", str(next(hosts)))
    _sweep_stale()
    pair = NetnsPair(a, b, network)
    made: list[str] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns.name)
            made.append(ns.name)
        # the link is made inside a and its peer moved straight to b: the host's own namespace
        # never holds an end of it, even for a moment
        _ip("-n", a.name, "link", "add", a.device, "type", "veth", "peer", "name", b.device,
            "netns", b.name)  # fmt: skip
        for ns in (a, b):
            _ip("-n", ns.name, "link", "set", "lo", "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.address}/{network.prefixlen}", "dev", ns.device)
            _ip("-n", ns.name, "link", "set", ns.device, "multicast", "on", "up")
            _ip("-n", ns.name, "route", "add", "224.0.0.0/4", "dev", ns.device)
        yield pair
    finally:
        pair._stop_processes()
        for name in made:
            _ip("netns", "del", name, check=False)


__all__ = ["Netns", "NetnsPair", "netns_available", "netns_pair"]
