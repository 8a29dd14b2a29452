"""The range an energy query covers when its asker leaves ``from`` or ``to`` out.

One rule for the API, the pages and the CLI, so they cannot drift: a missing start is the start of
the current local day (by ``15min`` or ``hour``), month (by ``day``) or year (by ``month``); a
missing end is one such period after the start of the period that holds the start. Pure: the
clock is an argument, and steps are calendar steps in the zone (a DST day is 23 or 25 hours).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from kilowatch.query.energy import Bucket


def period_start(by: Bucket, anchor: datetime) -> datetime:
    """Start of the day/month/year (by the bucket size) that holds local ``anchor``."""
    tz = anchor.tzinfo
    if by in ("15min", "hour"):
        return datetime(anchor.year, anchor.month, anchor.day, tzinfo=tz)
    if by == "day":
        return datetime(anchor.year, anchor.month, 1, tzinfo=tz)
    return datetime(anchor.year, 1, 1, tzinfo=tz)


def shift_period(by: Bucket, start: datetime, steps: int) -> datetime:
    """The local day/month/year ``steps`` periods after ``start`` (calendar steps, DST-safe)."""
    tz = start.tzinfo
    if by in ("15min", "hour"):
        d = start.date() + timedelta(days=steps)
        return datetime(d.year, d.month, d.day, tzinfo=tz)
    if by == "day":
        months = start.year * 12 + start.month - 1 + steps
        return datetime(months // 12, months % 12 + 1, 1, tzinfo=tz)
    return datetime(start.year + steps, 1, 1, tzinfo=tz)


def query_range(
    by: Bucket,
    tz: ZoneInfo,
    *,
    now: float,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[datetime, datetime]:
    """``(start, end)`` of a query by ``by`` in ``tz``, the missing ones filled in (see module).

    ``start`` and ``end``, when given, are aware datetimes and are returned as they are; ``now``
    is unix time. The result may be empty or reversed when both are given (or ``end`` is before
    the current period): checking that is the caller's job, with its own words.
    """
    if start is None:
        start = period_start(by, datetime.fromtimestamp(now, UTC).astimezone(tz))
    if end is None:
        end = shift_period(by, period_start(by, start.astimezone(tz)), 1)
    return start, end


__all__ = ["period_start", "query_range", "shift_period"]
