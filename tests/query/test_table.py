"""EnergyTable: column-wise rows and their JSON rendering, equal to the row objects' own."""

from __future__ import annotations

from datetime import date, datetime

import orjson
import pytest

from kilowatch.query import table as table_module
from kilowatch.query.grouping import Flat
from kilowatch.query.periods import plan
from kilowatch.query.table import EnergyTable, iso_instants, span_fragments


def _table(by: str, tz: str, start: date | datetime, end: date | datetime) -> EnergyTable:
    p = plan(by, tz, start, end)
    flat: list[Flat] = []
    for i, k in enumerate(p.keys()):
        flat.append((k, "dev-\"q\"", "em:0/a", i * 1001, i % 3 * 7, i % 2))
        flat.append((k, None, None, 123_456_789_012, 0, 0))
    return EnergyTable.from_flat(p, flat)


@pytest.mark.parametrize(
    ("by", "tz", "start", "end"),
    [
        ("hour", "Europe/Berlin", date(2026, 10, 24), date(2026, 10, 27)),  # a 25-hour day
        ("15min", "Australia/Lord_Howe", date(2026, 4, 4), date(2026, 4, 6)),  # 30-min DST
        ("hour", "Asia/Kathmandu", datetime(2026, 2, 1, 6, 15), datetime(2026, 2, 2, 0, 45)),
        ("day", "America/St_Johns", date(2026, 3, 1), date(2026, 3, 20)),
        ("month", "Europe/Sofia", date(2025, 1, 1), date(2027, 1, 1)),
        # Liberia kept -00:44:30 until 1972: offsets with seconds, local times off the minute
        ("day", "Africa/Monrovia", date(1971, 12, 20), date(1972, 1, 12)),
        ("hour", "UTC", date(2026, 1, 1), date(2026, 1, 2)),
    ],
)
def test_json_rows_equal_the_json_of_the_rows(
    by: str, tz: str, start: date | datetime, end: date | datetime
) -> None:
    t = _table(by, tz, start, end)
    rows = t.rows()
    assert len(rows) == len(t) > 0
    assert t.json_rows() == orjson.dumps([r.to_json() for r in rows])
    # a second rendering reads the per-zone cache of formatted instants: the same bytes
    assert t.json_rows() == orjson.dumps([r.to_json() for r in rows])
    assert t.total_import_mwh == sum(round(r.energy_wh * 1000) for r in rows)


def test_empty_table() -> None:
    t = EnergyTable.from_flat(plan("hour", "UTC", date(2026, 1, 1), date(2026, 1, 2)), [])
    assert t.json_rows() == b"[]"
    assert t.rows() == [] and len(t) == 0 and not t.any_estimated


def test_columns_must_agree() -> None:
    p = plan("hour", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    with pytest.raises(ValueError, match="differ in length"):
        EnergyTable(p, [p.start], ["d"], [], [1], [0], [0])


def test_iso_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "ISO_CACHE_MAX", 10)
    p = plan("hour", "Europe/Paris", date(2026, 3, 28), date(2026, 3, 31))
    starts = p.keys()
    first = iso_instants(p, starts)
    assert len(table_module._ISO_CACHE["Europe/Paris"]) <= len(starts)
    again = iso_instants(p, starts)  # over the bound: cleared and rebuilt, same answers
    assert first == again
    assert first[0] == b'"2026-03-28T00:00:00+01:00"'
    assert b'"2026-03-29T03:00:00+02:00"' in first


def test_span_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "SPAN_FRAGMENTS", 100)
    monkeypatch.setattr(table_module, "_SPANS", table_module.OrderedDict())
    days = [plan("hour", "Europe/Paris", date(2026, 3, d), date(2026, 3, d + 1)) for d in (1, 2)]
    for p in days * 3:  # each day is 24 fragments: never more than ~100 + one plan kept
        for head in (b"", b"{"):
            assert span_fragments(p, p.keys(), head)[0].startswith(head + b'"start":"2026-03-')
            assert sum(map(len, table_module._SPANS.values())) <= 100 + 24
    year = plan("hour", "UTC", date(2025, 1, 1), date(2026, 1, 1))
    assert len(span_fragments(year, year.keys())) == 8760  # one plan alone may exceed the bound
    assert list(table_module._SPANS) == [(year, b"")]
