"""Deterministic load profiles: what a simulated channel draws (or feeds in) at any instant.

Power is piecewise constant over 10-second segments and is a pure function of (seed, kind, segment
index), so the same seed always gives the same day, metering can integrate it exactly, and a past
minute can be recomputed on demand (``EMData.GetData`` history) without storing it. Negative
power is feed-in (PV): it accumulates returned energy (``ret_aenergy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

SEGMENT_S = 10
"""Seconds over which a profile's power is constant."""

_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def unit(seed: int, *parts: int) -> float:
    """A deterministic pseudo-random number in [0, 1) from ``seed`` and integer ``parts``."""
    h = _mix(seed & _MASK64)
    for p in parts:
        h = _mix(h ^ (p & _MASK64))
    return (h >> 11) / float(1 << 53)


class LoadKind(StrEnum):
    """The household loads a channel can simulate."""

    BOILER = "boiler"
    AIR_CONDITIONER = "ac"
    FRIDGE = "fridge"
    BASE = "base"
    PV = "pv"
    IDLE = "idle"


@dataclass(frozen=True, slots=True)
class Sample:
    """One segment: constant power (W, negative = feed-in), voltage (V), power factor, frequency."""

    power_w: float
    voltage_v: float
    pf: float
    freq_hz: float

    @property
    def current_a(self) -> float:
        """RMS current implied by power, voltage and power factor."""
        if self.voltage_v <= 0 or self.pf == 0:
            return 0.0
        return abs(self.power_w) / (self.voltage_v * abs(self.pf))

    @property
    def apparent_power_va(self) -> float:
        """Apparent power |S| = |P| / |pf|."""
        return abs(self.power_w) / abs(self.pf) if self.pf else 0.0


_LOCAL_OFFSET_S = (
    3600  # the simulated home lives at UTC+1: its mornings and evenings shape the loads
)


def _hour(t: float) -> float:
    return ((t + _LOCAL_OFFSET_S) % 86400) / 3600.0


def _boiler(seed: int, seg: int, t: float) -> tuple[float, float]:
    # Thermostat: a 2-hour cycle with a variable heating time; longer after morning/evening showers.
    cycle_s = 7200
    k = int(t // cycle_s)
    h = _hour(t)
    demand = 1.0 + (1.5 if 6 <= h < 9 or 18 <= h < 22 else 0.0)
    on_s = (300 + unit(seed, 1, k) * 900) * demand
    phase = unit(seed, 2) * cycle_s
    if (t + phase) % cycle_s < on_s:
        return 2000.0 * (0.99 + 0.02 * unit(seed, 3, seg)), 1.0
    return 0.0, 1.0


def _ac(seed: int, seg: int, t: float) -> tuple[float, float]:
    h = _hour(t)
    if not 10 <= h < 23:
        return 4.5, 0.5  # standby electronics
    period = 900
    k = int(t // period)
    duty = 0.45 + 0.4 * math.sin(math.pi * (h - 10) / 13)
    if (t % period) / period < duty * (0.8 + 0.4 * unit(seed, 4, k)):
        return 750.0 + 350.0 * unit(seed, 5, seg), 0.93
    return 35.0 + 5.0 * unit(seed, 6, seg), 0.6  # fan only


def _fridge(seed: int, seg: int, t: float) -> tuple[float, float]:
    period = 2400
    k = int(t // period)
    on_frac = 0.3 + 0.15 * unit(seed, 7, k)
    if (t % period) / period < on_frac:
        return 85.0 + 20.0 * unit(seed, 8, seg), 0.75
    return 1.2, 0.4


def _base(seed: int, seg: int, t: float) -> tuple[float, float]:
    h = _hour(t)
    evening = 120.0 if 17 <= h < 23 else 0.0
    morning = 80.0 if 6 <= h < 8 else 0.0
    return 70.0 + evening + morning + 60.0 * unit(seed, 9, seg // 6), 0.9


def _pv(seed: int, seg: int, t: float) -> tuple[float, float]:
    h = _hour(t)
    day = int((t + _LOCAL_OFFSET_S) // 86400)
    peak = 380.0 * (0.5 + 0.5 * unit(seed, 10, day))
    if not 6.5 < h < 19.5:
        return 0.8, 0.3  # the inverter's own night draw
    sun = math.sin(math.pi * (h - 6.5) / 13.0)
    clouds = 0.55 + 0.45 * unit(seed, 11, seg // 30)
    return -peak * sun * clouds, -0.98


_KINDS = {
    LoadKind.BOILER: _boiler,
    LoadKind.AIR_CONDITIONER: _ac,
    LoadKind.FRIDGE: _fridge,
    LoadKind.BASE: _base,
    LoadKind.PV: _pv,
}


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """A deterministic load of one ``kind``; ``seed`` decides its randomness, ``scale`` its size."""

    kind: LoadKind
    seed: int
    scale: float = 1.0

    def sample(self, t: float) -> Sample:
        """The segment of power that contains instant ``t``."""
        seg = int(t // SEGMENT_S)
        return self.sample_segment(seg)

    def sample_segment(self, seg: int) -> Sample:
        """Segment number ``seg`` (covering ``[seg*10, seg*10+10)``)."""
        t = float(seg * SEGMENT_S)
        fn = _KINDS.get(self.kind)
        power, pf = (0.0, 1.0) if fn is None else fn(self.seed, seg, t)
        voltage = 229.0 + 4.0 * unit(self.seed, 12, seg // 3)
        freq = 49.95 + 0.1 * unit(self.seed, 13, seg // 6)
        return Sample(power * self.scale, round(voltage, 1), pf, round(freq, 2))

    def energy_wh(self, t0: float, t1: float) -> tuple[float, float]:
        """Exact (imported, returned) energy in Wh over ``[t0, t1)``."""
        imported = returned = 0.0
        t = t0
        while t < t1:
            seg = int(t // SEGMENT_S)
            end = min(t1, (seg + 1) * SEGMENT_S)
            p = self.sample_segment(seg).power_w
            e = p * (end - t) / 3600.0
            if e >= 0:
                imported += e
            else:
                returned -= e
            t = end
        return imported, returned


__all__ = ["SEGMENT_S", "LoadKind", "LoadProfile", "Sample", "unit"]
