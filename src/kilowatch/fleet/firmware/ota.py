"""One device's firmware: what it runs and is offered, and one over-the-air update watched to its
end (shared/shelly-api.md §17). :mod:`kilowatch.fleet.firmware` runs these over a fleet.

Gen2+ (RPC): ``Shelly.GetDeviceInfo`` (``ver``) and ``Shelly.CheckForUpdate`` (the stages that
offer something newer); ``Shelly.Update {"stage": stage}`` with the stage always given (a device
ignores parameters it does not know and installs *stable*: a misspelt key would silently install
the wrong firmware); then the device's ``NotifyEvent``\\ s on ``sys`` (``ota_begin``,
``ota_progress`` with ``progress_percent``, ``ota_success``, ``ota_error``), when its transport
carries notifications, and ``Shelly.GetDeviceInfo`` polled until ``ver`` is the offered version.
An ``ota_error`` fails the update at once, with the device's message; without events a failed
update shows only as the deadline passing on the old version.

Gen1 (HTTP, as aioshelly's block device does it): ``GET /status`` (``update``: ``status``,
``has_update``, ``new_version``, ``old_version``, ``beta_version``), ``GET /shelly`` (the model),
``GET /ota?update=true`` (stable) or ``GET /ota?beta=true``; then ``/status`` polled until
``old_version`` (the running firmware) is the offered one. A device that was seen updating and is
back to ``idle`` on its old firmware failed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from kilowatch.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
    InvalidAuthError,
    KilowatchError,
    RpcCallError,
)
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.rpc.lan import split_address

STAGES = ("stable", "beta")
"""The release channels ``Shelly.Update`` takes (§17)."""
POLL_S = 2.0
"""Default interval between version reads while a device updates (a real OTA takes 1-3 min)."""
POLL_CALL_TIMEOUT_S = 3.0
"""Bound of one read while a device updates (it may be rebooting: the read fails, and the next
one is made at the next interval)."""
GEN1_USER = "admin"
"""Gen1 HTTP basic auth user (the default of the device's login)."""

Tell = Callable[[str, str | None], None]
"""Told each change of a device's update: ``(state, detail)``; ``state`` is ``updating``,
``progress`` (detail: the percentage), ``rebooting``."""


@dataclass(frozen=True, slots=True)
class Offers:
    """What a device runs and is offered (a stage is ``None`` when it offers nothing newer)."""

    model: str | None
    gen: int | None
    current: str | None
    stable: str | None = None
    beta: str | None = None

    def offer(self, stage: str) -> str | None:
        """The version ``stage`` offers, ``None`` when nothing newer."""
        return self.stable if stage == "stable" else self.beta if stage == "beta" else None


@dataclass(frozen=True, slots=True)
class OtaResult:
    """How one update ended: ``after`` is the version the device reported last (``None`` when it
    never answered after the update was sent); ``reason`` says why it failed."""

    ok: bool
    after: str | None
    reason: str | None = None


def check_stage(stage: str) -> str:
    """``stage`` when it is one of :data:`STAGES`, else :class:`ValueError`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of: {', '.join(STAGES)}")
    return stage


# --- Gen2+ ------------------------------------------------------------------------------------


async def read_offers(rpc: ShellyRpc, *, timeout: float) -> Offers:
    """``Shelly.GetDeviceInfo`` and ``Shelly.CheckForUpdate``, each bounded by ``timeout``.

    ``Shelly.CheckForUpdate`` asks the update server; when the device answers it with an error
    (it cannot reach the server), the offers are those ``Sys.GetStatus`` holds in
    ``available_updates`` from its last daily check (§11.1, §17)."""
    info = await rpc.call("Shelly.GetDeviceInfo", timeout=timeout)
    try:
        offers = await rpc.call("Shelly.CheckForUpdate", timeout=timeout)
    except RpcCallError:
        status = await rpc.call("Sys.GetStatus", timeout=timeout)
        offers = status.get("available_updates") if isinstance(status, dict) else None
    info = info if isinstance(info, dict) else {}
    offers = offers if isinstance(offers, dict) else {}
    return Offers(
        model=_text(info.get("model")),
        gen=info.get("gen") if isinstance(info.get("gen"), int) else None,
        current=_text(info.get("ver")),
        stable=_version(offers.get("stable")),
        beta=_version(offers.get("beta")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _version(offer: Any) -> str | None:
    return _text(offer.get("version")) if isinstance(offer, dict) else None


class _Watch:
    """What a device's notifications said about its update so far."""

    def __init__(self, tell: Tell) -> None:
        self.tell = tell
        self.error: str | None = None
        self.success = False
        self.changed = asyncio.Event()

    def __call__(self, method: str, params: dict[str, Any]) -> None:
        if method != "NotifyEvent":
            return
        for item in params.get("events") or ():
            if not isinstance(item, dict) or item.get("component") != "sys":
                continue
            event = item.get("event")
            if event == "ota_progress":
                self.tell("progress", str(item.get("progress_percent", "")))
            elif event == "ota_success":
                self.success = True
                self.tell("rebooting", None)
            elif event == "ota_error":
                self.error = str(item.get("msg") or "ota_error")
                self.changed.set()


async def update_gen2(
    rpc: ShellyRpc,
    *,
    stage: str,
    before: str | None,
    target: str,
    timeout: float,
    poll_s: float = POLL_S,
    tell: Tell | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OtaResult:
    """Send ``Shelly.Update {"stage": stage}`` and watch until the device reports ``target``
    (module doc), at most ``timeout`` seconds. Raises the :class:`DeviceError` of
    ``Shelly.Update`` itself (nothing was started); every later trouble is in the result."""
    say = tell or (lambda state, detail: None)
    watch = _Watch(say)
    remove = await rpc.listen(watch)
    try:
        # ALWAYS the stage, explicitly (module doc)
        await rpc.call("Shelly.Update", {"stage": check_stage(stage)})
        say("updating", None)
        return await _watch_gen2(rpc, watch, before, target, timeout, poll_s, clock)
    finally:
        if remove is not None:
            remove()


async def _watch_gen2(
    rpc: ShellyRpc,
    watch: _Watch,
    before: str | None,
    target: str,
    timeout: float,
    poll_s: float,
    clock: Callable[[], float],
) -> OtaResult:
    deadline = clock() + timeout
    seen = before
    while True:
        if watch.error is not None:
            return OtaResult(False, seen, f"ota_error: {watch.error}")
        try:
            info = await rpc.call(
                "Shelly.GetDeviceInfo", timeout=min(POLL_CALL_TIMEOUT_S, poll_s * 2)
            )
            ver = _text(info.get("ver")) if isinstance(info, dict) else None
        except (DeviceConnectionError, DeviceTimeoutError):
            ver = None  # rebooting into the new firmware, most likely
        if ver is not None:
            seen = ver
            if ver == target:
                return OtaResult(True, ver)
            if ver != before:
                return OtaResult(False, ver, f"installed {ver}, expected {target}")
        left = deadline - clock()
        if left <= 0:
            said = " (it said ota_success)" if watch.success else ""
            return OtaResult(
                False,
                seen,
                f"timeout: still on {seen or 'an unknown version'} {timeout:g} s after "
                f"Shelly.Update{said} (expected {target})",
            )
        watch.changed.clear()
        try:
            async with asyncio.timeout(min(poll_s, left)):
                await watch.changed.wait()
        except TimeoutError:
            pass


# --- Gen1 -------------------------------------------------------------------------------------

_GEN1_VERSION = re.compile(r"/v?([0-9][^/]*?)(?:-g[0-9a-f]+)?$")


def gen1_version(fw: str | None) -> str | None:
    """The version of a Gen1 firmware id: ``20230913-113421/v1.14.0-gcb84623`` → ``1.14.0``
    (the text as it is when it has no such shape)."""
    if not fw:
        return None
    found = _GEN1_VERSION.search(fw)
    return found.group(1) if found else fw


class Gen1Http:
    """A Gen1 device's HTTP API for firmware, on a caller-owned ``session``; every request is
    bounded by ``timeout`` and its errors come out as the :class:`DeviceError` family."""

    def __init__(
        self,
        device: str,
        address: str,
        *,
        session: aiohttp.ClientSession,
        password: str | None,
        timeout: float,
    ) -> None:
        host, port = split_address(address)
        self.device = device
        self.base = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        self.session = session
        self.auth = aiohttp.BasicAuth(GEN1_USER, password) if password is not None else None
        self.timeout = timeout

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """``GET <path>`` as JSON."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.get(
                    self.base + path, params=params, auth=self.auth
                ) as resp:
                    if resp.status == 401:
                        raise InvalidAuthError(
                            self.device, f"GET {path}: the device wants its password (HTTP 401)"
                        )
                    if resp.status >= 400:
                        raise DeviceError(self.device, f"GET {path} answered HTTP {resp.status}")
                    body = await resp.json(content_type=None)
        except TimeoutError as err:
            raise DeviceTimeoutError(
                self.device,
                f"GET {path}: no answer within {self.timeout:g} s",
                seconds=self.timeout,
            ) from err
        except (aiohttp.ClientError, OSError) as err:
            raise DeviceConnectionError(
                self.device, f"GET {path}: {err or type(err).__name__}"
            ) from err
        except ValueError as err:
            raise DeviceError(self.device, f"GET {path}: not JSON ({err})") from err
        if not isinstance(body, dict):
            raise DeviceError(self.device, f"GET {path}: not a JSON object")
        return body

    async def offers(self) -> Offers:
        """``/shelly`` (model) and ``/status``'s ``update``."""
        shelly = await self.get("/shelly")
        update = (await self.get("/status")).get("update")
        update = update if isinstance(update, dict) else {}
        current = gen1_version(_text(update.get("old_version")) or _text(shelly.get("fw")))
        new = gen1_version(_text(update.get("new_version")))
        beta = gen1_version(_text(update.get("beta_version")))
        return Offers(
            model=_text(shelly.get("type")),
            gen=1,
            current=current,
            stable=new if update.get("has_update") and new != current else None,
            beta=beta if beta is not None and beta != current else None,
        )

    async def update(
        self,
        *,
        stage: str,
        before: str | None,
        target: str,
        timeout: float,
        poll_s: float = POLL_S,
        tell: Tell | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> OtaResult:
        """``GET /ota?update=true`` (stable) or ``/ota?beta=true``, then ``/status`` polled until
        the running firmware is ``target`` (module doc), at most ``timeout`` seconds."""
        say = tell or (lambda state, detail: None)
        params = {"beta": "true"} if check_stage(stage) == "beta" else {"update": "true"}
        await self.get("/ota", params)
        say("updating", None)
        deadline = clock() + timeout
        seen, busy = before, False
        while True:
            await asyncio.sleep(min(poll_s, max(0.0, deadline - clock())))
            try:
                update = (await self.get("/status")).get("update")
            except (DeviceConnectionError, DeviceTimeoutError):
                busy = True  # rebooting into the new firmware, most likely
                say("rebooting", None)
                update = None
            if isinstance(update, dict):
                seen = gen1_version(_text(update.get("old_version"))) or seen
                status = update.get("status")
                if seen == target:
                    return OtaResult(True, seen)
                if seen != before:
                    return OtaResult(False, seen, f"installed {seen}, expected {target}")
                if status in ("pending", "updating"):
                    busy = True
                elif busy and status == "idle":
                    return OtaResult(
                        False, seen, f"the update ended with the device still on {seen}"
                    )
            if clock() >= deadline:
                return OtaResult(
                    False,
                    seen,
                    f"timeout: still on {seen or 'an unknown version'} {timeout:g} s after "
                    f"GET /ota (expected {target})",
                )


def reason_of(err: KilowatchError) -> str:
    """How a report words an error: its text, without the device id it starts with."""
    text = str(err)
    if isinstance(err, DeviceError) and text.startswith(f"{err.device}: "):
        text = text[len(err.device) + 2 :]
    return text


__all__ = [
    "GEN1_USER",
    "POLL_S",
    "STAGES",
    "Gen1Http",
    "Offers",
    "OtaResult",
    "Tell",
    "check_stage",
    "gen1_version",
    "read_offers",
    "reason_of",
    "update_gen2",
]
