"""Test helper: a ``ShellyRpc`` to a simulated device over the real LAN transport
(:func:`~kilowatch.fleet.rpc.lan.connect_lan`), with a :class:`Recording` transport in between
that lists every method sent, so tests can count calls (``Script.PutCode``, ``Shelly.Put*``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from kilowatch.fleet.rpc.base import ShellyRpc, Transport
from kilowatch.fleet.rpc.lan import connect_lan
from shellysim import Fleet
from shellysim.device import Device


class Recording:
    """A transport that passes every call to ``inner`` and records its method in ``sent``."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[str] = []

    @property
    def label(self) -> str:
        return self.inner.label

    def count(self, method: str) -> int:
        return sum(1 for m in self.sent if m.lower() == method.lower())

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        self.sent.append(method)
        return await self.inner.call(method, params, timeout=timeout)

    async def close(self) -> None:
        await self.inner.close()


@asynccontextmanager
async def lan_rpc(fleet: Fleet, dev: Device) -> AsyncIterator[tuple[ShellyRpc, Recording]]:
    """``(rpc, recording)`` to ``dev`` over its WebSocket; closed on exit."""
    async with aiohttp.ClientSession() as session:
        lan = await connect_lan(f"127.0.0.1:{fleet.port(dev)}", session=session, device_id=dev.id)
        recording = Recording(lan.transport)
        async with ShellyRpc(recording) as rpc:
            yield rpc, recording
