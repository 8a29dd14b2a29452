"""``kilowatch fleet firmware update``: a staged rollout (see :mod:`kilowatch.fleet.firmware`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import aiohttp

from kilowatch.errors import KilowatchError
from kilowatch.fleet.apply import Opener
from kilowatch.fleet.firmware.check import FirmwareStatus, Reach, reach_devices, read_all
from kilowatch.fleet.firmware.ota import OtaResult, reason_of, update_gen2
from kilowatch.fleet.firmware.report import (
    COUNTED,
    DeviceResult,
    Outcome,
    ProgressCallback,
    RolloutOptions,
    RolloutProgress,
    RolloutReport,
    plan_waves,
)
from kilowatch.fleet.rpc.mqtt import MqttRpc
from kilowatch.fleet.secrets import SecretBox
from kilowatch.store.audit import audited
from kilowatch.store.protocol import Batch, DeviceUpdate, Registration, Store

log = logging.getLogger(__name__)

ACTION = "firmware.update"
"""The audit log's name of a rollout."""


@dataclass(slots=True)
class _Run:
    options: RolloutOptions
    reach: Reach
    on_progress: ProgressCallback | None
    clock: Callable[[], float]
    results: dict[str, DeviceResult] = field(default_factory=dict)
    total: int = 0
    wave: int = 0
    waves: int = 0
    halted: bool = False

    def failures(self) -> int:
        """The failures ``max_failures`` counts: those of devices in a wave (COUNTED)."""
        return sum(1 for r in self.results.values() if r.outcome in COUNTED and r.wave is not None)

    def counts(self) -> dict[str, int]:
        out = {o.value: 0 for o in Outcome}
        for r in self.results.values():
            out[r.outcome.value] += 1
        out["pending"] = self.total - len(self.results)
        return out

    def tell(self, device: str | None, state: str, detail: str | None = None) -> None:
        if self.on_progress is None:
            return
        progress = RolloutProgress(
            self.wave, self.waves, device, state, detail, self.counts(), self.halted
        )
        try:
            self.on_progress(progress)
        except Exception:
            # a display that fails must not abandon devices in the middle of their update
            log.exception("firmware rollout: the progress callback failed")

    def done(self, result: DeviceResult) -> None:
        self.results[result.device] = result
        self.tell(result.device, result.outcome.value, result.reason)

    async def device(self, reg: Registration, status: FirmwareStatus, wave: int) -> None:
        """Update one device of a wave, unless the rollout halted before it started."""
        opts = self.options
        target = status.offer(opts.stage)
        assert target is not None
        base = DeviceResult(
            reg.device,
            Outcome.SKIPPED,
            model=status.model,
            gen=status.gen,
            before=status.current,
            after=status.current,
            target=target,
            wave=wave,
        )
        if self.halted:
            self.done(replace(base, reason="the rollout halted before this device started"))
            return
        began = self.clock()
        self.tell(reg.device, "updating")

        def tell(state: str, detail: str | None) -> None:
            self.tell(reg.device, state, detail)

        try:
            if reg.gen == 1:
                http = await self.reach.gen1(reg, opts.check_timeout_s)
                outcome = await http.update(
                    stage=opts.stage, before=status.current, target=target,
                    timeout=opts.timeout_s, poll_s=opts.poll_s, tell=tell, clock=self.clock,
                )  # fmt: skip
            else:
                async with self.reach.opener(reg) as rpc:
                    outcome = await update_gen2(
                        rpc, stage=opts.stage, before=status.current, target=target,
                        timeout=opts.timeout_s, poll_s=opts.poll_s, tell=tell, clock=self.clock,
                    )  # fmt: skip
        except KilowatchError as err:
            outcome = OtaResult(
                False, status.current, f"the update was not started: {reason_of(err)}"
            )
        seconds = self.clock() - began
        result = replace(
            base,
            outcome=Outcome.UPDATED if outcome.ok else Outcome.FAILED,
            after=outcome.after,
            reason=outcome.reason,
            seconds=seconds,
        )
        self.done(result)
        if self.failures() > opts.max_failures and not self.halted:
            self.halted = True
            self.tell(None, "halted", self.halt_reason())

    def halt_reason(self) -> str:
        return (
            f"{_devices(self.failures())} failed, more than the {self.options.max_failures} "
            "allowed (max failures): no further device was started"
        )

    async def _wave(self, wave: Sequence[tuple[Registration, FirmwareStatus]], number: int) -> None:
        limit = asyncio.Semaphore(self.options.concurrency)

        async def one(reg: Registration, status: FirmwareStatus) -> None:
            async with limit:
                await self.device(reg, status, number)

        async with asyncio.TaskGroup() as group:
            for reg, status in wave:
                group.create_task(one(reg, status))

    async def run(self, registrations: Sequence[Registration]) -> RolloutReport:
        opts = self.options
        began = self.clock()
        self.total = len(registrations)
        for reg in registrations:
            self.tell(reg.device, "checking")
        statuses = await read_all(self.reach, registrations, opts.concurrency, opts.check_timeout_s)
        todo: list[tuple[Registration, FirmwareStatus]] = []
        for reg, status in zip(registrations, statuses, strict=True):
            if status.error is not None:
                outcome = Outcome.OFFLINE if status.offline else Outcome.FAILED
                self.done(_unread(status, outcome, opts.stage))
            elif status.offer(opts.stage) is None:
                self.done(_unread(status, Outcome.UP_TO_DATE, opts.stage))
            else:
                todo.append((reg, status))
        sizes = plan_waves(len(todo), canary=opts.canary, wave_size=opts.wave_size)
        self.waves = len(sizes)
        waves: list[list[tuple[Registration, FirmwareStatus]]] = []
        at = 0
        for size in sizes:
            waves.append(todo[at : at + size])
            at += size
        for number, wave in enumerate(waves, 1):
            if opts.dry_run:
                for _, status in wave:
                    self.done(_planned(status, opts.stage, number))
                continue
            if self.halted:
                for _, status in wave:
                    self.done(
                        replace(
                            _planned(status, opts.stage, number),
                            outcome=Outcome.SKIPPED,
                            reason="the rollout halted before this wave",
                        )
                    )
                continue
            self.wave = number
            self.tell(None, "wave", f"{len(wave)} devices")
            await self._wave(wave, number)
        report = RolloutReport(
            options=opts,
            devices=tuple(self.results[r.device] for r in registrations),
            waves=tuple(tuple(reg.device for reg, _ in w) for w in waves),
            halted=self.halted,
            halt_reason=self.halt_reason() if self.halted else None,
            seconds=self.clock() - began,
        )
        self.tell(None, "done", report.result)
        return report


def _devices(n: int) -> str:
    return f"{n} device" if n == 1 else f"{n} devices"


def _unread(status: FirmwareStatus, outcome: Outcome, stage: str) -> DeviceResult:
    return DeviceResult(
        status.device,
        outcome,
        model=status.model,
        gen=status.gen,
        before=status.current,
        after=status.current,
        target=status.offer(stage),
        reason=status.error,
    )


def _planned(status: FirmwareStatus, stage: str, wave: int) -> DeviceResult:
    return DeviceResult(
        status.device,
        Outcome.PLANNED,
        model=status.model,
        gen=status.gen,
        before=status.current,
        after=status.current,
        target=status.offer(stage),
        wave=wave,
    )


async def rollout(
    store: Store,
    registrations: Sequence[Registration],
    options: RolloutOptions,
    *,
    secrets: SecretBox | None,
    mqtt: MqttRpc | None,
    actor: str,
    on_progress: ProgressCallback | None = None,
    session: aiohttp.ClientSession | None = None,
    opener: Opener | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutReport:
    """Update ``registrations`` to ``options.stage``'s offer in waves (module doc) and report per
    device, in the order given. Never raises for one device's failure.

    First every device is read (its version and offers): an offline one is ``offline``, one
    offered nothing newer is ``up-to-date``; nothing is sent to either. The others are updated
    wave by wave (:func:`plan_waves`), at most ``options.concurrency`` at once; a device is
    ``updated`` once it reports the offered version. When more than ``options.max_failures``
    devices failed, the rollout halts: no device starts after that (``skipped``). Running it
    again after a halt (or a timeout) updates only what is still behind: updated devices are
    ``up-to-date`` then.

    ``store``: where the action is audited (``firmware.update`` by ``actor``: ``cli:<user>``,
    ``web:<user>``... with the options; its end with the report's :attr:`~RolloutReport.result`
    and summary) and where the new versions are kept (registry ``fw_ver``, device records); a
    dry run is not audited and changes nothing. ``secrets``, ``mqtt``, ``session``, ``opener``:
    as :func:`check_firmware`. ``on_progress``: told every change (:class:`RolloutProgress`);
    it runs on the event loop and must not block. ``clock``: monotonic seconds (tests).
    """
    devices = [r.device for r in registrations]
    async with reach_devices(secrets=secrets, mqtt=mqtt, session=session, opener=opener) as reach:
        run = _Run(options, reach, on_progress, clock)
        if options.dry_run:
            return await run.run(registrations)
        detail = {
            "stage": options.stage,
            "canary": options.canary,
            "wave_size": options.wave_size,
            "max_failures": options.max_failures,
        }
        async with audited(store, actor, ACTION, devices=devices, detail=detail) as act:
            report = await run.run(registrations)
            act.result = report.result
            act.detail = {
                **detail,
                "summary": report.summary(),
                "halted": report.halted,
                "halt_reason": report.halt_reason,
                "updated": [d.device for d in report.devices if d.outcome is Outcome.UPDATED],
                "failed": {
                    d.device: d.reason for d in report.devices if d.outcome is Outcome.FAILED
                },
            }
    await _record_versions(store, report)
    return report


async def _record_versions(store: Store, report: RolloutReport) -> None:
    """Keep the versions the updated devices report (registry and device records)."""
    done = [d for d in report.devices if d.outcome is Outcome.UPDATED and d.after is not None]
    if not done:
        return
    await store.register([Registration(device=d.device, fw_ver=d.after) for d in done])
    # a device on the stable offer is offered nothing newer of it (the next check says more)
    offer = "" if report.options.stage == "stable" else None
    await store.commit(
        Batch(
            devices=[DeviceUpdate(d.device, fw_ver=d.after, available_update=offer) for d in done]
        )
    )


__all__ = ["ACTION", "rollout"]
