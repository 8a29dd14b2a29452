"""Energy prices: a flat price or time-of-use periods, applied per slot (pure, no I/O, no clock).

A time-of-use tariff is a list of local-time ranges (``"07:00"``–``"22:00"``, optionally only on
some weekdays) each with its price per kWh; a slot takes the price of the first period that
contains its local start time, else the tariff's base price. Ranges may wrap past midnight
(``22:00``–``07:00``).
Prices must apply to whole 15-minute slots, so period bounds are multiples of 15 minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from kilowatch.errors import ConfigError
from kilowatch.model.slots import SLOT_SECONDS

MINUTES_PER_DAY = 24 * 60
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _parse_hhmm(text: str) -> int:
    """``"07:30"`` → 450 minutes after midnight; ``"24:00"`` is allowed as an end."""
    try:
        hh, mm = text.strip().split(":")
        minutes = int(hh) * 60 + int(mm)
    except ValueError:
        raise ConfigError(f"time {text!r} is not HH:MM (e.g. 07:00)") from None
    if not 0 <= minutes <= MINUTES_PER_DAY or not 0 <= int(mm) < 60:
        raise ConfigError(f"time {text!r} is outside 00:00–24:00")
    if minutes % (SLOT_SECONDS // 60):
        raise ConfigError(f"time {text!r} is not on a 15-minute boundary (prices apply per slot)")
    return minutes


def _fmt_hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class Period:
    """``[start, end)`` in local minutes after midnight; ``end <= start`` wraps past midnight."""

    start: int
    end: int
    price: float
    days: frozenset[int] = frozenset(range(7))
    """Weekdays it applies on (Monday = 0), judged by the slot's local date."""

    def contains(self, minute: int, weekday: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # Wrapping period: the part after midnight belongs to the previous day's period.
        if minute >= self.start:
            return weekday in self.days
        return minute < self.end and (weekday - 1) % 7 in self.days

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": _fmt_hhmm(self.start),
            "end": _fmt_hhmm(self.end),
            "price": self.price,
        }
        if self.days != frozenset(range(7)):
            out["days"] = [WEEKDAYS[d] for d in sorted(self.days)]
        return out


@dataclass(frozen=True, slots=True)
class Tariff:
    """Prices per kWh in ``currency``: ``price`` unless a time-of-use period matches."""

    currency: str = "EUR"
    price: float = 0.0
    export_price: float = 0.0
    """Paid per kWh returned to the grid (feed-in); subtracted from cost."""
    periods: tuple[Period, ...] = field(default=())

    def price_at(self, slot_start: int, tz: ZoneInfo) -> float:
        """Import price per kWh for the slot starting at unix second ``slot_start``."""
        if not self.periods:
            return self.price
        local = datetime.fromtimestamp(slot_start, UTC).astimezone(tz)
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        for period in self.periods:
            if period.contains(minute, weekday):
                return period.price
        return self.price

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "price": self.price,
            "export_price": self.export_price,
            "periods": [p.to_json() for p in self.periods],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tariff:
        """Validate a tariff as the API and settings page send it (``ConfigError`` if wrong)."""
        if not isinstance(data, Mapping):
            raise ConfigError("tariff must be an object")
        currency = str(data.get("currency", "EUR")).strip().upper()
        if not (1 <= len(currency) <= 8 and currency.isalnum()):
            raise ConfigError(f"currency {currency!r} is not a currency code such as EUR or USD")
        price = _price(data.get("price", 0.0), "price")
        export_price = _price(data.get("export_price", 0.0), "export_price")
        raw_periods = data.get("periods") or []
        if not isinstance(raw_periods, list):
            raise ConfigError("periods must be a list of {start, end, price}")
        periods = tuple(_period(p, i) for i, p in enumerate(raw_periods))
        return cls(currency=currency, price=price, export_price=export_price, periods=periods)


def _price(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a number (price per kWh)")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} {value!r} is not a number") from None
    if not 0 <= number < 1_000_000:
        raise ConfigError(f"{name} {number} must be between 0 and 1000000 per kWh")
    return number


def _period(data: Any, index: int) -> Period:
    if not isinstance(data, Mapping):
        raise ConfigError(f"period {index + 1} must be an object with start, end and price")
    start = _parse_hhmm(str(data.get("start", "")))
    end = _parse_hhmm(str(data.get("end", "")))
    if start in (end, MINUTES_PER_DAY):
        raise ConfigError(f"period {index + 1} ({_fmt_hhmm(start)}–{_fmt_hhmm(end)}) is empty")
    days_raw = data.get("days")
    days = frozenset(range(7))
    if days_raw is not None:
        if not isinstance(days_raw, list) or not days_raw:
            raise ConfigError(f"period {index + 1}: days must be a list such as ['mon', 'tue']")
        try:
            days = frozenset(WEEKDAYS.index(str(d).lower()[:3]) for d in days_raw)
        except ValueError:
            raise ConfigError(
                f"period {index + 1}: days must be among {', '.join(WEEKDAYS)}"
            ) from None
    return Period(
        start=start, end=end % MINUTES_PER_DAY, price=_price(data.get("price"), "price"), days=days
    )


def parse_periods_text(text: str) -> list[dict[str, Any]]:
    """The settings page's one-period-per-line text: ``07:00-22:00 0.30 [mon,tue,...]``."""
    periods: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or "-" not in parts[0]:
            raise ConfigError(
                f"line {number} {line!r} is not like '07:00-22:00 0.30' (optionally 'mon,tue')"
            )
        start, end = parts[0].split("-", 1)
        period: dict[str, Any] = {"start": start, "end": end, "price": parts[1]}
        if len(parts) == 3:
            period["days"] = parts[2].split(",")
        periods.append(period)
    return periods


def periods_text(tariff: Tariff) -> str:
    """Inverse of :func:`parse_periods_text`, for the settings form."""
    lines = []
    for p in tariff.periods:
        line = f"{_fmt_hhmm(p.start)}-{_fmt_hhmm(p.end)} {p.price:g}"
        if p.days != frozenset(range(7)):
            line += " " + ",".join(WEEKDAYS[d] for d in sorted(p.days))
        lines.append(line)
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SlotAmount:
    """Energy of one slot (Wh): what the cost function consumes."""

    slot: int
    energy_wh: float
    returned_energy_wh: float = 0.0


def cost(slots: Iterable[SlotAmount], tariff: Tariff, tz: ZoneInfo) -> float:
    """Import cost minus export credit of ``slots``, in the tariff's currency."""
    total = 0.0
    for s in slots:
        total += s.energy_wh / 1000.0 * tariff.price_at(s.slot, tz)
        total -= s.returned_energy_wh / 1000.0 * tariff.export_price
    return total


__all__ = [
    "Period",
    "SlotAmount",
    "Tariff",
    "cost",
    "parse_periods_text",
    "periods_text",
]
