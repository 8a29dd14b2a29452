"""What a user asks of the energy store, and one answer row: the query vocabulary every backend,
the API and the CLI share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Bucket = Literal["15min", "hour", "day", "month"]
Grouping = Literal["channel", "device", "total"]


@dataclass(frozen=True, slots=True)
class EnergyQuery:
    """Energy per bucket of local time in ``tz`` over ``[start, end)`` (aware datetimes or
    dates)."""

    by: Bucket
    tz: str
    start: datetime
    end: datetime
    devices: tuple[str, ...] = ()
    """Empty: every device."""
    channels: tuple[str, ...] = ()
    """Empty: every channel."""
    group: Grouping = "channel"


@dataclass(frozen=True, slots=True)
class EnergyRow:
    device: str | None
    """``None`` when grouped over all devices."""
    channel: str | None
    """``None`` when grouped over channels."""
    start: datetime
    end: datetime
    energy_wh: float
    returned_energy_wh: float
    estimated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "channel": self.channel,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "energy_wh": self.energy_wh,
            "returned_energy_wh": self.returned_energy_wh,
            "estimated": self.estimated,
        }


__all__ = ["Bucket", "EnergyQuery", "EnergyRow", "Grouping"]
