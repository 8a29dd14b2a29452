"""Metering components: ``Switch``, ``PM1``, ``EM``/``EMData``, ``EM1``/``EM1Data`` (api §13).

Each component owns (or, for the ``*Data`` ones, shares) :class:`MeterChannel` objects, answers its
RPC methods, builds its status exactly as the documented payloads, and reports *deltas* for
NotifyStatus: power fields on a significant change, counters at minute rollovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import shellysim.rpcutil as r
from shellysim.meter import MeterChannel
from shellysim.profiles import SEGMENT_S

Handler = Callable[[r.Params], Any | Awaitable[Any]]

POWER_CHANGE_W = 1.0
"""A power change is 'significant' above max(1 W, 5 %); firmware thresholds are unknown (§9.1)."""
POWER_CHANGE_RATIO = 0.05

EMDATA_MAX_ROWS = 60
"""Rows per GetData answer before the device chunks with ``next_record_ts``."""
EMDATA_RETENTION_S = 60 * 86400
"""About 60 days of 1-minute records on a Pro 3EM (§13.5, unverified)."""


def _significant(old: float | None, new: float) -> bool:
    if old is None:
        return True
    return abs(new - old) > max(POWER_CHANGE_W, POWER_CHANGE_RATIO * abs(old))


class Component:
    """A component instance ``<type>:<id>`` with config, status and RPC methods."""

    type: str = ""
    api_name: str = ""  # namespace as the firmware spells it in ListMethods

    def __init__(self, cid: int) -> None:
        self.id = cid
        self.config: dict[str, Any] = {"id": cid, "name": None}
        self._last_power: float | None = None

    @property
    def key(self) -> str:
        """Component key in GetStatus/GetConfig (``pm1:0``)."""
        return f"{self.type}:{self.id}"

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        """Full status (``<Type>.GetStatus``)."""
        raise NotImplementedError

    def methods(self) -> dict[str, Handler]:
        """Verb (as spelled in ListMethods) → handler, besides Get/SetConfig and GetStatus."""
        return {}

    def meters(self) -> list[MeterChannel]:
        """The meters this component integrates (shared ones belong to their owner only)."""
        return []

    def power_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        """Changed power fields since the last report, or ``None`` if nothing significant."""
        return None

    def energy_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        """Counter fields to publish at a minute rollover."""
        return None

    def restart_required_for(self, patch: dict[str, Any]) -> bool:
        """Whether applying ``patch`` to the config needs a reboot."""
        return False

    def apply_config(self) -> None:
        """Push config values into the meters (``reverse``)."""


class _SinglePhase(Component):
    """Shared status of Switch and PM1: one meter, ``aenergy`` and ``ret_aenergy``."""

    def __init__(self, cid: int, meter: MeterChannel) -> None:
        super().__init__(cid)
        self.meter = meter
        self.config["reverse"] = False

    def meters(self) -> list[MeterChannel]:
        return [self.meter]

    def apply_config(self) -> None:
        self.meter.reverse = bool(self.config.get("reverse"))

    def _electrical(self) -> dict[str, Any]:
        s = self.meter.sample()
        return {
            "apower": round(s.power_w, 1),
            "voltage": s.voltage_v,
            "current": round(s.current_a, 3),
            "freq": s.freq_hz,
        }

    def _counters(self, skew: int) -> dict[str, Any]:
        minute_ts = self.meter.minute_start + skew
        return {
            "aenergy": self.meter.aenergy.as_status(minute_ts),
            "ret_aenergy": self.meter.ret_aenergy.as_status(minute_ts),
        }

    def power_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        e = self._electrical()
        if not _significant(self._last_power, e["apower"]):
            return None
        self._last_power = e["apower"]
        return {"apower": e["apower"], "current": e["current"]}

    def energy_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        return self._counters(skew)

    def reset_counters(self, params: r.Params) -> dict[str, Any]:
        kinds = params.get("type") or ["aenergy", "ret_aenergy"]
        if not isinstance(kinds, list) or not all(k in ("aenergy", "ret_aenergy") for k in kinds):
            raise r.invalid("Invalid argument 'type': expected a list of 'aenergy', 'ret_aenergy'")
        return self.meter.reset_counters(tuple(kinds))


class PM1(_SinglePhase):
    """``pm1:<id>`` of a PM Mini Gen3 (§13.1)."""

    type = "pm1"
    api_name = "PM1"

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        # A real PM Mini G3 (fw 1.2-1.4) reports neither aprtpower nor pf ("if applicable", §13.1).
        out: dict[str, Any] = {"id": self.id, **self._electrical()}
        out.update(self._counters(skew))
        return out

    def methods(self) -> dict[str, Handler]:
        return {"ResetCounters": self.reset_counters}


class Switch(_SinglePhase):
    """``switch:<id>`` of a Plus 1PM / Plus Plug S (§13.2); the relay gates the load."""

    type = "switch"
    api_name = "Switch"

    def __init__(self, cid: int, meter: MeterChannel) -> None:
        super().__init__(cid, meter)
        self.output = True
        self.source = "init"
        self.on_time_s = 0.0
        meter.gate = lambda: self.output
        self.config.update(
            {
                "in_mode": "follow",
                "initial_state": "restore_last",
                "auto_on": False,
                "auto_on_delay": 60.0,
                "auto_off": False,
                "auto_off_delay": 60.0,
                "power_limit": 4480,
                "voltage_limit": 280,
                "autorecover_voltage_errors": False,
                "current_limit": 16.0,
            }
        )
        self._pending: dict[str, Any] | None = None
        self.timer: tuple[float, float, asyncio.TimerHandle] | None = None
        """``(started_at, duration, handle)`` of a running ``toggle_after`` timer."""

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        s = self.meter.sample()
        out: dict[str, Any] = {"id": self.id, "source": self.source, "output": self.output}
        out.update(self._electrical())
        out["pf"] = round(s.pf, 2) if s.power_w else 0.0
        out.update(self._counters(skew))
        if self.timer is not None:
            out["timer_started_at"] = round(self.timer[0], 2)
            out["timer_duration"] = self.timer[1]
        out["temperature"] = {"tC": 41.3, "tF": 106.4}
        return out

    def methods(self) -> dict[str, Handler]:
        return {"ResetCounters": self.reset_counters}

    def set_output(self, on: bool, source: str) -> bool:
        """Switch the relay; returns the previous state. Queues an ``output``/``source`` delta."""
        if self.timer is not None:
            self.timer[2].cancel()
            self.timer = None
        was = self.output
        self.output = on
        self.source = source
        self._pending = {"output": on, "source": source}
        self._last_power = None  # the power jump is reported with the output change
        return was

    def take_pending(self) -> dict[str, Any] | None:
        """The output change not yet notified, if any."""
        out, self._pending = self._pending, None
        return out


def _phase_fields(prefix: str, meter: MeterChannel) -> dict[str, Any]:
    s = meter.sample()
    return {
        f"{prefix}current": round(s.current_a, 3),
        f"{prefix}voltage": s.voltage_v,
        f"{prefix}act_power": round(s.power_w, 1),
        f"{prefix}aprt_power": round(s.apparent_power_va, 1),
        f"{prefix}pf": round(s.pf, 2) if s.power_w else 0.0,
        f"{prefix}freq": s.freq_hz,
    }


class EM(Component):
    """``em:<id>`` of a Pro 3EM in the ``triphase`` profile (§13.3): phases a, b, c."""

    type = "em"
    api_name = "EM"

    def __init__(self, cid: int, phases: tuple[MeterChannel, MeterChannel, MeterChannel]) -> None:
        super().__init__(cid)
        self.phases = phases
        self.config.update(
            {
                "blink_mode_selector": "active_energy",
                "phase_selector": "a",
                "monitor_phase_sequence": False,
                "reverse": {},
                "ct_type": "120A",
            }
        )

    def meters(self) -> list[MeterChannel]:
        return list(self.phases)

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        for name, m in zip("abc", self.phases, strict=True):
            out.update(_phase_fields(f"{name}_", m))
        samples = [m.sample() for m in self.phases]
        out["n_current"] = None
        out["total_current"] = round(sum(s.current_a for s in samples), 3)
        out["total_act_power"] = round(sum(s.power_w for s in samples), 3)
        out["total_aprt_power"] = round(sum(s.apparent_power_va for s in samples), 3)
        out["user_calibrated_phase"] = []
        return out

    def power_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        st = self.status(ts, skew)
        if not _significant(self._last_power, st["total_act_power"]):
            return None
        self._last_power = st["total_act_power"]
        keep = ("act_power", "current", "aprt_power")
        return {k: v for k, v in st.items() if k.endswith(keep)}


class EMData(Component):
    """``emdata:<id>``: cumulative per-phase counters of an :class:`EM` and its 1-minute history."""

    type = "emdata"
    api_name = "EMData"

    def __init__(self, cid: int, em: EM, first_record: float) -> None:
        super().__init__(cid)
        self.config = {}
        self.em = em
        self.first_record = int(first_record // 60 + 1) * 60

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        for name, m in zip("abc", self.em.phases, strict=True):
            out[f"{name}_total_act_energy"] = round(m.aenergy.total_wh, 2)
            out[f"{name}_total_act_ret_energy"] = round(m.ret_aenergy.total_wh, 2)
        out["total_act"] = round(sum(m.aenergy.total_wh for m in self.em.phases), 2)
        out["total_act_ret"] = round(sum(m.ret_aenergy.total_wh for m in self.em.phases), 2)
        return out

    def energy_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        st = self.status(ts, skew)
        st.pop("id")
        return st

    def methods(self) -> dict[str, Handler]:
        return {
            "GetRecords": self.get_records,
            "GetData": self.get_data,
            "ResetCounters": self.reset_counters,
            "DeleteAllData": self.delete_all_data,
        }

    def reset_counters(self, params: r.Params) -> None:
        for m in self.em.phases:
            m.reset_counters()

    def delete_all_data(self, params: r.Params) -> None:
        self.first_record = int(self.em.phases[0].t // 60) * 60

    def _range(self) -> tuple[int, int]:
        end = int(self.em.phases[0].t // 60) * 60  # the current minute is not complete yet
        start = max(self.first_record, end - EMDATA_RETENTION_S)
        return start, end

    def get_records(self, params: r.Params) -> dict[str, Any]:
        start, end = self._range()
        ts = r.get_int(params, "ts", 0)
        start = max(start, ts // 60 * 60)
        if end <= start:
            return {"data_blocks": []}
        return {"data_blocks": [{"ts": start, "period": 60, "records": (end - start) // 60}]}

    def keys(self) -> list[str]:
        names = [
            "total_act_energy", "fund_act_energy", "total_act_ret_energy", "fund_act_ret_energy",
            "lag_react_energy", "lead_react_energy", "max_act_power", "min_act_power",
            "max_aprt_power", "min_aprt_power", "max_voltage", "min_voltage", "avg_voltage",
            "max_current", "min_current", "avg_current",
        ]  # fmt: skip
        out = [f"{p}_{n}" for p in "abc" for n in names]
        return [*out, "n_max_current", "n_min_current", "n_avg_current"]

    def _row(self, minute: int) -> list[float]:
        row: list[float] = []
        for m in self.em.phases:
            row += minute_row(m, minute)
        return [*row, 0.0, 0.0, 0.0]

    def get_data(self, params: r.Params) -> dict[str, Any]:
        return history(self, params, self._row, self.keys())


def minute_row(meter: MeterChannel, minute: int) -> list[float]:
    """The 16 values of one 60-second record of one phase (energies Wh within the minute)."""
    samples = [
        meter.profile.sample_segment(minute // SEGMENT_S + i) for i in range(60 // SEGMENT_S)
    ]
    imp, ret = meter.profile.energy_wh(minute, minute + 60)
    react = (
        sum(abs(s.power_w) * ((1 / (s.pf * s.pf) - 1) ** 0.5 if s.pf else 0.0) for s in samples)
        * SEGMENT_S
        / 3600.0
    )
    powers = [s.power_w for s in samples]
    aprt = [s.apparent_power_va for s in samples]
    volts = [s.voltage_v for s in samples]
    amps = [s.current_a for s in samples]
    values = [
        imp, imp * 0.995, ret, ret * 0.995, react, 0.0,
        max(powers), min(powers), max(aprt), min(aprt),
        max(volts), min(volts), sum(volts) / len(volts),
        max(amps), min(amps), sum(amps) / len(amps),
    ]  # fmt: skip
    return [round(v, 3) for v in values]


def history(
    comp: EMData | EM1Data,
    params: r.Params,
    row: Callable[[int], list[float]],
    keys: list[str],
) -> dict[str, Any]:
    """``*Data.GetData``: rows of 60-second records from ``ts``, chunked with ``next_record_ts``."""
    start, end = comp._range()
    ts = r.get_int(params, "ts", required=True)
    end_ts = r.get_int(params, "end_ts", end)
    add_keys = r.get_bool(params, "add_keys", True)
    first = max(start, -(-ts // 60) * 60)
    last = min(end, end_ts)
    out: dict[str, Any] = {}
    if add_keys:
        out["keys"] = keys
    minutes = list(range(first, last, 60))
    chunk = minutes[:EMDATA_MAX_ROWS]
    out["data"] = (
        [{"ts": chunk[0], "period": 60, "values": [row(m) for m in chunk]}] if chunk else []
    )
    if len(minutes) > len(chunk):
        out["next_record_ts"] = minutes[len(chunk)]
    return out


class EM1(Component):
    """``em1:<id>`` of a Pro EM (§13.4): one CT channel."""

    type = "em1"
    api_name = "EM1"

    def __init__(self, cid: int, meter: MeterChannel) -> None:
        super().__init__(cid)
        self.meter = meter
        self.config.update({"reverse": False, "ct_type": "50A"})

    def meters(self) -> list[MeterChannel]:
        return [self.meter]

    def apply_config(self) -> None:
        self.meter.reverse = bool(self.config.get("reverse"))

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        s = self.meter.sample()
        return {
            "id": self.id,
            "current": round(s.current_a, 3),
            "voltage": s.voltage_v,
            "act_power": round(s.power_w, 1),
            "aprt_power": round(s.apparent_power_va, 1),
            "pf": round(s.pf, 2) if s.power_w else 0.0,
            "freq": s.freq_hz,
            "calibration": "factory",
        }

    def power_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        st = self.status(ts, skew)
        if not _significant(self._last_power, st["act_power"]):
            return None
        self._last_power = st["act_power"]
        return {"act_power": st["act_power"], "current": st["current"]}


class EM1Data(Component):
    """``em1data:<id>``: the counters of an :class:`EM1` and its 1-minute history."""

    type = "em1data"
    api_name = "EM1Data"

    def __init__(self, cid: int, em1: EM1, first_record: float) -> None:
        super().__init__(cid)
        self.config = {}
        self.em1 = em1
        self.first_record = int(first_record // 60 + 1) * 60

    def status(self, ts: float, skew: int) -> dict[str, Any]:
        m = self.em1.meter
        return {
            "id": self.id,
            "total_act_energy": round(m.aenergy.total_wh, 2),
            "total_act_ret_energy": round(m.ret_aenergy.total_wh, 2),
        }

    def energy_delta(self, ts: float, skew: int) -> dict[str, Any] | None:
        st = self.status(ts, skew)
        st.pop("id")
        return st

    def methods(self) -> dict[str, Handler]:
        return {
            "GetRecords": self.get_records,
            "GetData": self.get_data,
            "ResetCounters": self.reset_counters,
            "DeleteAllData": self.delete_all_data,
        }

    def reset_counters(self, params: r.Params) -> None:
        self.em1.meter.reset_counters()

    def delete_all_data(self, params: r.Params) -> None:
        self.first_record = int(self.em1.meter.t // 60) * 60

    def _range(self) -> tuple[int, int]:
        end = int(self.em1.meter.t // 60) * 60
        return max(self.first_record, end - EMDATA_RETENTION_S), end

    def get_records(self, params: r.Params) -> dict[str, Any]:
        start, end = self._range()
        start = max(start, r.get_int(params, "ts", 0) // 60 * 60)
        if end <= start:
            return {"data_blocks": []}
        return {"data_blocks": [{"ts": start, "period": 60, "records": (end - start) // 60}]}

    def keys(self) -> list[str]:
        return [
            "total_act_energy", "total_act_ret_energy", "lag_react_energy", "lead_react_energy",
            "max_act_power", "min_act_power", "max_aprt_power", "min_aprt_power", "max_voltage",
            "min_voltage", "avg_voltage", "max_current", "min_current", "avg_current",
        ]  # fmt: skip

    def _row(self, minute: int) -> list[float]:
        full = minute_row(self.em1.meter, minute)
        return [full[0], full[2], *full[4:]]

    def get_data(self, params: r.Params) -> dict[str, Any]:
        return history(self, params, self._row, self.keys())


__all__ = ["EM", "EM1", "PM1", "Component", "EM1Data", "EMData", "Switch"]
