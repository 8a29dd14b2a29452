"""Energy query results column by column, and their fast JSON rendering.

A store answers an energy query with an :class:`EnergyTable`: one column per field (bucket key,
device, channel, import and export mWh, estimated) and the query's :class:`~kilowatch.store.
periods.Plan`, which turns bucket keys into local-time periods. Nothing is built per row until
asked: :meth:`EnergyTable.rows` makes :class:`EnergyRow` objects (the CLI, the pages), and
:meth:`EnergyTable.json_rows` renders the JSON array the API sends without them.

Why: a year of hours is 8 760 rows. Building a row object with two aware datetimes for each, then
serialising those datetimes (each asks its ``ZoneInfo`` for the offset), cost several times what
the database query did. :meth:`EnergyTable.json_rows` formats each distinct bucket boundary once
(from the plan's offset segments, not through ``datetime``), remembers the strings per zone, and
joins the rows' pieces in C; the output is byte-for-byte what
``orjson.dumps([row.to_json() for row in rows])`` gives (a test holds it to that).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from itertools import chain, repeat
from operator import truediv

import orjson

from kilowatch.query.energy import EnergyRow
from kilowatch.query.grouping import Columns, Flat, bucket_sums, build_rows
from kilowatch.query.periods import Plan, offset_at

_ISO_CACHE: dict[str, dict[int, bytes]] = {}
"""Per zone: unix time -> its local ISO 8601 string as a quoted JSON string. Bounded by
:data:`ISO_CACHE_MAX` per zone (cleared when full: rebuilding is cheap, growing is not)."""
ISO_CACHE_MAX = 200_000
_SPANS: OrderedDict[tuple[Plan, bytes], dict[int, bytes]] = OrderedDict()
SPAN_PLANS = 32
"""(Plan, head) pairs whose bucket fragments are remembered, at most ..."""
SPAN_FRAGMENTS = 60_000
"""... and fragments in all (~150 bytes each: about 10 MB; a year of hours is 8 760)."""
_EPOCH = date(1970, 1, 1)
_TAIL = (b',"estimated":false},', b',"estimated":true},')
_ZERO_TAIL = tuple(b',"returned_energy_wh":0.0' + t for t in _TAIL)


class EnergyTable:
    """Rows of an energy query as columns, in the documented order (start, device, channel).

    ``keys`` are the plan's bucket keys (see :class:`Plan`); ``imports``/``exports`` integer mWh;
    ``estimated`` 0/1. ``devices``/``channels`` hold ``None`` where the grouping merged them.

    The totals are the query's, not the sums of the rows: rows by channel may hold a meter and
    its parts (``em:0`` and ``em:0/a``, ``/b``, ``/c``) or the ``hourly`` channel beside the
    meter's, which the "Names" rules of docs/architecture.md count once. ``totals`` holds the
    per-bucket totals (the rows the ``total`` grouping answers) when a store found that those
    rules change them; ``None``: each bucket's total is the sum of its rows.
    """

    __slots__ = (
        "_rows", "channels", "devices", "estimated", "exports", "imports", "keys", "plan",
        "totals",
    )  # fmt: skip

    def __init__(
        self,
        plan: Plan,
        keys: Sequence[int] = (),
        devices: Sequence[str | None] = (),
        channels: Sequence[str | None] = (),
        imports: Sequence[int] = (),
        exports: Sequence[int] = (),
        estimated: Sequence[int] = (),
        *,
        totals: EnergyTable | None = None,
    ) -> None:
        n = len(keys)
        if not all(len(c) == n for c in (devices, channels, imports, exports, estimated)):
            raise ValueError("energy table columns differ in length")
        self.plan = plan
        self.keys = keys
        self.devices = devices
        self.channels = channels
        self.imports = imports
        self.exports = exports
        self.estimated = estimated
        self.totals = totals
        self._rows: list[EnergyRow] | None = None

    @classmethod
    def from_flat(
        cls, plan: Plan, flat: Sequence[Flat], *, totals: EnergyTable | None = None
    ) -> EnergyTable:
        """A table of ``(key, device, channel, import, export, estimated)`` tuples, in order."""
        if not flat:
            return cls(plan, totals=totals)
        keys, devices, channels, imports, exports, estimated = zip(*flat, strict=True)
        return cls(plan, keys, devices, channels, imports, exports, estimated, totals=totals)

    def with_totals(self, totals: Sequence[Flat]) -> EnergyTable:
        """The same rows with the query's per-bucket totals ``totals`` (``total`` rows, in
        order): what a store gives where the "Names" rules make them differ from the rows'
        sums."""
        return EnergyTable(
            self.plan, self.keys, self.devices, self.channels, self.imports, self.exports,
            self.estimated, totals=EnergyTable.from_flat(self.plan, totals),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.keys)

    def columns(self) -> Columns:
        """``(keys, devices, channels, imports, exports, estimated)``."""
        return (
            self.keys, self.devices, self.channels, self.imports, self.exports, self.estimated
        )  # fmt: skip

    def flat(self) -> list[Flat]:
        return list(
            zip(
                self.keys, self.devices, self.channels, self.imports, self.exports,
                self.estimated, strict=True,
            )
        )  # fmt: skip

    def rows(self) -> list[EnergyRow]:
        """The rows as :class:`EnergyRow` objects (built once, then kept)."""
        if self._rows is None:
            self._rows = build_rows(self.plan, self.flat())
        return self._rows

    def bucket_totals(self) -> EnergyTable:
        """The query's total per bucket, as rows of the ``total`` grouping (device and channel
        ``None``): :attr:`totals`, else the sums of the rows."""
        if self.totals is not None:
            return self.totals
        if not any(self.devices) and not any(self.channels):  # grouped by total already
            return self
        return EnergyTable.from_flat(self.plan, bucket_sums(self.columns()))

    def _counted(self) -> EnergyTable:
        """The rows the totals add up: :attr:`totals`, else the rows themselves."""
        return self if self.totals is None else self.totals

    @property
    def total_import_mwh(self) -> int:
        """Imported mWh over the whole answer, each meter's energy counted once."""
        return sum(self._counted().imports)

    @property
    def total_export_mwh(self) -> int:
        """Exported mWh over the whole answer, each meter's energy counted once."""
        return sum(self._counted().exports)

    @property
    def any_estimated(self) -> bool:
        """Whether any energy the totals count is estimated."""
        return any(self._counted().estimated)

    def json_rows(self) -> bytes:
        """The rows as a JSON array of :meth:`EnergyRow.to_json` objects.

        Every row is a few byte pieces joined once: its head and bucket (``{"device":…,
        "channel":…,"start":…,"end":…,"energy_wh":``, remembered per plan), its import, and its
        tail (export and estimated; one constant piece when nothing was exported). The per-row
        work is C (``map``, ``zip``, ``bytes.join``), not Python bytecode.
        """
        n = len(self.keys)
        if not n:
            return b"[]"
        lead: tuple[Iterable[bytes], ...]
        one_device, one_channel = len(set(self.devices)) == 1, len(set(self.channels)) == 1
        if one_device and one_channel:
            # one channel (or one device, or the total): one head for all rows, remembered with
            # the bucket fragments
            lead = (self._spans(_head(self.devices[0], self.channels[0])),)
        elif one_channel:  # by device (channel None): heads looked up by device, no pair tuples
            c = self.channels[0]
            by_device = {d: _head(d, c) for d in set(self.devices)}
            lead = (map(by_device.__getitem__, self.devices), self._spans(b""))
        else:
            pairs = list(zip(self.devices, self.channels, strict=True))
            heads = {pair: _head(*pair) for pair in set(pairs)}
            lead = (map(heads.__getitem__, pairs), self._spans(b""))
        if any(self.exports):
            tails: Iterable[bytes] = map(
                b"".join,
                zip(
                    repeat(b',"returned_energy_wh":'), _floats(self.exports),
                    map(_TAIL.__getitem__, map(bool, self.estimated)),
                ),
            )  # fmt: skip
        elif any(self.estimated):
            tails = map(_ZERO_TAIL.__getitem__, map(bool, self.estimated))
        else:
            tails = repeat(_ZERO_TAIL[0], n)
        parts = [b"[", *chain.from_iterable(zip(*lead, _floats(self.imports), tails, strict=True))]
        parts[-1] = parts[-1][:-1] + b"]"  # the last row's tail, without its comma
        return b"".join(parts)

    def _spans(self, head: bytes) -> list[bytes]:
        """``head`` + the bucket fragment of each row."""
        return span_fragments(self.plan, self.keys, head)


def _head(device: str | None, channel: str | None) -> bytes:
    return b'{"device":%b,"channel":%b,' % (orjson.dumps(device), orjson.dumps(channel))


def span_fragments(plan: Plan, keys: Sequence[int], head: bytes = b"") -> list[bytes]:
    """For each bucket key: ``head`` + ``"start":"<ISO>","end":"<ISO>","energy_wh":``.

    A pure function of its arguments, so remembered (for the last :data:`SPAN_PLANS` plans and
    heads): a dashboard asks for the same day, month or year of the same meter again and again,
    and a year of hours is 8 760 periods to compute and format.
    """
    cache = _SPANS.setdefault((plan, head), {})
    _SPANS.move_to_end((plan, head))
    try:  # the usual case: every bucket known (no set of the keys built to find out)
        return list(map(cache.__getitem__, keys))
    except KeyError:
        pass
    missing = sorted(set(keys).difference(cache))
    if missing:
        periods = plan.periods(missing)
        los = [lo for lo, _ in periods]
        his = [hi for _, hi in periods]
        instants = list(dict.fromkeys(los + his))
        iso = dict(zip(instants, iso_instants(plan, instants), strict=True))
        fragments = map(
            b"".join,
            zip(
                repeat(head + b'"start":'), map(iso.__getitem__, los), repeat(b',"end":'),
                map(iso.__getitem__, his), repeat(b',"energy_wh":'),
            ),
        )  # fmt: skip
        cache.update(zip(missing, fragments, strict=True))
        # forget the least recently used others while over a bound (never the one in use)
        while len(_SPANS) > 1 and (
            len(_SPANS) > SPAN_PLANS or sum(map(len, _SPANS.values())) > SPAN_FRAGMENTS
        ):
            _SPANS.popitem(last=False)
    return list(map(cache.__getitem__, keys))


def _floats(mwh: Sequence[int]) -> Iterable[bytes]:
    """Each mWh value as the JSON of its Wh float (``mwh / 1000``), formatted by orjson in C."""
    text = orjson.dumps(list(map(truediv, mwh, repeat(1000))))
    return text[1:-1].split(b",")


def iso_instants(plan: Plan, instants: Sequence[int]) -> list[bytes]:
    """Each of ``instants`` (unix seconds within ``[plan.start, plan.end]``) as a
    quoted JSON string of its local ISO 8601 time, as ``datetime.isoformat()`` writes it."""
    key = plan.tz.key
    cache = _ISO_CACHE.get(key)
    if cache is None or len(cache) > ISO_CACHE_MAX:
        cache = _ISO_CACHE[key] = {}
    missing = [t for t in instants if t not in cache]
    if missing:
        cache.update(zip(missing, _format(plan, missing), strict=True))
    return list(map(cache.__getitem__, instants))


def _format(plan: Plan, instants: Sequence[int]) -> list[bytes]:
    segs = plan.segments
    seg_starts = [s.start for s in segs]
    days: dict[int, str] = {}
    times: dict[int, str] = {}
    offsets: dict[int, str] = {}
    out = []
    # The plan locates transitions on the 15-minute grid, exact for every offset that is a
    # multiple of 15 minutes; a zone that had another (Liberia's -00:44:30 until 1972) is asked.
    exact = all(s.offset % 900 == 0 for s in segs)
    for t in instants:
        if not exact or t >= plan.end or t < plan.start:  # the range's end: ask the zone
            off = offset_at(plan.tz, t)
        else:
            off = segs[bisect.bisect_right(seg_starts, t) - 1].offset
        local = t + off
        d, s = divmod(local, 86400)
        day = days.get(d)
        if day is None:
            day = days[d] = (_EPOCH + timedelta(days=d)).isoformat()
        tod = times.get(s)
        if tod is None:
            h, rem = divmod(s, 3600)
            tod = times[s] = f"T{h:02d}:{rem // 60:02d}:{rem % 60:02d}"
        suffix = offsets.get(off)
        if suffix is None:
            suffix = offsets[off] = _offset(off)
        out.append(f'"{day}{tod}{suffix}"'.encode())
    return out


def _offset(seconds: int) -> str:
    """A UTC offset as ``isoformat()`` writes it: ``+01:00``, ``-03:30``, ``-00:44:30``."""
    sign = "-" if seconds < 0 else "+"
    h, rem = divmod(abs(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


__all__ = [
    "ISO_CACHE_MAX",
    "SPAN_FRAGMENTS",
    "SPAN_PLANS",
    "EnergyTable",
    "iso_instants",
    "span_fragments",
]
