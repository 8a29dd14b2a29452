"""mDNS advertisement of simulated devices (shelly-api.md §18), with python-zeroconf.

Each device is advertised as ``<id>._shelly._tcp.local.`` and ``<id>._http._tcp.local.`` on its
HTTP port, host ``<id>.local.`` with its address, TXT ``gen``, ``id``, ``app`` and ``ver`` (only
``gen`` is confirmed on real devices; the other keys are plausible, §22.6). Real devices advertise
port 80 on their own address: stand the fleet on ``http_hosts`` to match.

Multicast leaves the machine: advertise on a network you own, or inside a network namespace (the
tests do, see ``kilowatch.testing.netns``), never by accident. One responder serves the whole
fleet, so a device keeps being advertised while it reboots or is cut off (its HTTP socket is
closed meanwhile); the TXT record is the one the device had when the fleet started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Self

from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from shellysim.device import Device
from shellysim.errors import SimConfigError, SimulatorError

SHELLY_SERVICE = "_shelly._tcp.local."
"""Gen2+ devices only (§18)."""
HTTP_SERVICE = "_http._tcp.local."
"""Every Shelly generation (§18)."""
SERVICE_TYPES = (SHELLY_SERVICE, HTTP_SERVICE)
CLOSE_TIMEOUT_S = 5.0
"""Longest wait for the goodbye packets when the advertiser closes."""


def txt_of(device: Device) -> dict[str, str]:
    """The TXT properties a device advertises."""
    return {
        "gen": str(device.spec.gen),
        "id": device.id,
        "app": device.spec.app,
        "ver": device.ver,
    }


def service_infos(device: Device, address: str, port: int) -> list[AsyncServiceInfo]:
    """The device's two service records (``_shelly._tcp`` and ``_http._tcp``)."""
    return [
        AsyncServiceInfo(
            kind,
            f"{device.id}.{kind}",
            port=port,
            properties=txt_of(device),
            server=f"{device.id}.local.",
            parsed_addresses=[address],
        )
        for kind in SERVICE_TYPES
    ]


class Advertiser:
    """Advertises devices over mDNS while open (an async context manager).

    ``addresses[i]`` and ``ports[i]`` (default 80) are where ``devices[i]`` answers HTTP.
    ``interfaces`` are the addresses of the interfaces to advertise on (default: every interface
    of the machine, or of the network namespace the process runs in).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        addresses: Sequence[str],
        *,
        ports: Sequence[int] | None = None,
        interfaces: Sequence[str] | None = None,
    ) -> None:
        if len(addresses) != len(devices) or (ports is not None and len(ports) != len(devices)):
            raise SimConfigError("mDNS: give one address (and port) per device")
        self.devices = list(devices)
        self.addresses = list(addresses)
        self.ports = list(ports) if ports is not None else [80] * len(devices)
        self.interfaces = list(interfaces) if interfaces is not None else None
        self._zc: AsyncZeroconf | None = None
        self._announcing: list[asyncio.Future[object]] = []

    async def __aenter__(self) -> Self:
        where = ", ".join(self.interfaces) if self.interfaces is not None else "every interface"
        try:
            self._zc = AsyncZeroconf(
                interfaces=self.interfaces if self.interfaces is not None else InterfaceChoice.All,
                ip_version=None if self.interfaces is not None else IPVersion.V4Only,
            )
        except (OSError, RuntimeError, ValueError, ZeroconfError) as err:
            raise SimulatorError(f"cannot advertise over mDNS on {where}: {err}") from err
        try:
            infos = [
                info
                for dev, address, port in zip(self.devices, self.addresses, self.ports, strict=True)
                for info in service_infos(dev, address, port)
            ]
            # Each registration probes for ~1 s first (RFC 6762 §8.1): probe them all at once.
            pending = await asyncio.gather(*(self._zc.async_register_service(i) for i in infos))
            self._announcing = [asyncio.ensure_future(_wait(p)) for p in pending]
        except (OSError, ZeroconfError) as err:
            await self._close()
            raise SimulatorError(f"cannot advertise over mDNS on {where}: {err!r}") from err
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for task in self._announcing:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._announcing, return_exceptions=True)
        self._announcing = []
        zc, self._zc = self._zc, None
        if zc is not None:
            # async_close sends the goodbyes (TTL 0) for every registered service
            with contextlib.suppress(TimeoutError, OSError, ZeroconfError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await zc.async_close()


async def _wait(awaitable: Awaitable[object]) -> object:
    return await awaitable


__all__ = [
    "HTTP_SERVICE",
    "SERVICE_TYPES",
    "SHELLY_SERVICE",
    "Advertiser",
    "service_infos",
    "txt_of",
]
