"""The fast energy paths (rows grouped in SQL / summed by Lua on the server, rows filled column by
column) give exactly what the general per-cell path gives, on every backend."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import orjson
import pytest

from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.grouping import Flat, build_rows, hourly_beside_others, names_rules_apply
from kilowatch.query.periods import plan
from kilowatch.store import Batch, Store
from kilowatch.testing.energy import DEVICES, data, reference

GROUPS = ("channel", "device", "total")


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/St_Johns"])
async def test_fast_paths_match_the_general_path(store: Store, tz: str) -> None:
    slots = data(7)
    await store.commit(Batch(slots=slots))
    ranges: list[tuple[Any, Any]] = [
        (date(2026, 10, 24), date(2026, 10, 27)),  # the 25-hour day inside
        (datetime(2026, 10, 24, 5, 30), datetime(2026, 11, 2, 17, 45)),  # clipped ends
    ]
    cases = [(by, group) for by in ("15min", "hour", "day", "month") for group in GROUPS]
    for i, (by, group) in enumerate(cases):
        start, end = ranges[i % 2]
        query = EnergyQuery(
            by=by,  # type: ignore[arg-type]
            tz=tz,
            start=start,
            end=end,
            devices=((), (DEVICES[2], DEVICES[0]))[i // 2 % 2],
            group=group,  # type: ignore[arg-type]
        )
        got = await store.energy(query)
        assert got, query
        assert got == reference(query, slots), query
        json_rows = (await store.energy_table(query)).json_rows()
        assert json_rows == orjson.dumps([r.to_json() for r in got]), query
        # labels are real local times of the zone, not fixed offsets
        assert all(str(r.start.tzinfo) == tz for r in got)
    # a channel filter, and a device's estimated flag where only some of its days are estimated
    query = EnergyQuery(
        by="day", tz=tz, start=date(2026, 10, 23), end=date(2026, 11, 2),  # type: ignore[arg-type]
        channels=("em:1",), group="device",
    )  # fmt: skip
    got = await store.energy(query)
    assert got == reference(query, slots)
    assert {r.device for r in got} == {DEVICES[2]}
    assert any(r.estimated for r in got) and not all(r.estimated for r in got)


def test_build_rows_equals_the_constructor() -> None:
    p = plan("hour", "Europe/Berlin", date(2026, 10, 25), date(2026, 10, 26))
    keys = p.keys()
    assert len(keys) == 25
    flat: list[Flat] = []
    for i, k in enumerate(keys):
        flat.append((k, "d", "c", i * 1001, i, i % 2))
        flat.append((k, "e", None, 7, 0, 0))
    built = build_rows(p, flat)
    expected = [
        EnergyRow(d, c, *p.label(k), imp / 1000, exp / 1000, bool(est))
        for k, d, c, imp, exp, est in flat
    ]
    assert built == expected
    assert all(type(r) is EnergyRow for r in built)
    assert [r.to_json() for r in built] == [r.to_json() for r in expected]
    assert build_rows(p, []) == []


@pytest.mark.parametrize(
    ("by", "tz", "start", "end"),
    [
        ("hour", "Europe/Berlin", date(2026, 1, 1), date(2027, 1, 1)),
        ("15min", "Australia/Lord_Howe", date(2026, 4, 4), date(2026, 4, 7)),
        ("hour", "Australia/Lord_Howe", datetime(2026, 4, 5, 0, 45), date(2026, 4, 6)),
        ("day", "America/St_Johns", date(2026, 3, 1), date(2026, 3, 20)),
        ("month", "Europe/Berlin", date(2026, 1, 1), date(2027, 1, 1)),
    ],
)
def test_periods_equal_period_per_key(by: str, tz: str, start: date, end: date) -> None:
    p = plan(by, tz, start, end)
    keys = p.keys()
    assert p.periods(keys) == [p.period(k) for k in keys]


def test_names_rules_detection() -> None:
    assert not names_rules_apply([("d", "switch:0"), ("d", "em:0"), ("e", "pm1:0")])
    assert names_rules_apply([("d", "em:0"), ("d", "em:0/a")])
    assert names_rules_apply([("d", "switch:0"), ("d", "hourly")])
    assert not names_rules_apply([])
    # a part without its whole, the hourly channel alone, or beside another device's channel
    assert not names_rules_apply([("d", "em:0/a"), ("d", "em:0/b"), ("e", "em:0")])
    assert not names_rules_apply([("d", "hourly"), ("e", "switch:0")])
    assert hourly_beside_others([("d", "hourly"), ("d", "pm1:0"), ("e", "hourly")]) == {"d"}
