"""A Shelly Plug S (Gen1) that answers HTTP, for polling (shelly-api.md §19; kilowatch's
docs/polling.md).

Gen1 firmware serves plain JSON over HTTP on port 80: ``GET /shelly`` (type, MAC, whether a login
is required, firmware), ``GET /status`` (``unixtime``, ``wifi_sta``, ``relays``, ``meters`` with
``total`` in **Watt-minutes**, ``uptime``...) and ``GET /settings`` (``device.hostname``,
``mqtt.id``, the id it publishes under on MQTT: ``shellyplug-s-<MAC6>``). This device answers the
three, nothing else (404), and has no MQTT: it is the Gen1 plug of a site without a broker.

Its meter integrates up to the instant of each answer (a real device's counter is current), and
books what flowed in the :class:`~shellysim.meter.Truth` under ``relay/0``, the channel name
kilowatch uses. ``set_offline(True)`` closes its socket (connection refused, as an unplugged
device) until ``set_offline(False)``.

    async with Gen1HttpPlug(host="127.0.80.60", clock=clock, truth=truth, seed=1) as plug:
        plug.id, plug.address          # "shellyplug-s-000001", "127.0.80.60"
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from aiohttp import web

from shellysim.clock import Clock
from shellysim.meter import MeterChannel, Truth
from shellysim.models import mac_for
from shellysim.profiles import LoadKind, LoadProfile

MODEL = "SHPLG-S"
FW = "20230913-113421/v1.14.0-gcb84623"


class Gen1HttpPlug:
    """One Gen1 Plug S on ``host:port`` (port 80 by default, like the device)."""

    def __init__(
        self,
        *,
        host: str,
        clock: Clock,
        truth: Truth | None = None,
        seed: int = 0,
        index: int = 1,
        port: int = 80,
        load: LoadKind = LoadKind.FRIDGE,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.mac = mac_for(seed, 0xE00000 + index)
        self.id = f"shellyplug-s-{self.mac[-6:]}"
        self.boot_ts = clock.now()
        self.meter = MeterChannel(
            LoadProfile(load, seed=seed * 7919 + index),
            device_id=self.id,
            truth_keys=("relay/0",),
            truth=truth,
            start=clock.now(),
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def address(self) -> str:
        """``host``, or ``host:port`` when the port is not 80."""
        return self.host if self.port == 80 else f"{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/shelly", self._shelly)
        app.router.add_get("/status", self._status)
        app.router.add_get("/settings", self._settings)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self.set_offline(False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    async def set_offline(self, offline: bool) -> None:
        """Close the socket (connections are refused) or open it again. The meter keeps counting."""
        assert self._runner is not None, "use the plug as an async context manager"
        if offline and self._site is not None:
            await self._site.stop()
            self._site = None
        elif not offline and self._site is None:
            self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await self._site.start()

    # -- answers -------------------------------------------------------------------------------

    def shelly(self) -> dict[str, Any]:
        """``GET /shelly``."""
        return {"type": MODEL, "mac": self.mac, "auth": False, "fw": FW, "num_outputs": 1}

    def settings(self) -> dict[str, Any]:
        """``GET /settings`` (the part that says who the device is)."""
        return {
            "device": {"type": MODEL, "mac": self.mac, "hostname": self.id, "num_outputs": 1},
            "mqtt": {"enable": False, "id": self.id},
            "fw": FW,
        }

    def status(self) -> dict[str, Any]:
        """``GET /status``: the meter integrated up to now; ``total`` in Watt-minutes."""
        now = self.clock.now()
        self.meter.advance(now)
        sample = self.meter.sample()
        counters = [round(v / 1000 * 60, 3) for v in self.meter.aenergy.by_minute]
        return {
            "wifi_sta": {"connected": True, "ssid": "sim", "ip": self.host, "rssi": -60},
            "cloud": {"enabled": False, "connected": False},
            "mqtt": {"connected": False},
            "unixtime": int(now),
            "serial": 1,
            "has_update": False,
            "mac": self.mac,
            "relays": [{"ison": True, "has_timer": False, "overpower": False, "source": "http"}],
            "meters": [
                {
                    "power": round(sample.power_w, 2),
                    "overpower": 0.0,
                    "is_valid": True,
                    "timestamp": int(now),
                    "counters": counters,
                    "total": int(self.meter.aenergy.total_wh * 60),
                }
            ],
            "update": {"status": "idle", "has_update": False, "new_version": FW, "old_version": FW},
            "uptime": int(now - self.boot_ts),
        }

    async def _shelly(self, request: web.Request) -> web.Response:
        return web.json_response(self.shelly())

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _settings(self, request: web.Request) -> web.Response:
        return web.json_response(self.settings())


__all__ = ["Gen1HttpPlug"]
