"""The default range of an energy query (the API's and the CLI's): calendar periods, DST-exact."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from kilowatch.query import query_range
from kilowatch.query.energy import Bucket

SOFIA = ZoneInfo("Europe/Sofia")
NOW = datetime(2026, 10, 25, 12, 30, tzinfo=SOFIA).timestamp()
"""The day the clocks go back in Sofia: 25 hours."""


@pytest.mark.parametrize(
    ("by", "start", "end"),
    [
        ("15min", datetime(2026, 10, 25, tzinfo=SOFIA), datetime(2026, 10, 26, tzinfo=SOFIA)),
        ("hour", datetime(2026, 10, 25, tzinfo=SOFIA), datetime(2026, 10, 26, tzinfo=SOFIA)),
        ("day", datetime(2026, 10, 1, tzinfo=SOFIA), datetime(2026, 11, 1, tzinfo=SOFIA)),
        ("month", datetime(2026, 1, 1, tzinfo=SOFIA), datetime(2027, 1, 1, tzinfo=SOFIA)),
    ],
)
def test_nothing_given_is_the_current_period(by: Bucket, start: datetime, end: datetime) -> None:
    assert query_range(by, SOFIA, now=NOW) == (start, end)


def test_the_current_day_is_local_and_may_have_25_hours() -> None:
    start, end = query_range("hour", SOFIA, now=NOW)
    assert end.timestamp() - start.timestamp() == 25 * 3600
    # 23:30 UTC on the 24th is already the 25th in Sofia
    late = datetime(2026, 10, 24, 23, 30, tzinfo=UTC).timestamp()
    assert query_range("hour", SOFIA, now=late)[0] == datetime(2026, 10, 25, tzinfo=SOFIA)


def test_missing_end_is_one_period_after_the_period_of_start() -> None:
    mid_month = datetime(2026, 12, 15, 10, tzinfo=SOFIA)
    assert query_range("day", SOFIA, now=NOW, start=mid_month) == (
        mid_month,
        datetime(2027, 1, 1, tzinfo=SOFIA),
    )
    # a start in another offset is placed in the query's zone first: 23:00 UTC is the next day
    utc = datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert query_range("hour", SOFIA, now=NOW, start=utc)[1] == datetime(2026, 3, 30, tzinfo=SOFIA)


def test_given_bounds_are_kept_as_they_are() -> None:
    end = datetime(2026, 10, 20, tzinfo=SOFIA)
    assert query_range("hour", SOFIA, now=NOW, end=end) == (
        datetime(2026, 10, 25, tzinfo=SOFIA),
        end,
    ), "checking that the range is empty is the caller's job"
