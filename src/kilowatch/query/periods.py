"""Local-time buckets as ranges of UTC slots: the period arithmetic both store backends share.

Pure and deterministic (no clock, no I/O). A query's ``[start, end)`` is cut into *segments* of
constant UTC offset (at most a few per year: the zone's transitions). Inside a segment the local
time is
``utc + offset``, so for fixed-length buckets (15 min, hour, day) a slot's bucket is plain
arithmetic,
which SQL can evaluate in the database (``(slot + offset) / 3600``) instead of shipping every slot
to
Python. Months are cut by their boundaries, computed once per query.

Bucket rules:

- ``15min`` and ``hour`` buckets are cut at every offset change too, so a 25-hour day has 25 hour
  buckets (the repeated hour appears twice, with its two offsets) and a zone with a 30-minute DST
  shift
  (Australia/Lord_Howe) gets a 30-minute bucket on transition days.
- ``day`` and ``month`` buckets hold every instant of one local date / month: 23, 24 or 25 hours.
- Buckets are clipped to the query range.

Every real UTC offset is a multiple of 15 minutes, so every boundary falls on a slot boundary.
"""

from __future__ import annotations

import bisect
import functools
import operator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import repeat
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kilowatch.errors import InvalidQueryError
from kilowatch.model.slots import SLOT_SECONDS

BUCKET_SECONDS: dict[str, int] = {"15min": SLOT_SECONDS, "hour": 3600, "day": 86400}
"""Fixed-length buckets (in local time); ``month`` is cut by calendar boundaries instead."""

_SAMPLE_SECONDS = 6 * 3600
"""Offsets are sampled this often to find transitions (no zone changes twice within 6 hours)."""

_EPOCH_DATE = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Segment:
    """``[start, end)`` in unix seconds during which the zone's UTC offset is ``offset`` seconds."""

    start: int
    end: int
    offset: int


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; :class:`InvalidQueryError` if it does not exist."""
    try:
        return ZoneInfo(name)
    # a folder of the tz database ("Europe") is an IsADirectoryError, a very long name an OSError
    except (ZoneInfoNotFoundError, ValueError, OSError) as err:
        raise InvalidQueryError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Sofia or UTC"
        ) from err


def offset_at(tz: ZoneInfo, ts: int) -> int:
    """UTC offset (seconds east) of ``tz`` at unix time ``ts``."""
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def to_unix(value: datetime | date, tz: ZoneInfo) -> int:
    """A date (local midnight), naive datetime (local wall time) or aware datetime, as unix time."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return int(value.timestamp())


def segments(tz: ZoneInfo, start: int, end: int) -> list[Segment]:
    """Cut ``[start, end)`` into runs of constant offset (transitions located to the slot)."""
    out: list[Segment] = []
    seg_start, seg_off = start, offset_at(tz, start)
    t = start
    while t < end:
        nxt = min(t + _SAMPLE_SECONDS, end)
        off = offset_at(tz, nxt) if nxt < end else seg_off
        if off != seg_off:
            # bisect on the slot grid: first slot boundary in (t, nxt] where the offset differs
            lo, hi = t // SLOT_SECONDS, nxt // SLOT_SECONDS
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset_at(tz, mid * SLOT_SECONDS) == seg_off:
                    lo = mid
                else:
                    hi = mid
            change = hi * SLOT_SECONDS
            out.append(Segment(seg_start, change, seg_off))
            seg_start, seg_off = change, offset_at(tz, change)
            t = change
            continue
        t = nxt
    out.append(Segment(seg_start, end, seg_off))
    return out


@functools.lru_cache(maxsize=512)
def _segments(tz: ZoneInfo, start: int, end: int) -> tuple[Segment, ...]:
    """:func:`segments`, remembered: a year takes ~1 500 offset look-ups, and a dashboard asks the
    same ranges again and again. (Pure: the zone data does not change while we run.)"""
    return tuple(segments(tz, start, end))


def _local_midnight(day: date, tz: ZoneInfo) -> int:
    # fold=0: a midnight that does not exist (DST at 00:00) maps to the transition instant itself
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


def _month_bounds(tz: ZoneInfo, start: int, end: int) -> list[int]:
    first = datetime.fromtimestamp(start, tz).date().replace(day=1)
    bounds = [start]
    y, m = first.year, first.month
    while True:
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        t = _local_midnight(date(y, m, 1), tz)
        if t >= end:
            break
        bounds.append(t)
    bounds.append(end)
    return bounds


@dataclass(frozen=True, slots=True)
class Plan:
    """How slots in ``[start, end)`` map to local buckets of ``by`` in ``tz``.

    A bucket is identified by an integer *key*: the bucket's UTC start for ``15min`` and ``hour``,
    the
    local day number (days since 1970-01-01 in local time) for ``day``, and an index into
    :attr:`bounds` for ``month``. :meth:`key` computes it for one slot; :meth:`period` turns a key
    into
    the bucket's clipped ``(start, end)`` unix seconds; :meth:`label` into local aware datetimes.
    """

    by: str
    tz: ZoneInfo
    start: int
    end: int
    segments: tuple[Segment, ...]
    bounds: tuple[int, ...] = ()
    """Month boundaries (UTC), ``start`` first and ``end`` last; empty for other buckets."""

    @property
    def unit(self) -> int | None:
        """Fixed bucket length in local seconds, ``None`` for months."""
        return BUCKET_SECONDS.get(self.by)

    @property
    def whole_hours(self) -> bool:
        """Whether every bucket is a sum of whole UTC hours (hour rollups can answer the query)."""
        return (
            self.by != "15min"
            and self.start % 3600 == 0
            and self.end % 3600 == 0
            and all(s.offset % 3600 == 0 and s.start % 3600 == 0 for s in self.segments)
        )

    def _segment(self, ts: int) -> Segment:
        for seg in self.segments:
            if ts < seg.end:
                return seg
        return self.segments[-1]

    @property
    def keys_are_starts(self) -> bool:
        """Whether every stored slot (or, with :attr:`whole_hours`, hour) is a bucket of its own,
        so its start is its key: 15-minute buckets, and hour buckets over whole-hour offsets."""
        return self.by == "15min" or (self.by == "hour" and self.whole_hours)

    def key(self, ts: int) -> int:
        """Bucket key of the slot (or hour) starting at ``ts`` (which must lie in the range)."""
        if self.by == "month":
            return bisect.bisect_right(self.bounds, ts) - 1
        seg = self._segment(ts)
        if self.by == "day":
            return (ts + seg.offset) // 86400
        unit = BUCKET_SECONDS[self.by]
        return max(seg.start, (ts + seg.offset) // unit * unit - seg.offset)

    def period(self, key: int) -> tuple[int, int]:
        """Clipped ``(start, end)`` unix seconds of the bucket ``key``."""
        if self.by == "month":
            return self.bounds[key], self.bounds[key + 1]
        if self.by == "day":
            day = _EPOCH_DATE + timedelta(days=key)
            lo = _local_midnight(day, self.tz)
            hi = _local_midnight(day + timedelta(days=1), self.tz)
            return max(lo, self.start), min(hi, self.end)
        seg = self._segment(key)
        unit = BUCKET_SECONDS[self.by]
        naive_end = (key + seg.offset) // unit * unit + unit
        return key, min(naive_end - seg.offset, seg.end)

    def periods(self, keys: list[int]) -> list[tuple[int, int]]:
        """:meth:`period` of each of ``keys`` (ascending), walking the segments once instead of
        searching them per key (a year of hours is 8 760 keys)."""
        unit = self.unit
        if self.by not in ("15min", "hour") or unit is None:
            return [self.period(k) for k in keys]
        # Within a segment every key but the first is a local bucket start, so its end is
        # ``key + unit``; only the first (the segment's start, maybe mid-bucket) and the last
        # (clipped at the segment's end) need the full rule. Sums by ``map``: a year of hours is
        # 8 760 keys.
        ends: list[int] = []
        lo = 0
        for i, seg in enumerate(self.segments):
            hi = len(keys) if i == len(self.segments) - 1 else bisect.bisect_left(keys, seg.end, lo)
            if hi > lo:
                part = list(map(operator.add, keys[lo:hi], repeat(unit)))
                k = keys[lo]
                part[0] = (k + seg.offset) // unit * unit + unit - seg.offset
                part[-1] = min(part[-1], seg.end)
                ends += part
            lo = hi
        return list(zip(keys, ends, strict=True))

    def label(self, key: int) -> tuple[datetime, datetime]:
        """The bucket's start and end as aware local datetimes (with the offset in force)."""
        lo, hi = self.period(key)
        return self.local(lo), self.local(hi)

    def local(self, ts: int) -> datetime:
        """Unix time ``ts`` as an aware local datetime."""
        return datetime.fromtimestamp(ts, self.tz)

    def keys(self) -> list[int]:
        """Every bucket key in the range, in time order."""
        if self.by == "month":
            return list(range(len(self.bounds) - 1))
        out: list[int] = []
        t = self.start
        while t < self.end:
            k = self.key(t)
            out.append(k)
            t = self.period(k)[1]
        return out

    def terms(self) -> list[Term]:
        """Every bucket as signed ranges of day, hour and slot rollups (see :func:`decompose`)."""
        out: list[Term] = []
        for key in self.keys():
            lo, hi = self.period(key)
            decompose(key, lo, hi, out)
        return out


class LocalDays:
    """Local day numbers in one zone: ``(ts + utc offset at ts) // 86400``, the key
    :meth:`Plan.key` gives a slot for ``by="day"``, so rollups kept per local day (see
    ``Store.use_local_zone``) sum exactly into day and month buckets. Offsets are remembered per
    slot (bounded): a commit asks for the same few slots over and over."""

    __slots__ = ("_offsets", "name", "tz")

    CACHE = 50_000

    def __init__(self, name: str) -> None:
        self.name = name
        self.tz = zone(name)
        self._offsets: dict[int, int] = {}

    def day(self, ts: int) -> int:
        """Local day number of the slot starting at ``ts``."""
        off = self._offsets.get(ts)
        if off is None:
            if len(self._offsets) >= self.CACHE:
                self._offsets.clear()
            off = self._offsets[ts] = offset_at(self.tz, ts)
        return (ts + off) // 86400

    def starts_day(self, ts: int) -> bool:
        """Whether ``ts`` is the first slot of its local day (a range cut there holds whole
        local days)."""
        return self.day(ts - SLOT_SECONDS) != self.day(ts)

    def covers(self, p: Plan) -> bool:
        """Whether local-day rollups of this zone answer ``p``: day or month buckets in this
        zone, every boundary (range ends, month starts) at a local day's first slot."""
        if p.by not in ("day", "month") or p.tz.key != self.tz.key:
            return False
        cuts = p.bounds if p.by == "month" else (p.start, p.end)
        return all(self.starts_day(t) for t in cuts)


Term = tuple[int, int, int, int, int]
"""``(bucket key, level seconds (86400, 3600 or 900), start, end, sign)``: add (sign 1) or subtract
(sign -1) every rollup of that level whose start lies in ``[start, end)``."""


def decompose(key: int, lo: int, hi: int, out: list[Term]) -> None:
    """Express ``[lo, hi)`` as few rollup rows as possible: whole UTC days as day rows; a UTC day
    covered for more than half as that day's row minus the uncovered hours and slots; the rest as
    hour and slot rows. A local day in UTC+2 becomes 1 day + 2 hour rows added + 2 hour rows taken
    away, instead of 24 hour rows."""
    d = lo - lo % 86400
    full_from: int | None = None
    while d < hi:
        a, b = max(lo, d), min(hi, d + 86400)
        if b - a == 86400:
            full_from = d if full_from is None else full_from
        else:
            if full_from is not None:
                out.append((key, 86400, full_from, d, 1))
                full_from = None
            if b - a > 43200:
                out.append((key, 86400, d, d + 86400, 1))
                _pieces(key, d, a, -1, out)
                _pieces(key, b, d + 86400, -1, out)
            else:
                _pieces(key, a, b, 1, out)
        d += 86400
    if full_from is not None:
        out.append((key, 86400, full_from, d, 1))


def _pieces(key: int, lo: int, hi: int, sign: int, out: list[Term]) -> None:
    if lo >= hi:
        return
    h0, h1 = -(-lo // 3600) * 3600, hi // 3600 * 3600
    if h0 >= h1:
        out.append((key, SLOT_SECONDS, lo, hi, sign))
        return
    if lo < h0:
        out.append((key, SLOT_SECONDS, lo, h0, sign))
    out.append((key, 3600, h0, h1, sign))
    if h1 < hi:
        out.append((key, SLOT_SECONDS, h1, hi, sign))


def plan(by: str, tz_name: str, start: datetime | date, end: datetime | date) -> Plan:
    """The bucket plan of a query; the range is widened to whole slots (start down, end up)."""
    if by not in ("15min", "hour", "day", "month"):
        raise InvalidQueryError(f"unknown bucket {by!r}; use 15min, hour, day or month")
    tz = zone(tz_name)
    lo = to_unix(start, tz) // SLOT_SECONDS * SLOT_SECONDS
    hi = -(-to_unix(end, tz) // SLOT_SECONDS) * SLOT_SECONDS
    if hi <= lo:
        raise InvalidQueryError(
            f"empty time range: end {end.isoformat()} is not after start {start.isoformat()}"
        )
    segs = _segments(tz, lo, hi)
    bounds = tuple(_month_bounds(tz, lo, hi)) if by == "month" else ()
    return Plan(by=by, tz=tz, start=lo, end=hi, segments=segs, bounds=bounds)


__all__ = [
    "BUCKET_SECONDS",
    "LocalDays",
    "Plan",
    "Segment",
    "Term",
    "decompose",
    "offset_at",
    "plan",
    "segments",
    "to_unix",
    "zone",
]
