"""A rollout's options, its progress as it runs and its report (docs/fleet.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kilowatch.fleet.apply import CONCURRENCY
from kilowatch.fleet.firmware.check import CHECK_TIMEOUT_S
from kilowatch.fleet.firmware.ota import POLL_S, check_stage

OTA_TIMEOUT_S = 600.0
"""Default bound of one device's update, from ``Shelly.Update`` to the new version reported: a
real OTA downloads 1-2 MB over Wi-Fi, writes flash and reboots, 1-3 minutes."""


class Outcome(StrEnum):
    """A device's outcome in a rollout."""

    UPDATED = "updated"
    """It reports the stage's version now."""
    UP_TO_DATE = "up-to-date"
    """The stage offered it nothing newer: nothing was sent."""
    FAILED = "failed"
    """The update was sent and did not end on the new version (``ota_error``, timeout), or it
    could not be sent; or the device refused to be read (a password kilowatch lacks)."""
    OFFLINE = "offline"
    """Unreachable when the rollout read it: nothing was sent."""
    SKIPPED = "skipped"
    """Not started: the rollout halted first. Untouched."""
    PLANNED = "planned"
    """``dry_run`` only: it would be updated, in the wave given."""


COUNTED = (Outcome.FAILED,)
"""The outcome ``max_failures`` counts, for the devices of a wave: an update that went wrong. A
device offline, or refusing to be read, before anything was sent is not counted (that says
nothing of the firmware)."""


@dataclass(frozen=True, slots=True)
class RolloutOptions:
    """How :func:`rollout` runs.

    ``stage``: ``stable`` or ``beta``. ``canary``: devices in the first wave (at least 1).
    ``wave_size``: devices per later wave; ``None`` doubles each wave (canary, 2×canary, 4×...).
    ``max_failures``: the rollout halts (no new wave, no new device) once more devices than this
    failed. ``timeout_s``: bound of one device's update. ``concurrency``: devices updated or
    read at once. ``dry_run``: read, plan the waves, send nothing. ``poll_s``: interval of the
    version reads while a device updates.
    """

    stage: str = "stable"
    canary: int = 1
    wave_size: int | None = None
    max_failures: int = 0
    timeout_s: float = OTA_TIMEOUT_S
    concurrency: int = CONCURRENCY
    dry_run: bool = False
    poll_s: float = POLL_S
    check_timeout_s: float = CHECK_TIMEOUT_S

    def __post_init__(self) -> None:
        check_stage(self.stage)
        if self.canary < 1:
            raise ValueError(f"canary must be 1 or more, got {self.canary}")
        if self.wave_size is not None and self.wave_size < 1:
            raise ValueError(f"wave size must be 1 or more, got {self.wave_size}")
        if self.max_failures < 0:
            raise ValueError(f"max failures must be 0 or more, got {self.max_failures}")
        if self.timeout_s <= 0 or self.poll_s <= 0 or self.check_timeout_s <= 0:
            raise ValueError("timeouts and the poll interval must be positive")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, got {self.concurrency}")


def plan_waves(count: int, *, canary: int, wave_size: int | None) -> list[int]:
    """The sizes of the waves that update ``count`` devices: ``canary`` first, then
    ``wave_size`` each, or doubling (``[1, 2, 4, 8, 5]`` for 20 devices from a canary of 1)."""
    sizes: list[int] = []
    left, size = count, canary
    while left > 0:
        take = min(size, left)
        sizes.append(take)
        left -= take
        size = wave_size if wave_size is not None else size * 2
    return sizes


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One device in a :class:`RolloutReport`: versions ``before`` and ``after`` (as last
    reported), the ``target`` version of the stage, its ``wave`` (1-based; ``None`` when it was
    in none: up to date, offline), why it failed or was skipped (``reason``), wall ``seconds``."""

    device: str
    outcome: Outcome
    model: str | None = None
    gen: int | None = None
    before: str | None = None
    after: str | None = None
    target: str | None = None
    wave: int | None = None
    reason: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "outcome": self.outcome.value,
            "model": self.model,
            "gen": self.gen,
            "before": self.before,
            "after": self.after,
            "target": self.target,
            "wave": self.wave,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class RolloutProgress:
    """What :func:`rollout` tells ``on_progress``, at each change: the ``wave`` running (0 while
    the devices are read), ``waves`` planned, the ``device`` whose ``state`` changed
    (``checking``, ``waiting``, ``updating``, ``progress``, ``rebooting``, or an
    :class:`Outcome` value; ``None`` for a wave starting or the end), ``detail`` (a progress
    percentage, a failure's reason), ``counts`` per outcome so far plus ``pending``, and whether
    it ``halted``."""

    wave: int
    waves: int
    device: str | None
    state: str
    detail: str | None
    counts: Mapping[str, int]
    halted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "wave": self.wave,
            "waves": self.waves,
            "device": self.device,
            "state": self.state,
            "detail": self.detail,
            "counts": dict(self.counts),
            "halted": self.halted,
        }


ProgressCallback = Callable[[RolloutProgress], None]


@dataclass(frozen=True, slots=True)
class RolloutReport:
    """A rollout's outcome: a :class:`DeviceResult` per device in the order given, the
    ``waves`` (device ids per wave, as planned), whether it ``halted`` and why
    (``halt_reason``), its options and ``seconds``."""

    options: RolloutOptions
    devices: tuple[DeviceResult, ...]
    waves: tuple[tuple[str, ...], ...]
    halted: bool
    halt_reason: str | None
    seconds: float

    def count(self, outcome: Outcome) -> int:
        return sum(1 for d in self.devices if d.outcome is outcome)

    def summary(self) -> dict[str, int]:
        """``devices`` and a count per outcome."""
        out = {"devices": len(self.devices)}
        out.update({o.value: self.count(o) for o in Outcome})
        return out

    @property
    def failed(self) -> bool:
        """Whether it halted or any device failed or was offline (the CLI then exits 1)."""
        return self.halted or any(
            d.outcome in (Outcome.FAILED, Outcome.OFFLINE) for d in self.devices
        )

    @property
    def result(self) -> str:
        """The audit log's result: ``halted``; ``ok`` (nothing failed or offline); ``failed``
        (nothing updated, something failed); ``partial`` otherwise."""
        if self.halted:
            return "halted"
        if not self.failed:
            return "ok"
        if self.count(Outcome.UPDATED) == 0 and self.count(Outcome.FAILED) > 0:
            return "failed"
        return "partial"

    def to_json(self) -> dict[str, Any]:
        """The report as ``--report FILE.json`` writes it (docs/fleet.md)."""
        o = self.options
        return {
            "stage": o.stage,
            "dry_run": o.dry_run,
            "canary": o.canary,
            "wave_size": o.wave_size,
            "max_failures": o.max_failures,
            "timeout_s": o.timeout_s,
            "halted": self.halted,
            "halt_reason": self.halt_reason,
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
            "waves": [list(w) for w in self.waves],
            "devices": [d.to_json() for d in self.devices],
        }


__all__ = [
    "COUNTED",
    "OTA_TIMEOUT_S",
    "DeviceResult",
    "Outcome",
    "ProgressCallback",
    "RolloutOptions",
    "RolloutProgress",
    "RolloutReport",
    "plan_waves",
]
