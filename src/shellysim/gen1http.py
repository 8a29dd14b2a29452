"""A Shelly Plug S (Gen1) that answers HTTP, for polling (shelly-api.md §19; kilowatch's
docs/polling.md).

Gen1 firmware serves plain JSON over HTTP on port 80: ``GET /shelly`` (type, MAC, whether a login
is required, firmware), ``GET /status`` (``unixtime``, ``wifi_sta``, ``relays``, ``meters`` with
``total`` in **Watt-minutes**, ``uptime``...) and ``GET /settings`` (``device.hostname``,
``mqtt.id``, the id it publishes under on MQTT: ``shellyplug-s-<MAC6>``). This device answers the
three and ``GET /ota``, nothing else (404), and has no MQTT: it is the Gen1 plug of a site without
a broker.

Firmware (as aioshelly's block device drives it): ``/status`` has ``update`` {``status``
(``idle``, ``pending``, ``updating``), ``has_update``, ``new_version``, ``old_version`` (the
running firmware), ``beta_version``}; ``GET /ota?update=true`` installs the stable offer,
``/ota?beta=true`` the beta, ``/ota`` alone only answers the ``update`` object. An update goes
``pending`` → ``updating`` (``ota_step_s`` real seconds each step), then the device reboots (its
socket closed for ``boot_time_s``) into the new firmware; with ``fail_next_update`` (once) or
``fail_updates`` (until cleared) it goes back to ``idle`` on the old firmware instead.
``update_requests`` lists the query of every ``/ota`` that started an update.

Its meter integrates up to the instant of each answer (a real device's counter is current), and
books what flowed in the :class:`~shellysim.meter.Truth` under ``relay/0``, the channel name
kilowatch uses. ``set_offline(True)`` closes its socket (connection refused, as an unplugged
device) until ``set_offline(False)``.

    async with Gen1HttpPlug(host="127.0.80.60", clock=clock, truth=truth, seed=1) as plug:
        plug.id, plug.address          # "shellyplug-s-000001", "127.0.80.60"
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from shellysim.clock import Clock
from shellysim.meter import MeterChannel, Truth
from shellysim.models import mac_for
from shellysim.profiles import LoadKind, LoadProfile

MODEL = "SHPLG-S"
FW = "20230913-113421/v1.14.0-gcb84623"
STABLE_FW = "20231107-164738/v1.14.1-gb3e4fc5"
BETA_FW = "20240111-105904/v1.15.0-beta1-g8b53f2e"
"""What the plug on :data:`FW` is offered (newest last)."""
_ORDER = (FW, STABLE_FW, BETA_FW)
OTA_STEP_S = 0.05
BOOT_TIME_S = 0.3


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
        self.fw = FW
        self.ota_status = "idle"
        self.fail_next_update = False
        self.fail_updates = False
        self.ota_step_s = OTA_STEP_S
        self.boot_time_s = BOOT_TIME_S
        self.update_requests: list[dict[str, str]] = []
        self._ota: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """``host``, or ``host:port`` when the port is not 80."""
        return self.host if self.port == 80 else f"{self.host}:{self.port}"

    @property
    def online(self) -> bool:
        """Whether its socket is open (not :meth:`set_offline`, not rebooting)."""
        return self._site is not None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/shelly", self._shelly)
        app.router.add_get("/status", self._status)
        app.router.add_get("/settings", self._settings)
        app.router.add_get("/ota", self._ota_request)
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
        if self._ota is not None:
            self._ota.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ota
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
        return {"type": MODEL, "mac": self.mac, "auth": False, "fw": self.fw, "num_outputs": 1}

    def settings(self) -> dict[str, Any]:
        """``GET /settings`` (the part that says who the device is)."""
        return {
            "device": {"type": MODEL, "mac": self.mac, "hostname": self.id, "num_outputs": 1},
            "mqtt": {"enable": False, "id": self.id},
            "fw": self.fw,
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
            "has_update": self._offer("stable") is not None,
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
            "update": self.update(),
            "uptime": int(now - self.boot_ts),
        }

    # -- firmware ------------------------------------------------------------------------------

    def _offer(self, stage: str) -> str | None:
        """The firmware ``stage`` offers, when newer than the running one."""
        wanted = STABLE_FW if stage == "stable" else BETA_FW
        running = _ORDER.index(self.fw) if self.fw in _ORDER else len(_ORDER)
        return wanted if _ORDER.index(wanted) > running else None

    def update(self) -> dict[str, Any]:
        """``/status``'s ``update`` object (and ``GET /ota``'s answer)."""
        stable = self._offer("stable")
        out: dict[str, Any] = {
            "status": self.ota_status,
            "has_update": stable is not None,
            "new_version": stable or self.fw,
            "old_version": self.fw,
        }
        beta = self._offer("beta")
        if beta is not None:
            out["beta_version"] = beta
        return out

    async def _ota_request(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        stage = (
            "beta" if query.get("beta") == "true"
            else "stable" if query.get("update") == "true" or "url" in query
            else None
        )  # fmt: skip
        if stage is not None and self.ota_status == "idle":
            target = self._offer(stage)
            if target is not None:
                self.update_requests.append(query)
                self.ota_status = "pending"
                self._ota = asyncio.create_task(self._run_ota(target))
        return web.json_response(self.update())

    async def _run_ota(self, target: str) -> None:
        await asyncio.sleep(self.ota_step_s)
        self.ota_status = "updating"
        await asyncio.sleep(self.ota_step_s * 3)
        if self.fail_next_update or self.fail_updates:
            self.fail_next_update = False
            self.ota_status = "idle"
            return
        await self.set_offline(True)  # rebooting into the new firmware
        await asyncio.sleep(self.boot_time_s)
        self.fw, self.ota_status = target, "idle"
        self.boot_ts = self.clock.now()
        await self.set_offline(False)

    async def _shelly(self, request: web.Request) -> web.Response:
        return web.json_response(self.shelly())

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _settings(self, request: web.Request) -> web.Response:
        return web.json_response(self.settings())


__all__ = ["Gen1HttpPlug"]
