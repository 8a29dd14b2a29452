"""Measured energy for estimated slots (:meth:`Store.replace_estimated`): the checks of the
values, shared by every backend (as :mod:`kilowatch.store.registry` is for the registry)."""

from __future__ import annotations

from collections.abc import Sequence

from kilowatch.errors import UnstorableError
from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy

MWH_MAX = 2**53 - 1
"""The largest measured energy of one slot (~9 TWh): what every backend holds exactly (Redis's
Lua scripts compute with doubles)."""

Measured = tuple[str, str, int, int, int]
"""``(device, channel, slot, import mWh, export mWh)``: one slot's measured energy."""


def check_measured(measured: Sequence[SlotEnergy]) -> list[Measured]:
    """The slots of ``measured`` as plain tuples, in order, each once, after checking that a store
    can hold them: :class:`UnstorableError` (naming the slot) for an amount that is not an
    ``int`` (a ``bool`` neither), is negative (a slot's whole energy, unlike a delta, cannot be),
    or beyond 64 bits; or for one slot given two different amounts. Nothing is written when one
    fails. A slot start that is not on the 15-minute grid names no slot: it is dropped (like an
    unknown device, it replaces nothing)."""
    out: dict[tuple[str, str, int], Measured] = {}
    for m in measured:
        where = f"{m.device!r} {m.channel!r} slot {m.slot!r}"
        if not isinstance(m.slot, int) or isinstance(m.slot, bool):
            raise UnstorableError(f"measured energy of {where}: the slot is not an integer",
                                  detail=f"slot={m.slot!r}")  # fmt: skip
        for name, value in (("import_mwh", m.import_mwh), ("export_mwh", m.export_mwh)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise UnstorableError(
                    f"measured energy of {where}: {name} is not an integer mWh: {value!r}",
                    detail=f"{name}={value!r}",
                )
            if not 0 <= value <= MWH_MAX:
                raise UnstorableError(
                    f"measured energy of {where}: {name} {value} is out of range "
                    f"(0 to {MWH_MAX} mWh: a slot's whole energy is never negative)",
                    detail=f"{name}={value!r}",
                )
        if not isinstance(m.device, str) or not isinstance(m.channel, str):
            continue  # names no stored channel
        if m.slot % SLOT_SECONDS:
            continue  # not a slot start: no such slot
        key = (m.device, m.channel, m.slot)
        row = (m.device, m.channel, m.slot, m.import_mwh, m.export_mwh)
        seen = out.get(key)
        if seen is not None and seen != row:
            raise UnstorableError(
                f"measured energy of {where} given twice with different amounts",
                detail=f"{seen[3:]} and {row[3:]}",
            )
        out[key] = row
    return list(out.values())


__all__ = ["MWH_MAX", "Measured", "check_measured"]
