"""Fault plans: what goes wrong, on which device, at which simulated instant.

A :class:`Fault` is applied by the fleet when its clock reaches ``at``: a reboot, a counter reset
(as after a firmware update or factory reset), a network outage, a window of duplicate MQTT
publishes, or clock skew. :func:`chaos_plan` draws a deterministic plan from a seed, for demos and
end-to-end tests; tests can also write plans by hand.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from shellysim.clock import SimClock
from shellysim.device import Device
from shellysim.profiles import unit

log = logging.getLogger(__name__)


class FaultKind(StrEnum):
    """What goes wrong."""

    REBOOT = "reboot"
    COUNTER_RESET = "counter_reset"
    OUTAGE = "outage"
    DUPLICATES = "duplicates"
    CLOCK_SKEW = "clock_skew"


@dataclass(frozen=True, slots=True, order=True)
class Fault:
    """``kind`` on ``device`` at simulated unix time ``at``.

    ``seconds`` is the outage or duplicate window length (simulated seconds), or the skew.
    """

    at: float
    device: str
    kind: FaultKind
    seconds: float = 0.0


def chaos_plan(devices: Sequence[str], *, start: float, end: float, seed: int = 0) -> list[Fault]:
    """A deterministic plan: per device and simulated day one reboot; with some probability a
    counter reset (20 %), a 30-minute outage (25 %) and an hour of duplicate publishes (25 %)."""
    plan: list[Fault] = []
    day0 = int(start // 86400)
    for n, dev in enumerate(devices):
        for day in range(day0, int(end // 86400) + 1):
            base = day * 86400.0

            draws = [
                (FaultKind.REBOOT, 1.0, 0.0),
                (FaultKind.COUNTER_RESET, 0.2, 0.0),
                (FaultKind.OUTAGE, 0.25, 1800.0),
                (FaultKind.DUPLICATES, 0.25, 3600.0),
            ]
            for salt, (kind, p, seconds) in enumerate(draws):
                if unit(seed, n, day, 100 + salt) < p:
                    at = base + unit(seed, n, day, salt) * 86400.0
                    if start <= at < end:
                        plan.append(Fault(at, dev, kind, seconds))
    return sorted(plan)


async def run_faults(faults: Sequence[Fault], devices: Sequence[Device], clock: SimClock) -> None:
    """Apply ``faults`` when the clock reaches them (runs until the plan is exhausted)."""
    by_id = {d.id: d for d in devices}
    queue: list[tuple[float, int, Fault | str]] = []
    for i, f in enumerate(faults):
        if f.device not in by_id:
            raise KeyError(f"fault plan names an unknown device {f.device!r}")
        heapq.heappush(queue, (f.at, i, f))
    counter = len(queue)
    while queue:
        at, _, item = heapq.heappop(queue)
        await clock.sleep_until(at)
        if isinstance(item, str):  # end of a duplicate window
            by_id[item].duplicate_publishes = False
            continue
        dev = by_id[item.device]
        log.info("fault %s on %s at %.0f", item.kind, dev.id, at)
        if item.kind is FaultKind.REBOOT:
            dev.spawn(dev.reboot())
        elif item.kind is FaultKind.COUNTER_RESET:
            dev.fault_counter_reset()
        elif item.kind is FaultKind.OUTAGE:
            dev.fault_outage(item.seconds)
        elif item.kind is FaultKind.DUPLICATES:
            dev.duplicate_publishes = True
            counter += 1
            heapq.heappush(queue, (at + item.seconds, counter, dev.id))
        elif item.kind is FaultKind.CLOCK_SKEW:
            dev.fault_clock_skew(int(item.seconds))


__all__ = ["Fault", "FaultKind", "chaos_plan", "run_faults"]
