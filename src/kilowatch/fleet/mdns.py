"""Discovery of Shelly Gen2+ devices over mDNS (``_shelly._tcp``, shelly-api.md §18).

:func:`browse` listens for ``seconds``, resolves every instance that answered (SRV, TXT and
address records; responders usually send them along with the answer, so resolving costs no extra
round trip) and returns what it found. It stands alone like the RPC client: it imports only
:mod:`kilowatch.errors` and python-zeroconf.

Multicast reaches the whole link: kilowatch's tests browse only inside a network namespace they
create (``kilowatch.testing.netns``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from kilowatch.errors import ConfigError, FleetError

SHELLY_SERVICE = "_shelly._tcp.local."
"""The service type every Gen2+ device advertises (§18)."""
DEFAULT_BROWSE_S = 3.0
"""How long :func:`browse` listens by default: devices answer a query within a second (RFC 6762
§6 allows a responder 20–120 ms, plus the browser's own query schedule)."""
MAX_BROWSE_S = 600.0
CLOSE_TIMEOUT_S = 3.0
"""Longest wait for zeroconf to close its sockets."""


@dataclass(frozen=True, slots=True)
class MdnsFound:
    """One device that answered on ``_shelly._tcp``.

    ``device_id`` is the TXT ``id`` when present, else the instance name (which is the device id
    on Gen2+ devices); ``addresses`` are its IPv4 then IPv6 addresses as strings; ``gen`` is the
    TXT ``gen`` (``None`` if missing or not a number); ``txt`` holds every TXT property.
    """

    device_id: str
    addresses: tuple[str, ...]
    port: int
    gen: int | None
    name: str
    host: str | None = None
    app: str | None = None
    ver: str | None = None
    txt: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def address(self) -> str:
        """The first address (IPv4 first)."""
        return self.addresses[0]

    @property
    def url(self) -> str:
        """``http://address[:port]`` of the device."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}" if self.port == 80 else f"http://{host}:{self.port}"


def _check_interfaces(interfaces: Sequence[str] | None) -> list[str] | None:
    """Each interface must be an address this machine has (zeroconf takes addresses, not names)."""
    if interfaces is None:
        return None
    if isinstance(interfaces, str) or not interfaces:
        raise ConfigError("mDNS interfaces: give a list of one or more interface addresses")
    checked = []
    for value in interfaces:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(
                f"mDNS interface {value!r} is not an IP address: give the address of the "
                "interface to browse on (e.g. 192.168.1.10), not its name"
            ) from None
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((str(addr), 0))  # binding sends nothing; it fails for a foreign address
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL:
                    raise ConfigError(
                        f"mDNS interface {value}: no interface of this machine has that address"
                    ) from None
                raise ConfigError(f"mDNS interface {value}: {err.strerror}") from None
        checked.append(str(addr))
    return checked


def _found(info: AsyncServiceInfo) -> MdnsFound | None:
    addresses = tuple(info.parsed_addresses(IPVersion.V4Only)) + tuple(
        info.parsed_addresses(IPVersion.V6Only)
    )
    if info.port is None or not addresses:
        return None
    txt = {k: v for k, v in info.decoded_properties.items() if v is not None}
    instance = info.name.removesuffix("." + info.type)
    try:
        gen: int | None = int(txt["gen"])
    except (KeyError, ValueError):
        gen = None
    return MdnsFound(
        device_id=txt.get("id") or instance.lower(),
        addresses=addresses,
        port=info.port,
        gen=gen,
        name=info.name,
        host=info.server,
        app=txt.get("app"),
        ver=txt.get("ver"),
        txt=txt,
    )


async def browse(
    *,
    seconds: float = DEFAULT_BROWSE_S,
    interfaces: Sequence[str] | None = None,
    service: str = SHELLY_SERVICE,
) -> list[MdnsFound]:
    """The devices that answer on ``service`` within ``seconds``, sorted by device id.

    ``interfaces`` are addresses of this machine's interfaces to browse on (default: every IPv4
    interface). Waits ``seconds`` (plus at most :data:`CLOSE_TIMEOUT_S` to close), never longer.
    Instances that answered but could not be resolved in time (no address, no port) are left
    out. Raises :class:`ConfigError` for a bad interface or duration, :class:`FleetError` when
    mDNS cannot run (sockets cannot be opened, zeroconf fails).
    """
    if not 0 < seconds <= MAX_BROWSE_S:
        raise ConfigError(f"mDNS browse time must be in (0, {MAX_BROWSE_S:g}] s, got {seconds}")
    chosen = _check_interfaces(interfaces)
    where = ", ".join(chosen) if chosen is not None else "every interface"
    try:
        zc = AsyncZeroconf(
            interfaces=chosen if chosen is not None else InterfaceChoice.All,
            ip_version=None if chosen is not None else IPVersion.V4Only,
        )
    except (OSError, RuntimeError, ValueError, ZeroconfError) as err:
        raise FleetError("mdns", f"cannot open mDNS sockets on {where}: {err}") from err
    try:
        return await _browse(zc, service, seconds)
    except (OSError, RuntimeError, ZeroconfError) as err:
        raise FleetError("mdns", f"browsing {service} on {where} failed: {err!r}") from err
    finally:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await zc.async_close()
        except (TimeoutError, OSError, ZeroconfError):
            pass  # the answer is complete; a slow close must not turn it into an error


async def _browse(zc: AsyncZeroconf, service: str, seconds: float) -> list[MdnsFound]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    infos: dict[str, AsyncServiceInfo] = {}
    resolved: dict[str, MdnsFound] = {}

    async def resolve(name: str, info: AsyncServiceInfo) -> None:
        left_ms = max(0.0, (deadline - loop.time()) * 1000)
        if await info.async_request(zc.zeroconf, left_ms) and (found := _found(info)):
            resolved[name] = found

    async with asyncio.TaskGroup() as tasks:

        def on_change(**event: Any) -> None:
            name = str(event["name"])
            if event["state_change"] is ServiceStateChange.Removed:
                infos.pop(name, None)
                resolved.pop(name, None)
            elif name not in infos:
                infos[name] = AsyncServiceInfo(service, name)
                tasks.create_task(resolve(name, infos[name]))

        browser = AsyncServiceBrowser(zc.zeroconf, service, handlers=[on_change])
        try:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            await browser.async_cancel()
    # an instance resolved after it said goodbye does not count
    return sorted((resolved[n] for n in resolved if n in infos), key=lambda f: f.device_id)


__all__ = ["DEFAULT_BROWSE_S", "SHELLY_SERVICE", "MdnsFound", "browse"]
