"""Device history, the pure part: which components keep records, which of kilowatch's channels
they measure, and ``GetData`` answers → measured energy per slot (``shared/shelly-api.md`` §13.5).

A record is one minute: the energy that flowed *within* it, in Wh. Fifteen of them measure a
slot; a slot with a missing minute is never guessed. No I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from kilowatch.errors import DeviceError
from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy, slot_of

RECORD_PERIOD_S = 60
"""The records' period: one row per minute (§13.5, ``"period": 60``). Rows of any other period
are not understood; their slots stay estimated."""
RECORDS_PER_SLOT = SLOT_SECONDS // RECORD_PERIOD_S
"""15: the rows that measure one slot."""
HISTORY_TYPES = ("emdata", "em1data")
"""Component types that keep records (§13.3, §13.4), as in ``Shelly.GetStatus`` keys."""
_PHASES = ("a", "b", "c")


# --- which components and channels ----------------------------------------------------------------


def history_components(status: Mapping[str, Any]) -> list[str]:
    """The components of a ``Shelly.GetStatus`` answer that keep history (``emdata:0``,
    ``em1data:1``...), sorted."""
    return sorted(key for key in status if _split(key) is not None)


def history_channels(component: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """kilowatch's channels measured by ``component``'s records: channel → (import keys,
    export keys), the record columns whose sum is the channel's energy.

    ``emdata:N`` measures the phases ``em:N/a|b|c`` and their sum ``em:N`` (the channel the
    decoder fills from ``total_act``); ``em1data:N`` measures ``em1:N``. Raises ``ValueError``
    for a component that keeps no history."""
    split = _split(component)
    if split is None:
        raise ValueError(f"{component!r} keeps no history (expected emdata:N or em1data:N)")
    kind, cid = split
    if kind == "em1data":
        return {f"em1:{cid}": (("total_act_energy",), ("total_act_ret_energy",))}
    imports = tuple(f"{p}_total_act_energy" for p in _PHASES)
    exports = tuple(f"{p}_total_act_ret_energy" for p in _PHASES)
    out = {f"em:{cid}": (imports, exports)}
    for p, imp, exp in zip(_PHASES, imports, exports, strict=True):
        out[f"em:{cid}/{p}"] = ((imp,), (exp,))
    return out


def _split(component: str) -> tuple[str, int] | None:
    kind, sep, cid = component.partition(":")
    if not sep or kind not in HISTORY_TYPES or not cid.isdigit():
        return None
    return kind, int(cid)


# --- records → slots (pure) -----------------------------------------------------------------------


def slot_energy_from_records(
    device: str,
    component: str,
    answers: Iterable[Mapping[str, Any]],
    *,
    start: int,
    end: int,
) -> list[SlotEnergy]:
    """Measured energy per slot and channel from ``component``'s ``GetData`` answers (each
    ``{"keys", "data": [{"ts", "period", "values"}], ...}`` as the device sent it).

    Only slots lying wholly in ``[start, end)`` and covered by all 15 of their one-minute
    records are measured; a slot with a missing minute, or whose records hold a value that is
    not a non-negative number, is left out for that channel (never guessed). Rows repeated
    across answers count once. Energies: the rows' Wh summed exactly (``math.fsum``) and turned
    into mWh with one rounding per slot and channel, ``round(wh * 1000)`` as the ledger turns
    counters (rule 1): records carrying 3 decimals (whole mWh) give exactly their sum; records
    with more decimals lose at most 0.5 mWh per slot, never 0.5 mWh per row. The results are
    values (``estimated`` false), sorted by channel and slot.

    Raises :class:`~kilowatch.errors.DeviceError` when an answer is not shaped as §13.5 says
    (no ``keys``, rows that are not lists) and ``ValueError`` for a component that keeps no
    history.
    """
    channels = history_channels(component)
    needed = sorted({key for pair in channels.values() for keys in pair for key in keys})
    rows = _rows_by_slot(device, component, answers, needed, start=start, end=end)
    out: list[SlotEnergy] = []
    for channel, (import_keys, export_keys) in channels.items():
        for slot in sorted(rows):
            minutes = rows[slot]
            if len(minutes) != RECORDS_PER_SLOT:
                continue
            imported = _slot_sum(minutes.values(), import_keys)
            exported = _slot_sum(minutes.values(), export_keys)
            if imported is not None and exported is not None:
                out.append(SlotEnergy(device, channel, slot, imported, exported))
    return out


def _rows_by_slot(
    device: str,
    component: str,
    answers: Iterable[Mapping[str, Any]],
    needed: Sequence[str],
    *,
    start: int,
    end: int,
) -> dict[int, dict[int, dict[str, Any]]]:
    """slot → minute → {key: value} of the one-minute records wholly inside ``[start, end)``,
    only the ``needed`` columns (a day of EMData rows has 51 values a minute)."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    width = 0
    columns: dict[str, int] | None = None
    for answer in answers:
        keys = answer.get("keys")
        if keys is not None:
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise DeviceError(device, f"{component} GetData: keys is not a list of names")
            width, columns = len(keys), {k: i for i, k in enumerate(keys)}
        for ts, period, values in _blocks(device, component, answer):
            if columns is None:
                raise DeviceError(
                    device, f"{component} GetData answered rows without their keys (add_keys)"
                )
            if period != RECORD_PERIOD_S:
                continue
            for n, row in enumerate(values):
                minute = ts + n * period
                if minute < start or minute + period > end or minute % period:
                    continue
                if not isinstance(row, list) or len(row) != width:
                    raise DeviceError(
                        device, f"{component} GetData: the row of {minute} does not match its keys"
                    )
                minutes = out.setdefault(slot_of(minute), {})
                if minute not in minutes:  # an overlapping chunk repeats a minute: the first stands
                    minutes[minute] = {k: row[columns[k]] if k in columns else None for k in needed}
    return out


def _blocks(
    device: str, component: str, answer: Mapping[str, Any]
) -> Iterable[tuple[int, int, list[Any]]]:
    data = answer.get("data", [])
    if not isinstance(data, list):
        raise DeviceError(device, f"{component} GetData: data is not a list")
    for block in data:
        ts = block.get("ts") if isinstance(block, dict) else None
        period = block.get("period") if isinstance(block, dict) else None
        values = block.get("values") if isinstance(block, dict) else None
        if not _is_int(ts) or not _is_int(period) or not isinstance(values, list):
            raise DeviceError(device, f"{component} GetData: a data block lacks ts/period/values")
        yield ts, period, values


def _slot_sum(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> int | None:
    values: list[float] = []
    for row in rows:
        for key in keys:
            value = row.get(key)
            if not _is_energy(value):
                return None
            values.append(value)
    return round(math.fsum(values) * 1000)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_energy(value: Any) -> TypeGuard[int | float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def merged_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted slot starts → ``[start, end)`` ranges, adjacent slots in one range."""
    out: list[tuple[int, int]] = []
    for slot in sorted(set(slots)):
        if out and out[-1][1] == slot:
            out[-1] = (out[-1][0], slot + SLOT_SECONDS)
        else:
            out.append((slot, slot + SLOT_SECONDS))
    return out


__all__ = [
    "HISTORY_TYPES",
    "RECORDS_PER_SLOT",
    "RECORD_PERIOD_S",
    "history_channels",
    "history_components",
    "merged_ranges",
    "slot_energy_from_records",
]
