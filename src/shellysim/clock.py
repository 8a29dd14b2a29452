"""The simulated clock shared by metering, timers and scripts of one fleet.

``now()`` runs ``speed`` times faster than real time from a chosen start instant, so a test can
cross hour and day boundaries in seconds. It reads the monotonic clock after its start; pure tests
drive a :class:`ManualClock` by hand instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """A source of simulated unix time (UTC seconds)."""

    @property
    def speed(self) -> float:
        """Simulated seconds per real second."""
        ...

    def now(self) -> float:
        """Simulated unix time."""
        ...


class SimClock:
    """Simulated unix time running ``speed`` times faster than the real monotonic clock."""

    def __init__(self, *, start: float | None = None, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self._speed = speed
        self._start = time.time() if start is None else start
        self._t0 = time.monotonic()

    @property
    def speed(self) -> float:
        """Simulated seconds per real second."""
        return self._speed

    def now(self) -> float:
        """Simulated unix time."""
        return self._start + (time.monotonic() - self._t0) * self._speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on; simulated time stays continuous.

        ``kilowatch demo`` back-fills days at 3600x and then runs at 1x once it reaches real time.
        Timers already scheduled keep the real delay computed at the old speed.
        """
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self._start = self.now()
        self._t0 = time.monotonic()
        self._speed = speed

    def real_delay(self, sim_seconds: float) -> float:
        """Real seconds until ``sim_seconds`` of simulated time have passed."""
        return max(0.0, sim_seconds / self._speed)

    async def sleep_until(self, sim_ts: float) -> None:
        """Sleep until the simulated clock reaches ``sim_ts``."""
        await asyncio.sleep(self.real_delay(sim_ts - self.now()))

    def call_later(self, sim_seconds: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Schedule ``callback`` after ``sim_seconds`` of simulated time on the running loop."""
        loop = asyncio.get_running_loop()
        return loop.call_later(self.real_delay(sim_seconds), callback)


class ManualClock:
    """A clock that only moves when told to (pure tests of the device model)."""

    def __init__(self, start: float, *, speed: float = 1.0) -> None:
        self._now = start
        self._speed = speed

    @property
    def speed(self) -> float:
        """Simulated seconds per real second (only used to scale timers)."""
        return self._speed

    def now(self) -> float:
        """Simulated unix time."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time."""
        self._now += seconds
        return self._now

    def set(self, ts: float) -> None:
        """Jump to ``ts`` (forward only)."""
        if ts < self._now:
            raise ValueError("a ManualClock never goes backwards")
        self._now = ts


__all__ = ["Clock", "ManualClock", "SimClock"]
