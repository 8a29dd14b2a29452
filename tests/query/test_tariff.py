"""The tariff module: flat and time-of-use prices per slot, validation, the settings-form text."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilowatch.errors import ConfigError
from kilowatch.query.tariff import SlotAmount, Tariff, cost, parse_periods_text, periods_text

BERLIN = ZoneInfo("Europe/Berlin")
TOU = Tariff.from_json(
    {
        "currency": "eur",
        "price": 0.30,
        "export_price": 0.08,
        "periods": [
            {"start": "22:00", "end": "06:00", "price": 0.12},
            {
                "start": "17:00",
                "end": "20:00",
                "price": 0.45,
                "days": ["mon", "tue", "wed", "thu", "fri"],
            },
        ],
    }
)


def at(*args: int) -> int:
    return int(datetime(*args, tzinfo=BERLIN).timestamp())  # type: ignore[misc]


def test_flat_price() -> None:
    flat = Tariff(price=0.25)
    slots = [SlotAmount(at(2026, 3, 15, h), 1000.0, 0.0) for h in range(24)]
    assert cost(slots, flat, BERLIN) == pytest.approx(24 * 0.25)


@pytest.mark.parametrize(
    ("when", "price"),
    [
        ((2026, 3, 16, 5, 45), 0.12),  # Monday early morning: the night period wrapped from Sunday
        ((2026, 3, 16, 6, 0), 0.30),  # end is exclusive
        ((2026, 3, 16, 17, 0), 0.45),  # weekday peak
        ((2026, 3, 15, 17, 0), 0.30),  # Sunday: no peak
        ((2026, 3, 15, 22, 0), 0.12),
        ((2026, 3, 15, 23, 45), 0.12),
    ],
)
def test_time_of_use_uses_local_time(when: tuple[int, ...], price: float) -> None:
    assert TOU.price_at(at(*when), BERLIN) == price


def test_dst_day_prices_follow_the_wall_clock() -> None:
    # 29 March 2026: clocks jump 02:00 → 03:00 in Berlin; 06:00 local is 04:00 UTC that day.
    slot = int(datetime(2026, 3, 29, 4, 0, tzinfo=ZoneInfo("UTC")).timestamp())
    assert TOU.price_at(slot, BERLIN) == 0.30
    assert TOU.price_at(slot - 900, BERLIN) == 0.12


def test_export_is_credited() -> None:
    slots = [SlotAmount(at(2026, 3, 15, 12), 2000.0, 1000.0)]
    assert cost(slots, TOU, BERLIN) == pytest.approx(2 * 0.30 - 1 * 0.08)


def test_round_trip_through_json_and_form_text() -> None:
    assert Tariff.from_json(TOU.to_json()) == TOU
    text = periods_text(TOU)
    assert text.splitlines() == ["22:00-06:00 0.12", "17:00-20:00 0.45 mon,tue,wed,thu,fri"]
    again = Tariff.from_json({**TOU.to_json(), "periods": parse_periods_text(text)})
    assert again == TOU
    assert TOU.currency == "EUR"


@pytest.mark.parametrize(
    "bad",
    [
        {"price": "abc"},
        {"price": True},
        {"price": -0.1},
        {"currency": "e u r"},
        {"periods": [{"start": "7", "end": "8:00", "price": 1}]},
        {"periods": [{"start": "07:05", "end": "08:00", "price": 1}]},
        {"periods": [{"start": "24:00", "end": "08:00", "price": 1}]},
        {"periods": [{"start": "08:00", "end": "08:00", "price": 1}]},
        {"periods": [{"start": "08:00", "end": "09:00"}]},
        {"periods": [{"start": "08:00", "end": "09:00", "price": 1, "days": []}]},
        {"periods": {"start": "08:00"}},
    ],
)
def test_invalid_tariffs_say_what_is_wrong(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Tariff.from_json(bad)


def test_form_text_errors_name_the_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse_periods_text("07:00-08:00 0.1\ncheap at night")


@given(
    st.lists(st.integers(min_value=0, max_value=4 * 24 * 400), min_size=1, max_size=50),
    st.floats(min_value=0, max_value=5),
)
def test_cost_is_additive_over_slots(offsets: list[int], wh: float) -> None:
    base = at(2026, 1, 1)
    slots = [SlotAmount(base + 900 * o, wh, 0.0) for o in offsets]
    whole = cost(slots, TOU, BERLIN)
    parts = sum(cost([s], TOU, BERLIN) for s in slots)
    assert whole == pytest.approx(parts)
    assert whole >= 0
