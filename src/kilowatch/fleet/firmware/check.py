"""``kilowatch fleet firmware check``: what each device runs and is offered (docs/fleet.md).

Devices are reached as :mod:`kilowatch.fleet.apply` reaches them: Gen2+ through an
:data:`~kilowatch.fleet.apply.Opener` (by default :func:`kilowatch.fleet.registry.open_rpc`, on
the LAN with the password from the secrets file, or over the broker), Gen1 (``gen`` 1, on the
LAN) over HTTP as aioshelly's block device does (:mod:`kilowatch.fleet.firmware.ota`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from kilowatch.errors import FleetError, KilowatchError
from kilowatch.fleet.apply import CONCURRENCY, Opener
from kilowatch.fleet.firmware.ota import Gen1Http, read_offers, reason_of
from kilowatch.fleet.registry import open_rpc
from kilowatch.fleet.rpc.lan import lan_session
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.store.protocol import Batch, DeviceUpdate, Registration, Store

CHECK_TIMEOUT_S = 10.0
"""Bound of each read of a check (a device on a busy Wi-Fi answers in well under a second)."""


# --- check --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareStatus:
    """One device's firmware, as :func:`check_firmware` read it: ``current`` version, the
    ``stable`` and ``beta`` versions offered (``None``: nothing newer), or the ``error`` that kept
    it from being read (``error_type``: ``DeviceConnectionError`` and ``DeviceTimeoutError``
    mean offline, ``InvalidAuthError`` a password kilowatch lacks)."""

    device: str
    model: str | None = None
    gen: int | None = None
    current: str | None = None
    stable: str | None = None
    beta: str | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def offline(self) -> bool:
        """Whether it could not be reached (as opposed to refusing)."""
        return self.error_type in ("DeviceConnectionError", "DeviceTimeoutError")

    def offer(self, stage: str) -> str | None:
        """The version ``stage`` offers it (``None``: nothing newer, or not read)."""
        return self.stable if stage == "stable" else self.beta if stage == "beta" else None

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "model": self.model,
            "gen": self.gen,
            "current": self.current,
            "stable": self.stable,
            "beta": self.beta,
            "error": self.error,
            "error_type": self.error_type,
        }


@dataclass(slots=True)
class Reach:
    """How the devices are reached: Gen2+ through ``opener``, Gen1 over ``session``."""

    opener: Opener
    session: aiohttp.ClientSession
    secrets: SecretBox | None

    async def gen1(self, reg: Registration, timeout: float) -> Gen1Http:
        if reg.address is None:
            raise FleetError(reg.device, "a Gen1 device is reached on the LAN: it has no address")
        password = None
        if self.secrets is not None:
            held = await asyncio.to_thread(self.secrets.get, reg.credentials or reg.device)
            password = held.device_password if held is not None else None
        return Gen1Http(
            reg.device, reg.address, session=self.session, password=password, timeout=timeout
        )


@asynccontextmanager
async def reach_devices(
    *,
    secrets: SecretBox | None,
    mqtt: MqttRpc | None,
    session: aiohttp.ClientSession | None,
    opener: Opener | None,
) -> AsyncIterator[Reach]:
    own = session is None
    http = lan_session() if session is None else session
    try:
        if opener is None:

            def default(reg: Registration) -> AbstractAsyncContextManager[Any]:
                return open_rpc(reg, secrets=secrets, session=http, mqtt=mqtt)

            opener = default
        yield Reach(opener, http, secrets)
    finally:
        if own:
            await http.close()


async def _read(reach: Reach, reg: Registration, timeout: float) -> FirmwareStatus:
    try:
        if reg.gen == 1:
            offers = await (await reach.gen1(reg, timeout)).offers()
        else:
            async with reach.opener(reg) as rpc:
                offers = await read_offers(rpc, timeout=timeout)
    except KilowatchError as err:
        return FirmwareStatus(
            reg.device,
            model=reg.model,
            gen=reg.gen,
            current=reg.fw_ver,
            error=reason_of(err),
            error_type=type(err).__name__,
        )
    return FirmwareStatus(
        reg.device,
        model=offers.model or reg.model,
        gen=offers.gen if offers.gen is not None else reg.gen,
        current=offers.current,
        stable=offers.stable,
        beta=offers.beta,
    )


async def read_all(
    reach: Reach, registrations: Sequence[Registration], concurrency: int, timeout: float
) -> list[FirmwareStatus]:
    limit = asyncio.Semaphore(max(1, concurrency))

    async def one(reg: Registration) -> FirmwareStatus:
        async with limit:
            return await _read(reach, reg, timeout)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(reg)) for reg in registrations]
    return [t.result() for t in tasks]


async def check_firmware(
    store: Store | None,
    registrations: Sequence[Registration],
    *,
    secrets: SecretBox | None,
    mqtt: MqttRpc | None,
    concurrency: int = CONCURRENCY,
    timeout_s: float = CHECK_TIMEOUT_S,
    session: aiohttp.ClientSession | None = None,
    opener: Opener | None = None,
) -> list[FirmwareStatus]:
    """Every registration's firmware, in the order given (see :class:`FirmwareStatus`); never
    raises for one device. At most ``concurrency`` devices are read at once, each call bounded
    by ``timeout_s``.

    ``secrets``: the device passwords (kilowatch's secrets file); ``mqtt``: the broker connection
    for devices registered with transport ``mqtt`` (``None``: they are reported unreachable);
    ``session``: an aiohttp session to share (else one is made and closed); ``opener``: how
    Gen2+ devices are reached (default :func:`~kilowatch.fleet.registry.open_rpc`). With a
    ``store``, what was read is kept: the registry's ``fw_ver`` and the device record's
    ``fw_ver`` and ``available_update`` (the stable offer, ``""`` when none).
    """
    async with reach_devices(secrets=secrets, mqtt=mqtt, session=session, opener=opener) as reach:
        found = await read_all(reach, registrations, concurrency, timeout_s)
    if store is not None:
        await _remember(store, found)
    return found


async def _remember(store: Store, found: Sequence[FirmwareStatus]) -> None:
    """The registry's ``fw_ver`` and the device records' ``fw_ver`` / ``available_update`` of
    the devices read (values: writing them again changes nothing)."""
    read = [s for s in found if s.error is None and s.current is not None]
    if not read:
        return
    await store.register([Registration(device=s.device, fw_ver=s.current) for s in read])
    await store.commit(
        Batch(
            devices=[
                DeviceUpdate(s.device, fw_ver=s.current, available_update=s.stable or "")
                for s in read
            ]
        )
    )


__all__ = [
    "CHECK_TIMEOUT_S",
    "FirmwareStatus",
    "Reach",
    "check_firmware",
    "reach_devices",
    "read_all",
]
