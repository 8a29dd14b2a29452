"""Adopt: from a new device to metering in one command (issue 11, "Adopt").

:func:`adopt` takes registered devices (what discovery found) and, for each, does what an installer
would do by hand, in the one order that is safe to repeat after a crash at any point:

1. **connect**: ``Shelly.GetDeviceInfo`` (open even on a device with a password) must name the
   registered id and says whether the device wants a password; the saved one and then the one
   given (``password``) are tried.
2. **credentials**: its MQTT user on the managed mosquitto and, with ``set_password``, a device
   password. They are decided for every device at the start from one read of the store and the
   secrets file, and written only for devices that answered, so an unreachable device that
   already logs in with a user kilowatch lost the password of (made by hand with ``kilowatch
   broker user add``) keeps working. The passwords are saved in the owner-only secrets file
   *first*, then the users in the store, then the broker reloads them; devices reaching this
   step together share one read and one write of the credentials
   (:func:`~kilowatch.broker.credentials.add_devices`) and one reload. A device is never told a
   password that is not saved, and a user that a device already logs in with is kept: a second
   run finds the saved password matches the stored hash and changes nothing. A run that crashed
   in between finds a saved password the broker does not know, or the other way round, and
   replaces it before the device is told.
3. **tls** (``tls``): the CA of kilowatch's broker, ``Shelly.PutUserCA``, unless the device
   records that it holds it (:func:`~kilowatch.fleet.tlsmaterial.ensure_material`).
4. **mqtt**: ``MQTT.SetConfig`` (server, user, password, prefix, ``ssl_ca``, ``rpc_ntf``,
   ``status_ntf``).
5. **auth** (``set_password``): ``Shelly.SetAuth`` with the saved device password.
6. **reboot** when the device says ``restart_required``, and wait (bounded) until it is back: its
   uptime starts again, or it was seen down and answers again.
7. **publish**: ``MQTT.GetStatus`` says connected; **store**: a counter of the device was
   committed to the store after the adoption started (the running ``kilowatch serve``'s intake
   put it there; see :class:`_StoreWatch`).
8. **register**: the registry entry (transport, prefix, credentials reference, ``adopted_at``).

A device whose MQTT config is already what it should be, with the kept credentials, connected and
with its password in place is *already adopted*: nothing is written to it (its energy is still
checked). Each device's outcome is one :class:`DeviceResult`; one device failing never stops the
others.

RPC goes through an injected :data:`Opener`, so the same code runs on the LAN transport, in tests
and in benches.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from kilowatch.broker.credentials import (
    DeviceKind,
    NewUser,
    accepts,
    add_devices,
    check_device_id,
    check_prefix,
    credentials,
    generate_password,
    rotate_devices,
)
from kilowatch.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceTimeoutError,
    FleetError,
    InvalidAuthError,
    KilowatchError,
)
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.fleet.tlsmaterial import TlsMaterial, ensure_material, material_on_device
from kilowatch.store.audit import audited
from kilowatch.store.protocol import Registration, Store

DEFAULT_WAIT_S = 60.0
"""How long a device may take, after it was configured, to come back from its reboot, connect to
the broker and have its energy stored. A real Shelly boots in 5-10 s and publishes its counters
at its next minute rollover at the latest, so a minute covers it."""
DEFAULT_CONCURRENCY = 64
"""Devices adopted at once. Each takes a few RPC calls and then mostly waits (reboot, broker,
store), so many overlap well: 500 simulated devices took 17 s at 64, 12 s at 128, on the 2-core
development machine running the simulator, mosquitto and serve too."""
REBOOT_DELAY_MS = 1000
"""``Shelly.Reboot``'s ``delay_ms``: the firmware's default, time for the answer to get out."""
POLL_S = 0.25
"""Between two looks at a rebooting device, its MQTT status, or the store."""
STORE_POLL_S = 0.5
"""Between two looks at the store for the devices' energy (one look serves every device)."""
POLL_CALL_S = 3.0
"""Bound of one call while polling a device that may be rebooting (a down device often does not
answer at all rather than refuse)."""
AUTH_USER = "admin"
"""Shelly's digest auth user: always ``admin`` (shelly-api.md §5)."""
USER_CA = "user_ca.pem"
"""``ssl_ca`` value for the CA uploaded with ``Shelly.PutUserCA`` (§7.1, §16)."""
MIN_GEN = 2
"""Gen1 devices have no RPC: they are configured over their own HTTP API, not adopted here."""


class Outcome(StrEnum):
    ADOPTED = "adopted"
    """Configured now and confirmed: publishing, energy in the store, registered."""
    ALREADY = "already-adopted"
    """Nothing needed changing on the device; confirmed publishing and registered."""
    FAILED = "failed"
    """Stopped at :attr:`DeviceResult.step` with :attr:`DeviceResult.error`."""


class Step(StrEnum):
    """The steps of one adoption, in order; a failure names the one it stopped at."""

    CHECK = "check"
    CONNECT = "connect"
    CREDENTIALS = "credentials"
    TLS = "tls"
    MQTT = "mqtt"
    AUTH = "auth"
    REBOOT = "reboot"
    PUBLISH = "publish"
    STORE = "store"
    REGISTER = "register"


Opener = Callable[[Registration, str | None], Awaitable[ShellyRpc]]
"""Opens RPC to a registered device with a device password (``None``: none). Raises
:class:`DeviceConnectionError` when it cannot reach it; the caller closes the result."""
Reload = Callable[[], Awaitable[object]]
"""Makes the running broker load the credentials just written (``reload_running``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptOptions:
    server: str
    """``host:port`` the devices connect to (an address they can reach: not kilowatch's loopback
    unless they run on this machine)."""
    tls: TlsMaterial | None = None
    """The CA that signed the broker's certificate (``load_material(ca=...)``): given, devices
    get it with ``Shelly.PutUserCA`` (unless they hold it already) and connect over TLS
    (``server`` is then the TLS port)."""
    set_password: bool = False
    """Give each device a password (``Shelly.SetAuth``) kept in the secrets file; a device that
    has one kept keeps it."""
    password: str | None = None
    """The password devices have now when the secrets file has none for them (the owner's)."""
    wait_s: float = DEFAULT_WAIT_S
    concurrency: int = DEFAULT_CONCURRENCY
    reboot_delay_ms: int = REBOOT_DELAY_MS


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """How one device's adoption ended."""

    device: str
    outcome: Outcome
    step: Step | None = None
    """The step it failed at (``None`` unless failed)."""
    error: str | None = None
    error_type: str | None = None
    """The error's class name (``InvalidAuthError``, ``DeviceConnectionError``...)."""
    changed: tuple[str, ...] = ()
    """What was done, in order: ``device-password`` (made), ``credentials``, ``tls``,
    ``mqtt``, ``auth``, ``reboot``."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome is not Outcome.FAILED

    def to_json(self) -> dict[str, Any]:
        """The per-device entry of the ``--json`` report (no secret in it)."""
        return {
            "device": self.device,
            "outcome": self.outcome.value,
            "step": None if self.step is None else self.step.value,
            "error": self.error,
            "error_type": self.error_type,
            "changed": list(self.changed),
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class _Plan:
    """What was decided for one device at the start (see :func:`_decide`)."""

    reg: Registration
    prefix: str
    broker_password: str = ""
    device_password: str | None = None
    """The password the device should have (set_password), or the one kept for it."""
    changed: list[str] = field(default_factory=list)
    adopted_at: float | None = None
    """When the registry says it was adopted (``None``: never)."""
    user: str | None = None
    """``add`` or ``rotate`` when its broker user must be written, else ``None`` (kept)."""
    save: bool = False
    """Whether its secrets must be written (new broker or device password)."""


# --- the whole run --------------------------------------------------------------------------------


async def adopt(
    store: Store,
    registrations: Sequence[Registration],
    *,
    opener: Opener,
    secrets_box: SecretBox,
    options: AdoptOptions,
    reload: Reload,
    on_result: Callable[[DeviceResult], None] | None = None,
    clock: Callable[[], float] = time.time,
    actor: str | None = None,
) -> list[DeviceResult]:
    """Adopt ``registrations`` (see the module doc); one :class:`DeviceResult` per device, in
    the order given. ``on_result`` is told each one as it ends (progress).

    ``actor`` (``cli:<os user>``...): the run is audited as ``fleet.adopt`` (result ``ok``,
    ``partial`` or ``failed``, with the counts of each outcome), and each write of broker users
    as ``credentials.add`` / ``credentials.rotate``; ``None`` records nothing."""

    async def run() -> list[DeviceResult]:
        return await _adopt(
            store, registrations, opener=opener, secrets_box=secrets_box, options=options,
            reload=reload, on_result=on_result, clock=clock, actor=actor,
        )  # fmt: skip

    if actor is None:
        return await run()
    devices = [reg.device for reg in registrations]
    async with audited(store, actor, "fleet.adopt", devices=devices) as act:
        results = await run()
        failed = sum(not r.ok for r in results)
        act.result = "ok" if not failed else "failed" if failed == len(results) else "partial"
        act.detail = {o.value: sum(r.outcome is o for r in results) for o in Outcome}
    return results


async def _adopt(
    store: Store,
    registrations: Sequence[Registration],
    *,
    opener: Opener,
    secrets_box: SecretBox,
    options: AdoptOptions,
    reload: Reload,
    on_result: Callable[[DeviceResult], None] | None,
    clock: Callable[[], float],
    actor: str | None,
) -> list[DeviceResult]:
    started = clock()
    results: dict[str, DeviceResult] = {}

    def done(result: DeviceResult) -> None:
        results[result.device] = result
        if on_result is not None:
            on_result(result)

    plans: list[_Plan] = []
    for reg in registrations:
        try:
            plans.append(_checked(reg))
        except KilowatchError as err:  # one odd record must not stop the others' credentials
            done(_failure(reg.device, Step.CHECK, err, 0.0))
    try:
        stored = {r.device: r.adopted_at for r in await store.registry()}
        for plan in plans:
            plan.adopted_at = stored.get(plan.reg.device)
        await _decide(store, plans, secrets_box, options)
    except KilowatchError as err:
        for plan in plans:
            done(_failure(plan.reg.device, Step.CREDENTIALS, err, clock() - started))
        plans = []
    if plans:
        watch = _StoreWatch(store)
        registrar = _Registrar(store)
        writer = _CredentialWriter(store, secrets_box, reload, clock, actor)
        await watch.snapshot()
        limit = asyncio.Semaphore(max(1, options.concurrency))

        async def one(plan: _Plan) -> None:
            async with limit:
                t0 = clock()
                ctx = _Device(plan, opener, options, writer, watch, registrar)
                try:
                    outcome = await ctx.run(clock)
                except KilowatchError as err:
                    done(_failure(plan.reg.device, ctx.step, err, clock() - t0))
                else:
                    done(DeviceResult(plan.reg.device, outcome, changed=tuple(plan.changed),
                                      seconds=clock() - t0))  # fmt: skip

        async with asyncio.TaskGroup() as tg:
            tg.create_task(watch.run())
            try:
                async with asyncio.TaskGroup() as devices:
                    for plan in plans:
                        devices.create_task(one(plan))
            finally:
                watch.stop()
    return [results[reg.device] for reg in registrations if reg.device in results]


def _checked(reg: Registration) -> _Plan:
    if reg.gen is not None and reg.gen < MIN_GEN:
        raise FleetError(reg.device, f"a Gen{reg.gen} device has no RPC to adopt it with")
    check_device_id(reg.device)
    return _Plan(reg, check_prefix(reg.prefix or reg.device, DeviceKind.SHELLY))


def _failure(device: str, step: Step, err: KilowatchError, seconds: float) -> DeviceResult:
    return DeviceResult(
        device, Outcome.FAILED, step=step, error=str(err), error_type=type(err).__name__,
        seconds=seconds,
    )  # fmt: skip


# --- credentials: decided at the start, written once a device answered -------------------------


async def _decide(
    store: Store, plans: Sequence[_Plan], box: SecretBox, options: AdoptOptions
) -> None:
    """Decide every device's broker password (the kept one if the broker accepts it, else a new
    one) and device password, from one read of the credentials and of the secrets file. Writes
    nothing (:class:`_CredentialWriter` does, device by device)."""
    records = await credentials(store)
    devices = [plan.reg.device for plan in plans]
    kept_secrets = await asyncio.to_thread(lambda: {d: box.get(d) for d in devices})
    for plan in plans:
        kept = kept_secrets[plan.reg.device]
        record = records.get(plan.reg.device)
        active = record is not None and not record.revoked
        if record is not None and active:
            plan.prefix = record.prefix  # its topics are the record's: keep what the ACL allows
        plan.device_password = kept.device_password if kept is not None else None
        broker = kept.broker_password if kept is not None else None
        if options.set_password and plan.device_password is None:
            plan.device_password = _new_device_password()
            plan.changed.append("device-password")
            plan.save = True
        if broker is not None and record is not None and accepts(record, broker):
            plan.broker_password = broker
        else:
            plan.broker_password = generate_password()
            plan.changed.append("credentials")
            plan.user = "rotate" if active else "add"
            plan.save = True


class _CredentialWriter:
    """Writes the credentials of devices that answered: secrets file, then store, then broker
    reload. Devices arriving while a write is under way share the next one (one read and one
    write of the credentials, one reload, however many devices)."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        reload: Reload,
        clock: Callable[[], float],
        actor: str | None = None,
    ) -> None:
        self.store = store
        self.actor = actor
        self.box = box
        self.reload = reload
        self.clock = clock
        self._pending: list[tuple[_Plan, asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()

    async def write(self, plan: _Plan) -> None:
        """Return once ``plan``'s secrets are saved and the broker knows its user."""
        if not plan.save:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((plan, future))
        async with self._lock:
            if not future.done():
                batch, self._pending = self._pending, []
                try:
                    await self._write([p for p, _ in batch])
                except KilowatchError as err:
                    for _, f in batch:
                        f.set_exception(err)
                except BaseException:
                    self._pending[:0] = [(p, f) for p, f in batch if f is not future]
                    raise
                else:
                    for _, f in batch:
                        f.set_result(None)
        await future

    async def _write(self, plans: Sequence[_Plan]) -> None:
        saved = {p.reg.device: DeviceSecrets(p.device_password, p.broker_password) for p in plans}
        await asyncio.to_thread(self.box.put_many, saved)
        added = [
            NewUser(device=p.reg.device, kind=DeviceKind.SHELLY, prefix=p.prefix,
                    password=p.broker_password)
            for p in plans if p.user == "add"
        ]  # fmt: skip
        rotated = {p.reg.device: p.broker_password for p in plans if p.user == "rotate"}
        now = self.clock()
        if added:
            async with self._audited("credentials.add", [u.device for u in added]):
                await add_devices(self.store, added, now=now)
        if rotated:
            async with self._audited("credentials.rotate", list(rotated)):
                await rotate_devices(self.store, rotated, now=now)
        if added or rotated:
            await self.reload()
        for p in plans:  # written: a retry of this device must not write them again
            p.user, p.save = None, False

    def _audited(self, action: str, devices: list[str]) -> AbstractAsyncContextManager[Any]:
        if self.actor is None:
            return nullcontext()
        return audited(self.store, self.actor, action, devices=devices, detail={"by": "adopt"})


def _new_device_password() -> str:
    return secrets.token_urlsafe(18)


def ha1(realm: str, password: str) -> str:
    """``Shelly.SetAuth``'s ``ha1``: SHA-256 of ``admin:<realm>:<password>`` (§5)."""
    return hashlib.sha256(f"{AUTH_USER}:{realm}:{password}".encode()).hexdigest()


def mqtt_config(*, server: str, user: str, prefix: str, tls: bool) -> dict[str, Any]:
    """The ``MQTT.SetConfig`` config a device gets (without ``pass``, which is write-only and
    cannot be compared): kilowatch's intake reads ``<prefix>/events/rpc`` (``rpc_ntf``) and
    ``<prefix>/status/<key>`` (``status_ntf``)."""
    return {
        "enable": True,
        "server": server,
        "user": user,
        "topic_prefix": prefix,
        "ssl_ca": USER_CA if tls else None,
        "rpc_ntf": True,
        "status_ntf": True,
    }


# --- phase 2: one device --------------------------------------------------------------------------


class _Device:
    """One device's steps 2-8."""

    def __init__(
        self,
        plan: _Plan,
        opener: Opener,
        options: AdoptOptions,
        writer: _CredentialWriter,
        watch: _StoreWatch,
        registrar: _Registrar,
    ) -> None:
        self.plan = plan
        self.reg = plan.reg
        self.device = plan.reg.device
        self.opener = opener
        self.writer = writer
        self.options = options
        self.watch = watch
        self.registrar = registrar
        self.password: str | None = None
        """The password the device accepts now (``None``: it has none)."""
        self.step = Step.CONNECT
        """The step under way (a failure names it)."""
        self._uptime = 0.0

    async def run(self, clock: Callable[[], float]) -> Outcome:
        """Steps 2-8; a :class:`KilowatchError` stops it at :attr:`step`."""
        self.step = Step.CONNECT
        self.rpc, info = await self._connect()
        try:
            self.step = Step.CREDENTIALS
            await self.writer.write(self.plan)
            self.step = Step.MQTT
            want = mqtt_config(
                server=self.options.server, user=self.device, prefix=self.plan.prefix,
                tls=self.options.tls is not None,
            )  # fmt: skip
            adopted = await self._is_adopted(info, want)
            if not adopted:
                await self._configure(info, want)
            deadline = asyncio.get_running_loop().time() + self.options.wait_s
            if "reboot" in self.plan.changed:
                self.step = Step.REBOOT
                await self._wait_back(deadline)
            self.step = Step.PUBLISH
            await self._wait_connected(deadline)
        finally:
            await self.rpc.close()
        self.step = Step.STORE
        await self.watch.wait(
            self.device, fresh=not adopted, deadline=deadline, wait_s=self.options.wait_s
        )
        self.step = Step.REGISTER
        now = clock()
        # already adopted: it keeps its date, unless it was set up by hand and is kilowatch's now
        await self._register(info, now, adopted_at=self.plan.adopted_at if adopted else now)
        return Outcome.ALREADY if adopted else Outcome.ADOPTED

    # -- 2. connect ------------------------------------------------------------------------------

    async def _connect(self) -> tuple[ShellyRpc, dict[str, Any]]:
        """RPC that the device accepts, and its ``Shelly.GetDeviceInfo``."""
        if not self.reg.address:
            raise DeviceConnectionError(
                self.device, "no LAN address is registered for it; run kilowatch fleet discover"
            )
        rpc = await self.opener(self.reg, None)
        try:
            info = await rpc.get_device_info()
        except BaseException:
            await rpc.close()
            raise
        if info.get("id") != self.device:
            await rpc.close()
            raise DeviceError(
                self.device, f"{self.reg.address} answers as {info.get('id')!r}, not as this "
                "device; run kilowatch fleet discover to update its address",
            )  # fmt: skip
        if int(info.get("gen") or 0) < MIN_GEN:
            await rpc.close()
            raise FleetError(self.device, f"a Gen{info.get('gen')} device has no RPC to adopt")
        if not info.get("auth_en"):
            return rpc, info
        await rpc.close()
        return await self._authenticated(), info

    async def _authenticated(self) -> ShellyRpc:
        """RPC with the first password the device accepts: the kept one, then the given one."""
        candidates = [p for p in (self.plan.device_password, self.options.password) if p]
        candidates = list(dict.fromkeys(candidates))
        if not candidates:
            raise InvalidAuthError(
                self.device, "it has a password and none is kept for it; pass --password"
            )
        error: InvalidAuthError | None = None
        for password in candidates:
            rpc = await self.opener(self.reg, password)
            try:
                await rpc.sys_get_config()  # any protected call proves the password
            except InvalidAuthError as err:
                await rpc.close()
                error = err
                continue
            except BaseException:
                await rpc.close()
                raise
            self.password = password
            if not self.options.set_password and password != self.plan.device_password:
                # the owner's password works: keep it (step 2), so later commands reach it
                self.plan.device_password = password
                self.plan.save = True
            return rpc
        assert error is not None
        raise InvalidAuthError(
            self.device, f"refuses the {'password' if len(candidates) == 1 else 'passwords'} "
            "kept or given for it; pass the right one with --password",
        ) from error  # fmt: skip

    # -- what is on the device ---------------------------------------------------------------

    async def _is_adopted(self, info: Mapping[str, Any], want: dict[str, Any]) -> bool:
        """Whether nothing needs writing: the kept credentials, the config as wanted and in
        effect (connected, no restart pending), the device password in place."""
        if "credentials" in self.plan.changed or "device-password" in self.plan.changed:
            return False
        if self.options.set_password and not (
            info.get("auth_en") and self.password == self.plan.device_password
        ):
            return False
        tls = self.options.tls
        if tls is not None and await material_on_device(self.rpc) != tls.sha256:
            return False
        config = await self.rpc.mqtt_get_config()
        if any(config.get(k) != v for k, v in want.items()):
            return False
        if (await self.rpc.sys_get_status()).get("restart_required"):
            return False
        return bool((await self.rpc.mqtt_get_status()).get("connected"))

    # -- 3-6. configure --------------------------------------------------------------------------

    async def _configure(self, info: Mapping[str, Any], want: dict[str, Any]) -> None:
        """Steps 3-6 up to the reboot (a new :attr:`rpc` after SetAuth)."""
        rpc = self.rpc
        changed = self.plan.changed
        if self.options.tls is not None:
            self.step = Step.TLS
            if await ensure_material(rpc, self.options.tls):
                changed.append("tls")
        self.step = Step.MQTT
        restart = await rpc.mqtt_set_config({**want, "pass": self.plan.broker_password})
        changed.append("mqtt")
        target = self.plan.device_password
        if (
            self.options.set_password
            and target is not None
            and (not info.get("auth_en") or self.password != target)
        ):
            self.step = Step.AUTH
            await rpc.set_auth(self.device, ha1(self.device, target))
            changed.append("auth")
            await rpc.close()
            rpc = self.rpc = await self.opener(self.reg, target)
            self.password = target
        self.step = Step.REBOOT
        status = await rpc.sys_get_status()
        if restart or status.get("restart_required"):
            self._uptime = float(status.get("uptime") or 0)
            await rpc.reboot(self.options.reboot_delay_ms)
            changed.append("reboot")

    # -- 6-7. wait -------------------------------------------------------------------------------

    async def _wait_back(self, deadline: float) -> None:
        """Until the device answers again after its reboot: its uptime started again, or it was
        seen down and answers now."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.options.reboot_delay_ms / 1000)
        seen_down = False
        while True:
            try:
                status = await self._poll("Sys.GetStatus")
            except (DeviceConnectionError, DeviceTimeoutError):
                seen_down = True
            else:
                if seen_down or float(status.get("uptime") or 0) < self._uptime:
                    return
            if loop.time() > deadline:
                raise DeviceTimeoutError(
                    self.device, f"not back from its reboot within {self.options.wait_s:g} s "
                    "(--wait)", seconds=self.options.wait_s,
                )  # fmt: skip
            await asyncio.sleep(POLL_S)

    async def _wait_connected(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                status = await self._poll("MQTT.GetStatus")
            except (DeviceConnectionError, DeviceTimeoutError):
                status = {}
            if status.get("connected"):
                return
            if loop.time() > deadline:
                raise DeviceTimeoutError(
                    self.device, f"not connected to {self.options.server} within "
                    f"{self.options.wait_s:g} s (--wait); check that it can reach that address",
                    seconds=self.options.wait_s,
                )  # fmt: skip
            await asyncio.sleep(POLL_S)

    async def _poll(self, method: str) -> dict[str, Any]:
        # the transport reconnects by itself after the reboot dropped its connection
        return dict(await self.rpc.call(method, timeout=POLL_CALL_S))

    # -- 8. register -----------------------------------------------------------------------------

    async def _register(
        self, info: Mapping[str, Any], now: float, *, adopted_at: float | None
    ) -> None:
        reg = replace(
            self.reg, mac=_str(info.get("mac")), model=_str(info.get("model")),
            gen=int(info["gen"]) if info.get("gen") is not None else None,
            fw_ver=_str(info.get("ver")), app=_str(info.get("app")), transport="lan",
            prefix=self.plan.prefix, credentials=self.device,
            adopted_at=now if adopted_at is None else adopted_at, seen_at=now, script=None,
        )  # fmt: skip
        await self.registrar.register(reg)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# --- the store: has the device's energy arrived? ------------------------------------------------


class _Registrar:
    """Registers devices in as few ``store.register`` calls as there are moments they finish:
    whoever ends while a call is in flight goes into the next one (hundreds of devices ending
    together would otherwise queue one store write each)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[Registration, asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()

    async def register(self, reg: Registration) -> None:
        """Return once ``reg`` is stored; the store's error if the call holding it failed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((reg, future))
        async with self._lock:
            if not future.done():
                batch, self._pending = self._pending, []
                try:
                    await self.store.register([r for r, _ in batch])
                except KilowatchError as err:
                    for _, f in batch:
                        f.set_exception(err)
                except BaseException:
                    # cancelled: the others were not stored, the next holder takes them
                    self._pending[:0] = [(r, f) for r, f in batch if f is not future]
                    raise
                else:
                    for _, f in batch:
                        f.set_result(None)
        await future


class _StoreWatch:
    """Answers "has the energy of this device reached the store" for many devices with one look
    at the store per :data:`STORE_POLL_S`, however many wait.

    Energy has reached the store when the ledger state of one of the device's channels was
    committed (kilowatch's intake saves it with every counter reading it accounts, in the same
    commit as the energy), or when its latest reading carries a counter. The latest reading alone
    would not do: a power-only reading replaces it, and its writes are throttled. A device being
    adopted must show a state or counter reading newer than the ones stored when the run began.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._states: dict[tuple[str, str], dict[str, Any]] = {}
        self._readings: dict[tuple[str, str], float] = {}
        self._waiting: dict[str, list[tuple[bool, asyncio.Future[None]]]] = {}
        self._wake = asyncio.Event()
        self._stopped = False

    async def snapshot(self) -> None:
        """Remember what is stored now: a device adopted now must show something newer."""
        self._states = await self.store.load_ledger_states()
        self._readings = {(r.device, r.channel): r.ts for r in await self.store.latest()
                          if r.energy_wh is not None}  # fmt: skip

    async def wait(self, device: str, *, fresh: bool, deadline: float, wait_s: float) -> None:
        """Until the device's energy is in the store (``fresh``: newer than the snapshot);
        :class:`DeviceTimeoutError` at ``deadline`` (loop time)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (fresh, future)
        self._waiting.setdefault(device, []).append(waiter)
        self._wake.set()
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except TimeoutError:
            raise DeviceTimeoutError(
                device, f"connected, but none of its energy reached the store within "
                f"{wait_s:g} s (--wait); check that kilowatch serve runs on this store and "
                "reads its topics", seconds=wait_s,
            ) from None  # fmt: skip
        finally:
            waiters = self._waiting.get(device, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiting.pop(device, None)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopped:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                seen, fresh = await self._look()
            except KilowatchError:
                seen, fresh = set(), set()  # the store may be busy; the waiters' deadlines bound it
            for device in seen & set(self._waiting):
                for wants_fresh, future in self._waiting[device]:
                    if not future.done() and (not wants_fresh or device in fresh):
                        future.set_result(None)
            await asyncio.sleep(STORE_POLL_S)

    async def _look(self) -> tuple[set[str], set[str]]:
        """Devices with energy in the store, and those with energy newer than the snapshot."""
        seen: set[str] = set()
        fresh: set[str] = set()
        for key, state in (await self.store.load_ledger_states()).items():
            seen.add(key[0])
            if self._states.get(key) != state:
                fresh.add(key[0])
        for r in await self.store.latest():
            if r.energy_wh is not None:
                seen.add(r.device)
                before = self._readings.get((r.device, r.channel))
                if before is None or r.ts > before:
                    fresh.add(r.device)
        return seen, fresh


__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_WAIT_S",
    "AdoptOptions",
    "DeviceResult",
    "Opener",
    "Outcome",
    "Reload",
    "Step",
    "adopt",
    "ha1",
    "mqtt_config",
]
