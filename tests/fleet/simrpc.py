"""Test helper: a :class:`~kilowatch.fleet.rpc.base.Transport` that POSTs whole frames to a
simulated device's ``POST /rpc`` (no auth), recording every method it sends.

Only for tests of code that sits on ``ShellyRpc`` (script deploy, TLS upload), so they need not
wait for the LAN transport; it is no part of kilowatch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import aiohttp

from kilowatch.errors import DeviceConnectionError, RpcCallError
from kilowatch.fleet.rpc.base import ShellyRpc


class FrameTransport:
    """``POST <url>/rpc`` with ``{id, src, method, params}``; ``sent`` lists the methods."""

    def __init__(self, url: str, label: str) -> None:
        self.url = url
        self._label = label
        self.sent: list[str] = []
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    @property
    def label(self) -> str:
        return self._label

    def count(self, method: str) -> int:
        return sum(1 for m in self.sent if m.lower() == method.lower())

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        frame: dict[str, Any] = {"id": next(self._ids), "src": "kilowatch-test", "method": method}
        if params is not None:
            frame["params"] = dict(params)
        self.sent.append(method)
        try:
            async with self._session.post(
                f"{self.url}/rpc", json=frame, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                reply = await resp.json()
        except aiohttp.ClientError as err:
            raise DeviceConnectionError(self._label, f"{method}: {err}") from err
        if "error" in reply:
            error = reply["error"]
            raise RpcCallError(self._label, method, int(error["code"]), str(error["message"]))
        return reply.get("result")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def frame_rpc(url: str, label: str) -> tuple[ShellyRpc, FrameTransport]:
    """A ``ShellyRpc`` on a :class:`FrameTransport` to ``url``, and the transport (to count)."""
    transport = FrameTransport(url, label)
    return ShellyRpc(transport), transport
