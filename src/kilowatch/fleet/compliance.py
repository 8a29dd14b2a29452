"""Profile compliance: per device, whether it matched its profile when last checked.

Every ``kilowatch fleet plan`` and ``apply`` (CLI or dashboard) records, per device it read, the
profile's name, the state (``in-sync``: nothing to change; ``drifted``: the changes, shortened;
``unreadable``: the device could not be read, with the error) and when it was checked. The Fleet
page shows it. It is one value in the store's meta (:data:`COMPLIANCE_KEY`), rewritten whole:
recording the same check again leaves the same value (safe to repeat). Two checks racing may
lose one device's newer line to the other's older read of the key; the next check restores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kilowatch.fleet.apply import ApplyReport, Status
from kilowatch.fleet.plan import Change, DevicePlan
from kilowatch.store.protocol import Store

COMPLIANCE_KEY = "fleet.compliance"
"""Meta key: ``{device: {"profile", "state", "changes", "error", "checked"}}``."""
MAX_CHANGES = 12
"""Changes kept per drifted device (a profile rarely drifts in more fields; the plan has all)."""
MAX_TEXT = 160
"""Characters kept of one change or error (a script's body never gets here, but a long value
such as a certificate's fingerprint might)."""


class State(StrEnum):
    IN_SYNC = "in-sync"
    DRIFTED = "drifted"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Compliance:
    """One device's last check against ``profile`` (a file name) at ``checked`` (unix s)."""

    device: str
    profile: str
    state: State
    checked: float
    changes: tuple[str, ...] = ()
    """``field: actual → desired``, shortened; never a secret (plans hold none)."""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "state": self.state.value,
            "changes": list(self.changes),
            "error": self.error,
            "checked": self.checked,
        }

    @classmethod
    def from_json(cls, device: str, data: Mapping[str, Any]) -> Compliance:
        return cls(
            device=device,
            profile=str(data.get("profile", "")),
            state=State(data.get("state", State.UNREADABLE.value)),
            checked=float(data.get("checked", 0.0)),
            changes=tuple(str(c) for c in data.get("changes", ())),
            error=None if data.get("error") is None else str(data["error"]),
        )


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _changes(changes: Iterable[Change]) -> tuple[str, ...]:
    pending = [c for c in changes if not c.advisory]
    return tuple(_short(str(c)) for c in pending[:MAX_CHANGES])


def from_plans(profile: str, plans: Iterable[DevicePlan], now: float) -> list[Compliance]:
    """The compliance a plan found, per device."""
    out = []
    for plan in plans:
        if plan.error is not None:
            out.append(
                Compliance(plan.device, profile, State.UNREADABLE, now,
                           error=_short(plan.error.message))
            )  # fmt: skip
        elif plan.pending:
            out.append(Compliance(plan.device, profile, State.DRIFTED, now, _changes(plan.pending)))
        else:
            out.append(Compliance(plan.device, profile, State.IN_SYNC, now))
    return out


def from_report(profile: str, report: ApplyReport, now: float) -> list[Compliance]:
    """The compliance an apply leaves: ``ok`` (verified) and ``unchanged`` devices are in sync;
    a failed device keeps the drift its first plan found (unreadable when it found none); a dry
    run's ``planned`` devices are drifted."""
    out = []
    for result in report.devices:
        if result.status in (Status.OK, Status.UNCHANGED):
            out.append(Compliance(result.device, profile, State.IN_SYNC, now))
            continue
        error = None if result.error is None else _short(result.error.message)
        changes = _changes(result.changes)
        state = State.DRIFTED if changes else State.UNREADABLE
        out.append(Compliance(result.device, profile, state, now, changes, error))
    return out


async def record(store: Store, checks: Iterable[Compliance]) -> None:
    """Keep ``checks`` in the store (one read and one write of :data:`COMPLIANCE_KEY`); other
    devices' lines stay as they are."""
    checks = list(checks)
    if not checks:
        return
    stored = await store.get_meta(COMPLIANCE_KEY)
    data: dict[str, Any] = dict(stored) if isinstance(stored, Mapping) else {}
    for check in checks:
        data[check.device] = check.to_json()
    await store.put_meta(COMPLIANCE_KEY, data)


async def compliance(store: Store) -> dict[str, Compliance]:
    """Every device's last check, by device id (a line that does not parse is left out)."""
    stored = await store.get_meta(COMPLIANCE_KEY)
    if not isinstance(stored, Mapping):
        return {}
    out = {}
    for device, data in stored.items():
        if not isinstance(data, Mapping):
            continue
        try:
            out[str(device)] = Compliance.from_json(str(device), data)
        except (TypeError, ValueError):
            continue
    return out


__all__ = [
    "COMPLIANCE_KEY",
    "MAX_CHANGES",
    "Compliance",
    "State",
    "compliance",
    "from_plans",
    "from_report",
    "record",
]
