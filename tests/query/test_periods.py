"""Local-time buckets over UTC slots, around DST transitions and in odd-offset zones."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilowatch.errors import InvalidQueryError
from kilowatch.query.periods import Plan, decompose, plan, segments


def spans(p: Plan) -> list[tuple[str, str, int]]:
    """(local start, local end, real seconds) of every bucket."""
    out = []
    for key in p.keys():  # noqa: SIM118 - Plan.keys() is a method, not a dict view
        lo, hi = p.period(key)
        a, b = p.label(key)
        out.append((a.isoformat(), b.isoformat(), hi - lo))
    return out


def test_sofia_spring_forward_day_has_23_hours() -> None:
    p = plan("hour", "Europe/Sofia", date(2026, 3, 29), date(2026, 3, 30))
    got = spans(p)
    assert len(got) == 23
    assert all(seconds == 3600 for *_, seconds in got)
    assert got[2][:2] == ("2026-03-29T02:00:00+02:00", "2026-03-29T04:00:00+03:00")
    assert got[3][0] == "2026-03-29T04:00:00+03:00"
    day = plan("day", "Europe/Sofia", date(2026, 3, 29), date(2026, 3, 30))
    assert spans(day) == [("2026-03-29T00:00:00+02:00", "2026-03-30T00:00:00+03:00", 23 * 3600)]


def test_sofia_fall_back_day_has_25_hours_with_03_twice() -> None:
    p = plan("hour", "Europe/Sofia", date(2026, 10, 25), date(2026, 10, 26))
    got = spans(p)
    assert len(got) == 25
    assert [a for a, _, _ in got[3:5]] == ["2026-10-25T03:00:00+03:00", "2026-10-25T03:00:00+02:00"]
    assert sum(s for *_, s in got) == 25 * 3600


def test_new_york_transitions() -> None:
    spring = plan("hour", "America/New_York", date(2026, 3, 8), date(2026, 3, 9))
    fall = plan("hour", "America/New_York", date(2026, 11, 1), date(2026, 11, 2))
    assert (len(spring.keys()), len(fall.keys())) == (23, 25)
    assert spans(spring)[2][0] == "2026-03-08T03:00:00-04:00"
    assert [a for a, _, _ in spans(fall)[1:3]] == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
    ]


def test_kolkata_hours_start_at_half_past_utc() -> None:
    p = plan("hour", "Asia/Kolkata", date(2026, 1, 1), date(2026, 1, 2))
    keys = p.keys()
    assert len(keys) == 24
    assert all(datetime.fromtimestamp(k, UTC).minute == 30 for k in keys)
    assert p.key(keys[1] - 900) == keys[0] and p.key(keys[1]) == keys[1]
    assert not p.whole_hours  # the hour rollups cannot answer it


def test_lord_howe_half_hour_dst() -> None:
    back = spans(plan("hour", "Australia/Lord_Howe", date(2026, 4, 5), date(2026, 4, 6)))
    assert sum(s for *_, s in back) == int(24.5 * 3600)
    assert back[1] == ("2026-04-05T01:00:00+11:00", "2026-04-05T01:30:00+10:30", 3600)
    assert back[2] == ("2026-04-05T01:30:00+10:30", "2026-04-05T02:00:00+10:30", 1800)
    forward = spans(plan("hour", "Australia/Lord_Howe", date(2026, 10, 4), date(2026, 10, 5)))
    assert sum(s for *_, s in forward) == int(23.5 * 3600)
    assert forward[2] == ("2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00", 1800)


def test_months_and_whole_hours() -> None:
    p = plan("month", "Europe/Sofia", date(2026, 1, 1), date(2027, 1, 1))
    got = spans(p)
    assert len(got) == 12
    assert got[2] == (
        "2026-03-01T00:00:00+02:00",
        "2026-04-01T00:00:00+03:00",
        (31 * 24 - 1) * 3600,
    )
    assert got[9][2] == (31 * 24 + 1) * 3600  # October has the 25-hour day
    assert p.whole_hours
    assert len(segments(ZoneInfo("Europe/Sofia"), p.start, p.end)) == 3


def test_partial_ranges_are_clipped_and_widened_to_slots() -> None:
    tz = ZoneInfo("Europe/Sofia")
    p = plan("day", "Europe/Sofia", datetime(2026, 5, 1, 12, 20, tzinfo=tz), date(2026, 5, 3))
    assert spans(p)[0][:2] == ("2026-05-01T12:15:00+03:00", "2026-05-02T00:00:00+03:00")
    assert not p.whole_hours


def test_bad_queries() -> None:
    with pytest.raises(InvalidQueryError, match="unknown time zone 'Nowhere/City'"):
        plan("hour", "Nowhere/City", date(2026, 1, 1), date(2026, 1, 2))
    with pytest.raises(InvalidQueryError, match="unknown bucket 'week'"):
        plan("week", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    with pytest.raises(InvalidQueryError, match="empty time range"):
        plan("hour", "UTC", date(2026, 1, 1), date(2026, 1, 1))


ZONES = [
    "Europe/Sofia",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "UTC",
]


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    by=st.sampled_from(["15min", "hour", "day", "month"]),
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
    hours=st.integers(min_value=1, max_value=24 * 70),
)
def test_buckets_tile_the_range_and_agree_with_wall_clock(
    zone: str, by: str, start: datetime, hours: int
) -> None:
    """Buckets are contiguous, cover the range exactly, and every slot's bucket holds it and has
    the slot's local hour/day/month (reference: zoneinfo, one slot at a time)."""
    tz = ZoneInfo(zone)
    aware = start.replace(tzinfo=UTC)
    p = plan(by, zone, aware, aware + timedelta(hours=hours))
    keys = p.keys()
    edges = [p.period(k) for k in keys]
    assert edges[0][0] == p.start and edges[-1][1] == p.end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))
    for t in range(p.start, p.end, 900 * 7):  # a sample of slots
        key = p.key(t)
        lo, hi = p.period(key)
        assert lo <= t < hi
        local, first = datetime.fromtimestamp(t, tz), datetime.fromtimestamp(lo, tz)
        if by == "hour":
            assert (local.date(), local.hour, local.utcoffset()) == (
                first.date(),
                first.hour,
                first.utcoffset(),
            )
        elif by == "day":
            assert local.date() == first.date()
        elif by == "month":
            assert (local.year, local.month) == (first.year, first.month)


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(0, 40 * 96), length=st.integers(1, 70 * 96))
def test_decompose_covers_each_slot_exactly_once(lo: int, length: int) -> None:
    """Summing the signed rollups slot by slot gives 1 inside the range and 0 outside."""
    start, end = lo * 900, (lo + length) * 900
    terms: list[tuple[int, int, int, int, int]] = []
    decompose(7, start, end, terms)
    weight: dict[int, int] = {}
    for key, level, a, b, sign in terms:
        assert key == 7 and a % level == 0 and b % level == 0 and a < b
        for t in range(a, b, 900):
            weight[t] = weight.get(t, 0) + sign
    assert {t: w for t, w in weight.items() if w} == dict.fromkeys(range(start, end, 900), 1)
    assert len(terms) <= 6 * (length // 96 + 2)


def test_a_local_day_is_few_rollup_rows() -> None:
    p = plan("day", "Europe/Sofia", date(2026, 6, 1), date(2026, 6, 2))
    assert [(lvl, b - a, s) for _, lvl, a, b, s in p.terms()] == [
        (3600, 3 * 3600, 1),
        (86400, 86400, 1),
        (3600, 3 * 3600, -1),
    ]
    month = plan("month", "Asia/Kolkata", date(2026, 6, 1), date(2026, 7, 1)).terms()
    assert len(month) <= 8


@pytest.mark.parametrize(("by", "tz"), [("15min", "Asia/Kathmandu"), ("hour", "Europe/Sofia")])
def test_keys_are_starts_when_each_row_is_a_bucket(by: str, tz: str) -> None:
    p = plan(by, tz, date(2026, 3, 28), date(2026, 3, 31))
    step = 900 if by == "15min" else 3600
    assert p.keys_are_starts
    assert all(p.key(t) == t for t in range(p.start, p.end, step))
    assert not plan("hour", "Asia/Kolkata", date(2026, 3, 28), date(2026, 3, 31)).keys_are_starts
