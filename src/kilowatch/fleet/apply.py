"""Apply: make many devices match a profile, a bounded number at a time, and report per device.

For each device :func:`apply_fleet` reads its plan (:func:`~kilowatch.fleet.plan.read_plan`) and
runs the steps it needs, in this order: TLS material, then the MQTT config that points at it,
system, scripts, the device password last (so no earlier step needs the new one; the steps after
it open a new connection with it), one reboot when an answer said ``restart_required`` (waiting,
bounded, until the device answers again), and a verification: a new plan that must be empty.

A device that cannot be reached or does not answer (``DeviceConnectionError``,
``DeviceTimeoutError``) is tried again after a jittered exponential backoff; every attempt starts
from a fresh plan, so it only does what is still missing. Any other error (the device refused a
call, a wrong password, a script too large, a bad profile) fails that device at once; the others
go on. A device already matching is ``unchanged`` and receives no write at all, so a second apply
changes nothing.

Devices are reached through an injected :data:`Opener` (``kilowatch.fleet.registry.open_rpc`` in
production), and progress is told to a :class:`Progress` (the CLI draws a Rich bar from it).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from kilowatch.errors import (
    DeviceConnectionError,
    DeviceTimeoutError,
    FleetError,
    KilowatchError,
)
from kilowatch.fleet.plan import (
    MQTT_PASS_KEY,
    Change,
    DevicePlan,
    ErrorInfo,
    Passwords,
    Step,
    failed_plan,
    mqtt_pass_fingerprint,
    read_plan,
)
from kilowatch.fleet.profile import AuthMode, Profile
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.scriptdeploy import deploy_script
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.fleet.tlsmaterial import upload_material
from kilowatch.store.protocol import DeployedScript, Registration

Opener = Callable[[Registration], AbstractAsyncContextManager[ShellyRpc]]
"""Gives an open :class:`ShellyRpc` to a registered device (closed on exit), using the password
kilowatch holds for it at that moment."""

CONCURRENCY = 32
"""Devices worked on at once by default: enough to hide each device's round trips, few enough
for a home router and the machine kilowatch runs on."""
RETRYABLE = (DeviceConnectionError, DeviceTimeoutError)
"""Errors worth another attempt: the device may be back in a moment. A refused call, a wrong
password or a bad profile would fail the same way again."""
GENERATED_PASSWORD_BYTES = 18
"""``secrets.token_urlsafe`` bytes of a generated device password (24 characters)."""
REALM_USER = "admin"
"""The only user Shelly digest auth knows (§5)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempts per device and the waits between them: ``base_s × 2^n`` capped at ``cap_s``,
    of which a random half is waited ("equal jitter", so devices that failed together do not
    come back together)."""

    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + rand() * ceiling / 2


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    """How :func:`apply_fleet` runs. ``reboot_timeout_s`` bounds the wait for a rebooted device
    to answer again; ``reboot_delay_ms`` is passed to ``Shelly.Reboot`` (the firmware's minimum
    is 500)."""

    concurrency: int = CONCURRENCY
    dry_run: bool = False
    retry: Backoff = field(default_factory=Backoff)
    reboot_delay_ms: int = 500
    reboot_timeout_s: float = 60.0
    reboot_poll_s: float = 0.25
    poll_call_timeout_s: float = 2.0


class Status(Enum):
    """A device's outcome in the report."""

    OK = "ok"
    """Changed, and verified."""
    UNCHANGED = "unchanged"
    """Already matched: nothing was written."""
    FAILED = "failed"
    PLANNED = "planned"
    """``--dry-run`` only: it would be changed."""


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One device in the report: ``steps`` done (for a dry run: the steps it would run),
    ``changes`` found by the first plan, ``notices`` (firmware drift this command does not fix),
    the ``error`` that failed it, wall ``seconds`` and ``attempts``."""

    device: str
    status: Status
    steps: tuple[str, ...] = ()
    changes: tuple[Change, ...] = ()
    notices: tuple[str, ...] = ()
    error: ErrorInfo | None = None
    seconds: float = 0.0
    attempts: int = 0
    scripts: tuple[DeployedScript, ...] = ()
    """The scripts deployed to it by this run (for the registry's ``script`` record)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "status": self.status.value,
            "steps": list(self.steps),
            "changes": [c.to_json() for c in self.changes],
            "notices": list(self.notices),
            "error": None if self.error is None else self.error.to_json(),
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
            "scripts": [
                {"name": d.name, "version": d.version, "sha256": d.sha256, "id": d.script_id}
                for d in self.scripts
            ],
        }


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """The outcome of one apply (or dry run): a result per device, in the order given."""

    profile: str
    dry_run: bool
    devices: tuple[DeviceResult, ...]
    seconds: float

    def count(self, status: Status) -> int:
        return sum(1 for d in self.devices if d.status is status)

    @property
    def failed(self) -> bool:
        """Whether any device failed (the CLI then exits 1)."""
        return any(d.status is Status.FAILED for d in self.devices)

    def summary(self) -> dict[str, int]:
        out = {"devices": len(self.devices)}
        out.update({s.value: self.count(s) for s in Status})
        return out

    def to_json(self) -> dict[str, Any]:
        """The report as written by ``--report FILE.json`` (docs/profiles.md)."""
        return {
            "profile": self.profile,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
            "devices": [d.to_json() for d in self.devices],
        }


class Progress(Protocol):
    """Told what happens, device by device (the CLI draws a progress bar from it)."""

    def started(self, device: str) -> None: ...

    def step(self, device: str, step: str) -> None:
        """``step``: ``plan``, a :class:`Step` value, ``verify``, ``retry N``."""
        ...

    def finished(self, device: str, status: Status) -> None: ...


class NoProgress:
    """A :class:`Progress` that ignores everything."""

    def started(self, device: str) -> None:
        pass

    def step(self, device: str, step: str) -> None:
        pass

    def finished(self, device: str, status: Status) -> None:
        pass


def notices(plan: DevicePlan) -> tuple[str, ...]:
    """The advisory changes of a plan, as the report words them."""
    out = []
    for change in plan.changes:
        if change.step is not Step.FIRMWARE:
            continue
        wanted = str(change.desired)
        if wanted.startswith(">= "):
            out.append(
                f"firmware {change.actual} below minimum {wanted[3:]}: "
                "use kilowatch fleet firmware update"
            )
        else:
            out.append(
                f"firmware {change.actual}, {wanted} offered: use kilowatch fleet firmware update"
            )
    return tuple(out)


# --- plan over a fleet ----------------------------------------------------------------------


async def plan_fleet(
    profile: Profile,
    targets: Sequence[Registration],
    opener: Opener,
    *,
    passwords: Passwords,
    concurrency: int = CONCURRENCY,
    progress: Progress | None = None,
) -> list[DevicePlan]:
    """The plan of every target, in the order given, reading at most ``concurrency`` devices at
    once. A device that cannot be read gets a plan with its ``error``; nothing is written."""
    tell = progress or NoProgress()
    limit = asyncio.Semaphore(max(1, concurrency))

    async def one(reg: Registration) -> DevicePlan:
        async with limit:
            tell.started(reg.device)
            tell.step(reg.device, "plan")
            try:
                async with opener(reg) as rpc:
                    plan = await read_plan(rpc, reg, profile, passwords=passwords)
            except KilowatchError as err:
                plan = failed_plan(reg, err)
            status = (
                Status.FAILED
                if plan.error is not None
                else Status.PLANNED
                if plan.pending
                else Status.UNCHANGED
            )
            tell.finished(reg.device, status)
            return plan

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(reg)) for reg in targets]
    return [t.result() for t in tasks]


# --- apply ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Device:
    """What one device's attempts have gathered so far."""

    reg: Registration
    steps: list[str] = field(default_factory=list)
    first: DevicePlan | None = None
    attempts: int = 0
    scripts: list[DeployedScript] = field(default_factory=list)


class _Engine:
    def __init__(
        self,
        profile: Profile,
        opener: Opener,
        passwords: Passwords,
        options: ApplyOptions,
        progress: Progress,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.profile = profile
        self.opener = opener
        self.passwords = passwords
        self.options = options
        self.tell = progress
        self.sleep = sleep
        self.clock = clock

    async def device(self, reg: Registration) -> DeviceResult:
        """Every attempt at one device, to its result; never raises a KilowatchError."""
        began = self.clock()
        state = _Device(reg)
        self.tell.started(reg.device)
        retry = self.options.retry
        while True:
            state.attempts += 1
            try:
                status = await self._attempt(state)
                error = None
                break
            except RETRYABLE as err:
                if state.attempts >= retry.attempts:
                    status, error = Status.FAILED, ErrorInfo.of(err)
                    break
                self.tell.step(reg.device, f"retry {state.attempts}")
                await self.sleep(retry.delay(state.attempts))
            except KilowatchError as err:
                status, error = Status.FAILED, ErrorInfo.of(err)
                break
        self.tell.finished(reg.device, status)
        first = state.first
        return DeviceResult(
            device=reg.device,
            status=status,
            steps=tuple(state.steps),
            changes=first.changes if first is not None else (),
            notices=notices(first) if first is not None else (),
            error=error,
            seconds=self.clock() - began,
            attempts=state.attempts,
            scripts=tuple(state.scripts),
        )

    async def _plan(self, rpc: ShellyRpc, reg: Registration) -> DevicePlan:
        return await read_plan(rpc, reg, self.profile, passwords=self.passwords)

    async def _attempt(self, state: _Device) -> Status:
        reg = state.reg
        self.tell.step(reg.device, "plan")
        async with self.opener(reg) as rpc:
            plan = await self._plan(rpc, reg)
            if state.first is None:
                state.first = plan
            if not plan.pending:
                if state.steps:
                    # An earlier attempt did the work and lost the device before verifying:
                    # this empty plan is the verification.
                    state.steps.append("verify")
                    return Status.OK
                return Status.PLANNED if state.first.pending else Status.UNCHANGED
            if self.options.dry_run:
                state.steps = [s.value for s in plan.steps]
                return Status.PLANNED
            restart = await self._steps(rpc, reg, plan, state)
        if restart:
            self.tell.step(reg.device, Step.REBOOT.value)
            await self._reboot(reg)
            state.steps.append(Step.REBOOT.value)
            # A reboot stops what does not start at boot (a script with enable = false): one
            # more pass puts it back before the verification.
            async with self.opener(reg) as rpc:
                again = await self._plan(rpc, reg)
                if again.pending:
                    await self._steps(rpc, reg, again, state)
        self.tell.step(reg.device, "verify")
        async with self.opener(reg) as rpc:
            after = await self._plan(rpc, reg)
        if after.pending:
            left = "; ".join(str(c) for c in after.pending)
            raise FleetError(reg.device, f"still differs after apply: {left}")
        state.steps.append("verify")
        return Status.OK

    async def _steps(
        self, rpc: ShellyRpc, reg: Registration, plan: DevicePlan, state: _Device
    ) -> bool:
        """Run the steps ``plan`` needs but the reboot; returns whether a reboot is due."""
        restart = False
        for step in plan.steps:
            if step is Step.REBOOT:
                restart = True
                continue
            self.tell.step(reg.device, step.value)
            restart |= await self._run(step, rpc, plan, state)
            state.steps.append(step.value)
        return restart

    async def _run(self, step: Step, rpc: ShellyRpc, plan: DevicePlan, state: _Device) -> bool:
        """Run one step; returns whether the device asked for a restart."""
        changes = [c for c in plan.pending if c.step is step]
        want = plan.desired
        assert want is not None  # a plan with pending changes was rendered
        if step is Step.TLS:
            assert want.tls is not None
            await upload_material(rpc, want.tls)
            # The device reads its TLS material when it connects to the broker: new material
            # takes effect only after a reboot.
            return True
        if step is Step.MQTT:
            return await self._mqtt(rpc, plan, changes)
        if step is Step.SYSTEM:
            config: dict[str, Any] = {}
            for change in changes:
                _put(config, change.field.split(".")[1:], change.desired)
            return await rpc.sys_set_config(config)
        if step is Step.SCRIPTS:
            names = {c.field.partition(":")[2] for c in changes}
            for spec in want.scripts:
                if spec.name in names:
                    done = await deploy_script(rpc, spec)
                    state.scripts.append(
                        DeployedScript(
                            name=spec.name,
                            version=spec.version,
                            sha256=done.sha256,
                            script_id=done.script_id,
                            deployed_at=time.time(),
                        )
                    )
            return False
        if step is Step.AUTH:
            await self._auth(rpc, state.reg, plan)
            return False
        raise FleetError(plan.device, f"no step {step.value!r} in apply")  # pragma: no cover

    async def _mqtt(self, rpc: ShellyRpc, plan: DevicePlan, changes: list[Change]) -> bool:
        want = plan.desired
        assert want is not None
        config = {c.field.partition(".")[2]: c.desired for c in changes if c.field != "mqtt.pass"}
        password = want.mqtt_pass if any(c.field == "mqtt.pass" for c in changes) else None
        if password is not None:
            config["pass"] = password
        restart = await rpc.mqtt_set_config(config)
        if password is not None:
            fingerprint = mqtt_pass_fingerprint(want.device.id, password)
            await rpc.call("KVS.Set", {"key": MQTT_PASS_KEY, "value": fingerprint})
        return restart

    async def _auth(self, rpc: ShellyRpc, reg: Registration, plan: DevicePlan) -> None:
        want = plan.desired
        assert want is not None and want.auth is not None
        if want.auth.mode is AuthMode.ENV:
            password = want.auth.password
        else:
            # A password kilowatch already holds is kept (a device that lost its auth gets the
            # same one back); otherwise a new one is drawn.
            password = await self.passwords.get(reg) or secrets.token_urlsafe(
                GENERATED_PASSWORD_BYTES
            )
        assert password is not None
        realm = want.device.id
        ha1 = hashlib.sha256(f"{REALM_USER}:{realm}:{password}".encode()).hexdigest()
        if not plan.info.get("auth_en"):
            # Kept before the device has it: a device without auth ignores the password, so
            # this is harmless if SetAuth fails, and an answer lost after the device took the
            # password cannot lock kilowatch out (the next attempt reuses it).
            await self.passwords.put(reg, password)
            await rpc.set_auth(realm, ha1)
            return
        # A rotation: the old password stays until the device took the new one; every later
        # connection (reboot, verify) uses the new one.
        await rpc.set_auth(realm, ha1)
        await self.passwords.put(reg, password)

    async def _reboot(self, reg: Registration) -> None:
        """Reboot the device and wait, bounded, until it answers with no restart pending."""
        opts = self.options
        async with self.opener(reg) as rpc:
            await rpc.reboot(opts.reboot_delay_ms)
        # Polling before the delay is over would find the device still up, not yet rebooted.
        await self.sleep(opts.reboot_delay_ms / 1000 + opts.reboot_poll_s)
        deadline = self.clock() + opts.reboot_timeout_s
        while True:
            try:
                async with self.opener(reg) as rpc:
                    status = await rpc.call("Sys.GetStatus", timeout=opts.poll_call_timeout_s)
                if isinstance(status, dict) and not status.get("restart_required"):
                    return
            except RETRYABLE:
                pass
            if self.clock() >= deadline:
                raise DeviceTimeoutError(
                    reg.device,
                    f"did not answer within {opts.reboot_timeout_s:g} s after its reboot",
                    seconds=opts.reboot_timeout_s,
                )
            await self.sleep(opts.reboot_poll_s)


class SecretPasswords:
    """:class:`~kilowatch.fleet.plan.Passwords` kept in kilowatch's secrets file, under each
    registration's ``credentials`` reference (its id when it has none), off the event loop."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box

    async def get(self, reg: Registration) -> str | None:
        held = await asyncio.to_thread(self.box.get, reg.credentials or reg.device)
        return None if held is None else held.device_password

    async def put(self, reg: Registration, password: str) -> None:
        ref = reg.credentials or reg.device

        def write() -> None:
            held = self.box.get(ref) or DeviceSecrets()
            self.box.put(ref, replace(held, device_password=password))

        await asyncio.to_thread(write)


def _put(config: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


async def apply_fleet(
    profile: Profile,
    targets: Sequence[Registration],
    opener: Opener,
    *,
    passwords: Passwords,
    options: ApplyOptions | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ApplyReport:
    """Make every target match ``profile`` (module docstring), at most ``options.concurrency``
    devices at once, and report per device in the order given. Never raises for one device's
    failure: it is in the report (:attr:`ApplyReport.failed`)."""
    opts = options or ApplyOptions()
    engine = _Engine(profile, opener, passwords, opts, progress or NoProgress(), sleep, clock)
    limit = asyncio.Semaphore(max(1, opts.concurrency))
    began = clock()

    async def one(reg: Registration) -> DeviceResult:
        async with limit:
            return await engine.device(reg)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(reg)) for reg in targets]
    return ApplyReport(
        profile=str(profile.path),
        dry_run=opts.dry_run,
        devices=tuple(t.result() for t in tasks),
        seconds=clock() - began,
    )


__all__ = [
    "CONCURRENCY",
    "RETRYABLE",
    "ApplyOptions",
    "ApplyReport",
    "Backoff",
    "DeviceResult",
    "NoProgress",
    "Opener",
    "Progress",
    "SecretPasswords",
    "Status",
    "apply_fleet",
    "notices",
    "plan_fleet",
]
