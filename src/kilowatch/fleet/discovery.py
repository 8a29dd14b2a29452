"""Finding Shelly devices: address scans, the broker, mDNS; one :class:`Found` per device.

Three ways in, one result:

* :func:`scan`: ``GET /shelly`` on every address of the ranges :func:`parse_targets` expands
  (``127.0.1.0/24``, ``127.0.1.1-127.0.1.200``, ``host:port``), a fixed number of probes in flight;
* :func:`from_broker`: the devices whose retained ``<prefix>/online`` is ``true`` on a broker,
  asked ``Shelly.GetDeviceInfo`` over MQTT RPC (devices behind NAT that only talk to the broker);
* :func:`from_mdns`: the addresses mDNS advertised, each confirmed with ``GET /shelly``.

:func:`merge` folds them into one list by device id. Nothing here writes anywhere: the registry
(:mod:`kilowatch.fleet.registry`) records what was found.

``GET /shelly`` answers (``shared/shelly-api.md`` §1, §18) carry ``gen`` on Gen2 and later; a Gen1
device answers without it (``type``, ``mac``, ``fw``) and is reported as :class:`Unsupported`,
not as an error. An address that does not answer, or answers something that is not a Shelly, is
simply not found.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import aiohttp

from kilowatch.errors import DeviceError, FleetError
from kilowatch.fleet.mdns import MdnsFound
from kilowatch.fleet.rpc.lan import probe as lan_probe
from kilowatch.fleet.rpc.mqtt import MqttRpc

log = logging.getLogger(__name__)

MAX_TARGETS = 65_536
"""Most addresses one discovery scans: a /16. More is a typo (a /8 is 16 million probes)."""
SCAN_CONCURRENCY = 64
"""Probes in flight at once by default: a /24 takes about four probe timeouts at worst."""
PROBE_TIMEOUT_S = 2.0
"""Bound of one ``GET /shelly``: a device on the LAN answers in well under a second."""
BROKER_WAIT_S = 2.0
"""How long to collect retained ``<prefix>/online`` messages (a broker sends them at once)."""
BROKER_CONCURRENCY = 64
"""``Shelly.GetDeviceInfo`` calls over MQTT in flight at once."""
BROKER_CALL_TIMEOUT_S = 5.0
"""Bound of one RPC over the broker: a stale retained ``online`` must not hold discovery long."""
DEVICE_HTTP_PORT = 80
"""The port a Shelly serves HTTP on; addresses leave it out."""
MIN_GEN = 2
"""Generations kilowatch manages: RPC devices (Gen2, Gen3, Gen4; §1 "treat gen >= 2 as RPC")."""


class How(StrEnum):
    """How a device was found (the registry's ``discovered_by``)."""

    SCAN = "scan"
    MDNS = "mdns"
    BROKER = "broker"


@dataclass(frozen=True, slots=True)
class Found:
    """A Gen2+ Shelly that answered, as its ``GET /shelly`` / ``Shelly.GetDeviceInfo`` says."""

    device: str
    """Its id (``shellypmminig3-ecda3bc4ddb0``)."""
    mac: str | None
    model: str | None
    gen: int
    fw_ver: str | None
    """The firmware version (``ver``: ``1.4.4``)."""
    app: str | None
    name: str | None
    auth_en: bool
    """Whether the device has a password (``Shelly.SetAuth``)."""
    address: str | None
    """``host`` or ``host:port`` (port 80 left out); ``None`` when found on the broker only."""
    how: How
    prefix: str | None = None
    """Its MQTT topic prefix: known when found on the broker."""


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A Shelly that answered but that kilowatch does not manage yet (Gen1)."""

    address: str
    model: str | None
    """Gen1 ``type`` (``SHPLG-S``)."""
    mac: str | None
    fw: str | None


class Probe(Protocol):
    """``GET /shelly`` on one address (:func:`kilowatch.fleet.rpc.lan.probe`)."""

    def __call__(
        self, address: str, *, session: aiohttp.ClientSession, timeout: float
    ) -> Awaitable[dict[str, Any]]: ...


Progress = Callable[[str, Found | Unsupported | None], None]
"""Called once per address probed, with what it was (``None``: nothing there)."""


# --- address specs -------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")  # fmt: skip
_SPEC_FORMS = (
    "an address (127.0.1.7), a network (127.0.1.0/24), a range (127.0.1.1-127.0.1.200 or "
    "127.0.1.1-200), each with an optional :PORT or :PORT-PORT, or a host name"
)

_Host = ipaddress.IPv4Address | ipaddress.IPv6Address | str


@dataclass(frozen=True, slots=True)
class _Spec:
    hosts: Sequence[_Host]
    """A lazy sequence for networks and ranges: never materialised before the size check."""
    ports: range | None

    @property
    def size(self) -> int:
        # the range's own count: len() cannot exceed sys.maxsize, an IPv6 /64 does
        hosts = self.hosts.size if isinstance(self.hosts, _AddressRange) else len(self.hosts)
        return hosts * (len(self.ports) if self.ports is not None else 1)


class _AddressRange(Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]):
    """``first`` … ``last`` inclusive, without building the list."""

    def __init__(self, first: ipaddress.IPv4Address | ipaddress.IPv6Address, count: int) -> None:
        self.first = first
        self.size = count

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.first + index


def parse_targets(specs: Sequence[str]) -> list[str]:
    """The addresses ``specs`` name, in order, each once: ``host`` or ``host:port``.

    A spec is an address (``127.0.1.7``, ``::1``), a network (``127.0.1.0/24``: its usable hosts,
    without the network and broadcast addresses), a range (``127.0.1.1-127.0.1.200``, or
    ``127.0.1.1-200`` for the last octet), or a host name; each may end in ``:PORT`` or
    ``:PORT-PORT`` (IPv6 in brackets: ``[::1]:8080``). Port 80, the devices' own, is left out
    of the addresses.

    Raises :class:`FleetError` naming the spec when one is malformed, and when all of them
    together name more than :data:`MAX_TARGETS` addresses (checked before any is listed).
    """
    parsed = [_parse_spec(spec) for spec in specs]
    total = sum(p.size for p in parsed)
    if total > MAX_TARGETS:
        raise FleetError(
            "--scan",
            f"{', '.join(specs)} is {total:,} addresses; the most one discovery scans is "
            f"{MAX_TARGETS:,} (a /16): narrow the ranges, or run several discoveries",
        )
    seen: dict[str, None] = {}
    for p in parsed:
        for address in _addresses(p):
            seen.setdefault(address, None)
    return list(seen)


def _addresses(spec: _Spec) -> Iterator[str]:
    ports: Iterable[int | None] = spec.ports if spec.ports is not None else (None,)
    for host in spec.hosts:
        for port in ports:
            yield format_address(str(host), port)


def format_address(host: str, port: int | None) -> str:
    """``host``, or ``host:port`` unless ``port`` is the devices' port 80 (``[v6]:port``)."""
    if port is None or port == DEVICE_HTTP_PORT:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_spec(raw: str) -> _Spec:
    spec = raw.strip()
    if not spec:
        raise FleetError("--scan", f"an empty address spec; use {_SPEC_FORMS}")
    try:
        host, ports = _split_ports(spec)
        return _Spec(_hosts(host), ports)
    except ValueError as err:
        raise FleetError(f"--scan {raw}", f"{err}; use {_SPEC_FORMS}") from None


def _split_ports(spec: str) -> tuple[str, range | None]:
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError("'[' without ']'")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        return host, _ports(rest[1:])
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, _ports(port)
    return spec, None  # no port, or a bare IPv6 address / network


def _ports(text: str) -> range:
    low, sep, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise ValueError(f"{text!r} is not a port or a port range") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"ports {text!r} are not within 1-65535, low to high")
    return range(first, last + 1)


def _hosts(host: str) -> Sequence[_Host]:
    if not host:
        raise ValueError("no host")
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            # ipaddress's own message only repeats the spec ("does not appear to be ...")
            raise ValueError(f"{host!r} is not a network") from None
        return _network_hosts(net)
    first_text, sep, last_text = host.partition("-")
    if sep:
        try:
            first = ipaddress.ip_address(first_text)
        except ValueError:
            first = None  # a host name with a hyphen
        if first is not None:
            return _range(first, last_text)
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
        raise ValueError(f"{host!r} is not an address, a network, a range or a host name")
    return [host]


def _network_hosts(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Sequence[_Host]:
    # The usable hosts: a /31 or /32 (/127, /128) has no network or broadcast address to skip.
    if net.num_addresses <= 2:
        return _AddressRange(net.network_address, net.num_addresses)
    skip_broadcast = 1 if net.version == 4 else 0  # IPv6 has no broadcast (hosts() keeps it)
    return _AddressRange(net.network_address + 1, net.num_addresses - 1 - skip_broadcast)


def _range(first: ipaddress.IPv4Address | ipaddress.IPv6Address, last_text: str) -> Sequence[_Host]:
    last: ipaddress.IPv4Address | ipaddress.IPv6Address
    if last_text.isdigit() and first.version == 4:
        if int(last_text) > 255:
            raise ValueError(f"the range's end {last_text} is not an octet (0-255)")
        last = ipaddress.IPv4Address(int(first) & ~0xFF | int(last_text))
    else:
        try:
            last = ipaddress.ip_address(last_text)
        except ValueError:
            raise ValueError(f"the range's end {last_text!r} is not an address") from None
        if last.version != first.version:
            raise ValueError("the range mixes IPv4 and IPv6")
    if int(last) < int(first):
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    return _AddressRange(first, int(last) - int(first) + 1)


# --- answers ----------------------------------------------------------------------------------


def found_from_info(
    info: Mapping[str, Any], *, address: str | None, how: How, prefix: str | None = None
) -> Found | Unsupported | None:
    """What a ``GET /shelly`` or ``Shelly.GetDeviceInfo`` answer says: a :class:`Found` for a
    Gen2+ device, :class:`Unsupported` for a Gen1 one (its answer has ``type`` and no ``gen``),
    ``None`` for anything else (not a Shelly)."""
    gen = info.get("gen")
    device = info.get("id")
    if isinstance(gen, int) and not isinstance(gen, bool) and gen >= MIN_GEN:
        if not isinstance(device, str) or not device:
            return None
        return Found(
            device=device,
            mac=_text(info.get("mac")),
            model=_text(info.get("model")),
            gen=gen,
            fw_ver=_text(info.get("ver")),
            app=_text(info.get("app")),
            name=_text(info.get("name")),
            auth_en=info.get("auth_en") is True,
            address=address,
            how=how,
            prefix=prefix,
        )
    if gen is None and isinstance(info.get("type"), str) and address is not None:
        return Unsupported(
            address=address,
            model=_text(info.get("type")),
            mac=_text(info.get("mac")),
            fw=_text(info.get("fw")),
        )
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the LAN: scan and mDNS ------------------------------------------------------------------


async def scan(
    targets: Sequence[str],
    *,
    session: aiohttp.ClientSession,
    concurrency: int = SCAN_CONCURRENCY,
    timeout: float = PROBE_TIMEOUT_S,
    progress: Progress | None = None,
    unsupported: list[Unsupported] | None = None,
    probe: Probe = lan_probe,
) -> list[Found]:
    """``GET /shelly`` on every address of ``targets`` (from :func:`parse_targets`): the Gen2+
    devices that answered, in the order of ``targets``.

    At most ``concurrency`` probes are in flight (that many workers share the list: a /16 is
    never 65 536 tasks), each bounded by ``timeout``. Unreachable addresses and answers that are
    not a Shelly's are not found, silently; Gen1 devices are appended to ``unsupported`` when it
    is given. ``progress`` is called once per address. The ``session``'s connection limit should
    allow ``concurrency`` connections.
    """
    return await _probe_all(
        targets,
        how=How.SCAN,
        session=session,
        concurrency=concurrency,
        timeout=timeout,
        progress=progress,
        unsupported=unsupported,
        probe=probe,
    )


async def from_mdns(
    advertised: Sequence[MdnsFound],
    session: aiohttp.ClientSession,
    *,
    concurrency: int = SCAN_CONCURRENCY,
    timeout: float = PROBE_TIMEOUT_S,
    unsupported: list[Unsupported] | None = None,
    probe: Probe = lan_probe,
) -> list[Found]:
    """The devices mDNS advertised, each confirmed by ``GET /shelly`` on its address (an mDNS
    record is a claim; the device's own answer is the fact, and gives its model and firmware)."""
    addresses = list(dict.fromkeys(_mdns_address(m) for m in advertised))
    return await _probe_all(
        addresses,
        how=How.MDNS,
        session=session,
        concurrency=concurrency,
        timeout=timeout,
        progress=None,
        unsupported=unsupported,
        probe=probe,
    )


def _mdns_address(found: MdnsFound) -> str:
    return format_address(found.address, found.port)


async def _probe_all(
    targets: Sequence[str],
    *,
    how: How,
    session: aiohttp.ClientSession,
    concurrency: int,
    timeout: float,
    progress: Progress | None,
    unsupported: list[Unsupported] | None,
    probe: Probe,
) -> list[Found]:
    if concurrency < 1:
        raise FleetError("--concurrency", f"must be 1 or more, got {concurrency}")
    answers: dict[int, Found] = {}
    queue = iter(enumerate(targets))  # shared by the workers: next() never awaits

    async def worker() -> None:
        for index, address in queue:
            result = await _probe_one(probe, address, how=how, session=session, timeout=timeout)
            if isinstance(result, Found):
                answers[index] = result
            elif isinstance(result, Unsupported) and unsupported is not None:
                unsupported.append(result)
            if progress is not None:
                progress(address, result)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(targets))):
            group.create_task(worker())
    return [answers[i] for i in sorted(answers)]


async def _probe_one(
    probe: Probe, address: str, *, how: How, session: aiohttp.ClientSession, timeout: float
) -> Found | Unsupported | None:
    try:
        # probe bounds itself; this outer bound only guards against one that does not
        async with asyncio.timeout(timeout + 1.0):
            info = await probe(address, session=session, timeout=timeout)
    except (DeviceError, TimeoutError) as err:
        log.debug("nothing at %s: %s", address, err)
        return None
    return found_from_info(info, address=address, how=how)


# --- the broker ---------------------------------------------------------------------------------


async def from_broker(
    mqtt: MqttRpc,
    *,
    wait: float = BROKER_WAIT_S,
    concurrency: int = BROKER_CONCURRENCY,
    timeout: float = BROKER_CALL_TIMEOUT_S,
    levels: int = 1,
) -> list[Found]:
    """The devices online on ``mqtt``'s broker (retained ``<prefix>/online`` = ``true``, collected
    for ``wait`` seconds), each asked ``Shelly.GetDeviceInfo`` over MQTT RPC, at most
    ``concurrency`` at once, each bounded by ``timeout``; sorted by device id. ``levels``: topic
    levels a prefix may have (1 covers the default prefix, the device id; 2 ``home/boiler``).

    A prefix whose device does not answer (a stale retained message, a Gen1 device, a device
    without ``rpc`` over MQTT) is not found."""
    if concurrency < 1:
        raise FleetError("--concurrency", f"must be 1 or more, got {concurrency}")
    prefixes = sorted(await mqtt.online_prefixes(wait, levels=levels))
    found: list[Found] = []
    queue = iter(prefixes)

    async def worker() -> None:
        for prefix in queue:
            result = await _ask_over_mqtt(mqtt, prefix, timeout=timeout)
            if result is not None:
                found.append(result)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(prefixes))):
            group.create_task(worker())
    return sorted(found, key=lambda f: f.device)


async def _ask_over_mqtt(mqtt: MqttRpc, prefix: str, *, timeout: float) -> Found | None:
    try:
        async with mqtt.device(prefix) as rpc:
            info = await rpc.call("Shelly.GetDeviceInfo", timeout=timeout)
    except (DeviceError, FleetError) as err:  # FleetError: a prefix no device can have
        log.debug("no device answers on %s/rpc: %s", prefix, err)
        return None
    if not isinstance(info, dict):
        return None
    result = found_from_info(info, address=None, how=How.BROKER, prefix=prefix)
    return result if isinstance(result, Found) else None


# --- merging ------------------------------------------------------------------------------------


def merge(found_lists: Iterable[Iterable[Found]]) -> list[Found]:
    """One :class:`Found` per device id, sorted by id.

    A device found on the LAN (scan, mDNS) keeps its address over a broker-only sighting, and
    takes the broker's topic prefix; otherwise the first sighting wins (pass the lists in the
    order of preference: scan, mDNS, broker)."""
    best: dict[str, Found] = {}
    for found in (f for lst in found_lists for f in lst):
        kept = best.get(found.device)
        if kept is None:
            best[found.device] = found
            continue
        if kept.address is None and found.address is not None:
            kept, found = found, kept
        if kept.prefix is None and found.prefix is not None:
            kept = replace(kept, prefix=found.prefix)
        best[found.device] = kept
    return [best[d] for d in sorted(best)]


__all__ = [
    "BROKER_CALL_TIMEOUT_S",
    "BROKER_CONCURRENCY",
    "BROKER_WAIT_S",
    "DEVICE_HTTP_PORT",
    "MAX_TARGETS",
    "MIN_GEN",
    "PROBE_TIMEOUT_S",
    "SCAN_CONCURRENCY",
    "Found",
    "How",
    "Probe",
    "Progress",
    "Unsupported",
    "format_address",
    "found_from_info",
    "from_broker",
    "from_mdns",
    "merge",
    "parse_targets",
    "scan",
]
