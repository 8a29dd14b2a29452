"""Energy metering of one simulated channel and the ground truth it produces.

A :class:`MeterChannel` integrates its profile's power exactly (power is constant over 10-second
segments, and minute and 15-minute slot boundaries are segment boundaries) into cumulative counters
shaped like a Shelly's ``aenergy``/``ret_aenergy`` (shelly-api.md §13): ``total`` in Wh,
``by_minute`` the last three *complete* minutes in mWh (index 0 = the most recent),
``minute_ts`` the start of the current minute. Counters can be reset (a fault, ``ResetCounters``,
factory reset); the :class:`Truth` keeps what physically flowed, per UTC 15-minute slot,
whatever the counters show.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from kilowatch.model.slots import slot_of
from shellysim.profiles import SEGMENT_S, LoadProfile, Sample


class Truth:
    """Exact energy per device, channel and UTC 15-minute slot: ``[imported Wh, returned Wh]``."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, dict[int, list[float]]]] = {}

    def add(
        self, device: str, channel: str, slot: int, imported_wh: float, returned_wh: float
    ) -> None:
        """Add energy that flowed through ``device``/``channel`` during ``slot``."""
        row = self._data.setdefault(device, {}).setdefault(channel, {}).setdefault(slot, [0.0, 0.0])
        row[0] += imported_wh
        row[1] += returned_wh

    def to_json(self) -> bytes:
        """The truth as JSON (full float precision; keys sorted)."""
        # orjson turns the int slot keys into strings itself: no per-entry Python work, which
        # matters when 500 devices have run for simulated weeks (millions of slots).
        return orjson.dumps(self._data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)

    def as_dict(self) -> dict[str, dict[str, dict[str, list[float]]]]:
        """JSON shape ``{device: {channel: {"<slot start>": [energy_wh, returned_wh]}}}``."""
        data: dict[str, dict[str, dict[str, list[float]]]] = orjson.loads(self.to_json())
        return data

    def write(self, path: Path) -> None:
        """Write the truth file atomically (a reader never sees half a file)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_json())
        tmp.replace(path)

    def total(self, device: str, channel: str, start: float, end: float) -> tuple[float, float]:
        """Sum of ``[imported, returned]`` Wh over the slots starting in ``[start, end)``."""
        imp = ret = 0.0
        for slot, (i, r) in self._data.get(device, {}).get(channel, {}).items():
            if start <= slot < end:
                imp += i
                ret += r
        return imp, ret


class EnergyCounter:
    """One direction of a Shelly energy counter (``aenergy`` or ``ret_aenergy``)."""

    __slots__ = ("by_minute", "current_minute_mwh", "total_wh")

    def __init__(self) -> None:
        self.total_wh = 0.0
        self.by_minute = [0.0, 0.0, 0.0]
        self.current_minute_mwh = 0.0

    def add(self, wh: float) -> None:
        self.total_wh += wh
        self.current_minute_mwh += wh * 1000.0

    def roll_minute(self) -> None:
        """Close the current minute: it becomes ``by_minute[0]``."""
        self.by_minute = [self.current_minute_mwh, self.by_minute[0], self.by_minute[1]]
        self.current_minute_mwh = 0.0

    def reset(self) -> float:
        """Zero the counter (as ResetCounters / factory reset do); returns the total before."""
        before = self.total_wh
        self.total_wh = 0.0
        self.by_minute = [0.0, 0.0, 0.0]
        self.current_minute_mwh = 0.0
        return before

    def as_status(self, minute_ts: int) -> dict[str, Any]:
        """``{"total", "by_minute", "minute_ts"}`` as a device reports it (Wh 3 decimals, mWh)."""
        return {
            "total": round(self.total_wh, 3),
            "by_minute": [round(v, 3) for v in self.by_minute],
            "minute_ts": minute_ts,
        }


class MeterChannel:
    """A metered channel: a load profile, a gate (relay output) and import/export counters.

    ``truth_keys`` are the channel names the energy is booked under in the :class:`Truth` (a Pro 3EM
    phase books under ``em:0/a`` and under ``em:0``).
    """

    def __init__(
        self,
        profile: LoadProfile,
        *,
        device_id: str,
        truth_keys: tuple[str, ...],
        truth: Truth | None,
        start: float,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        self.profile = profile
        self.device_id = device_id
        self.truth_keys = truth_keys
        self.truth = truth
        self.gate = gate
        self.reverse = False
        self.behind: list[MeterChannel] = []
        """Meters whose loads this one measures too (a mains meter with sub-meters behind it):
        their power, as they meter it (relay and ``reverse`` applied), adds to this one's."""
        self.aenergy = EnergyCounter()
        self.ret_aenergy = EnergyCounter()
        self.t = start
        self.minute_start = int(start // 60) * 60
        self._seg = -1
        self._seg_sample = Sample(0.0, 0.0, 1.0, 0.0)

    def _raw(self, seg: int) -> Sample:
        # One profile evaluation per segment: status, deltas and integration all ask for it.
        if seg != self._seg:
            self._seg = seg
            self._seg_sample = self.profile.sample_segment(seg)
        return self._seg_sample

    def sample(self) -> Sample:
        """The current segment, with the relay and ``reverse`` applied (and the loads behind)."""
        seg = int(self.t // SEGMENT_S)
        s = self._raw(seg)
        if self.gate is not None and not self.gate():
            return Sample(0.0, s.voltage_v, 1.0, s.freq_hz)
        if self.reverse:
            s = Sample(-s.power_w, s.voltage_v, -s.pf, s.freq_hz)
        if not self.behind:
            return s
        power = s.power_w + sum(m._power(seg) for m in self.behind)
        # the power factor keeps this meter's own magnitude; its sign follows the flow
        pf = math.copysign(abs(s.pf) or 1.0, power) if power else abs(s.pf)
        return Sample(power, s.voltage_v, pf, s.freq_hz)

    def _power(self, seg: int) -> float:
        if self.gate is not None and not self.gate():
            return 0.0  # an open relay cuts what is behind it too
        p = self._raw(seg).power_w
        behind = sum(m._power(seg) for m in self.behind) if self.behind else 0.0
        return (-p if self.reverse else p) + behind

    def advance(self, t: float) -> int:
        """Integrate up to ``t``; returns how many minute boundaries were crossed."""
        rolled = 0
        while self.t < t:
            seg = int(self.t // SEGMENT_S)
            end = min(t, float((seg + 1) * SEGMENT_S))
            p = self._power(seg)
            wh = p * (end - self.t) / 3600.0
            if wh >= 0:
                self.aenergy.add(wh)
                imp, ret = wh, 0.0
            else:
                self.ret_aenergy.add(-wh)
                imp, ret = 0.0, -wh
            if self.truth is not None:
                slot = slot_of(self.t)
                for key in self.truth_keys:
                    self.truth.add(self.device_id, key, slot, imp, ret)
            self.t = end
            minute = int(self.t // 60) * 60
            if minute > self.minute_start:
                self.aenergy.roll_minute()
                self.ret_aenergy.roll_minute()
                self.minute_start = minute
                rolled += 1
        return rolled

    def reset_counters(self, kinds: tuple[str, ...] = ("aenergy", "ret_aenergy")) -> dict[str, Any]:
        """Zero counters; returns the totals before, shaped as ``PM1.ResetCounters`` answers."""
        out: dict[str, Any] = {}
        if "aenergy" in kinds:
            out["aenergy"] = {"total": round(self.aenergy.reset(), 3)}
        if "ret_aenergy" in kinds:
            out["ret_aenergy"] = {"total": round(self.ret_aenergy.reset(), 3)}
        return out


__all__ = ["EnergyCounter", "MeterChannel", "Truth"]
