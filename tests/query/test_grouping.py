"""The "Names" rules on finished rows: the totals of rows by channel are the ``total`` grouping's,
and a table's totals are its store's, not the sums of its rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from kilowatch.query.energy import EnergyQuery
from kilowatch.query.grouping import (
    Cells,
    Columns,
    Flat,
    add,
    bucket_sums,
    channel_totals,
    grouped_flat,
    shadow_hourly,
)
from kilowatch.query.periods import plan
from kilowatch.query.table import EnergyTable

P = plan("hour", "UTC", date(2026, 6, 1), date(2026, 6, 2))
H = P.start  # 00:00 UTC
CELLS: Cells = {
    ("em", "em:0", H): [3000, 100, 0],
    ("em", "em:0/a", H): [1000, 100, 0],
    ("em", "em:0/b", H): [2000, 0, 1],  # estimated, but not counted: em:0 is
    ("em", "em:0/b", H + 3600): [5, 0, 0],  # a part alone in its hour: em:0 had data in range
    ("pro", "em1:0", H): [500, 0, 0],
    ("pro", "em1:1", H): [250, 0, 0],
    ("plug", "hourly", H): [1000, 0, 0],  # shadowed: the meter has data this hour
    ("plug", "pm1:0", H): [1200, 0, 0],
    ("plug", "hourly", H + 3600): [1000, 0, 0],  # counted: the meter is silent
}


def channel_rows() -> list[Flat]:
    return grouped_flat(EnergyQuery("hour", "UTC", date(2026, 6, 1), date(2026, 6, 2)), CELLS)


def columns(flat: list[Flat]) -> Columns:
    return EnergyTable.from_flat(P, flat).columns()


def shadow() -> dict[tuple[str, int], list[int]]:
    return shadow_hourly(P, [("plug", H, 1000, 0), ("plug", H + 3600, 1000, 0)], {"plug": {H}})


def test_channel_totals_are_the_total_grouping() -> None:
    total = grouped_flat(
        EnergyQuery("hour", "UTC", date(2026, 6, 1), date(2026, 6, 2), group="total"),
        CELLS,
        shadow(),
    )
    assert total == [(H, None, None, 3000 + 750 + 1200, 100, 0), (H + 3600, None, None, 1000, 0, 0)]
    assert channel_totals(columns(channel_rows()), shadow()) == total


def test_bucket_sums_add_every_row() -> None:
    assert bucket_sums(columns(channel_rows())) == [
        (H, None, None, 3000 + 1000 + 2000 + 750 + 2200, 200, 1),
        (H + 3600, None, None, 1005, 0, 0),
    ]
    assert bucket_sums(columns([])) == []
    assert channel_totals(columns([]), shadow()) == []


def test_a_table_counts_its_stores_totals() -> None:
    rows = channel_rows()
    plain = EnergyTable.from_flat(P, rows)
    assert plain.total_import_mwh == sum(r[3] for r in rows)  # no totals given: the rows' sums
    assert plain.bucket_totals().flat() == bucket_sums(columns(rows))
    table = plain.with_totals(channel_totals(columns(rows), shadow()))
    assert table.flat() == rows  # the rows are untouched
    assert (table.total_import_mwh, table.total_export_mwh) == (4950 + 1000, 100)
    assert not table.any_estimated
    assert [r.energy_wh for r in table.bucket_totals().rows()] == [4.95, 1.0]
    total = EnergyTable.from_flat(P, channel_totals(columns(rows), shadow()))
    assert total.bucket_totals() is total  # grouped by total already


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["em", "plug"]),
            st.sampled_from(["em:0", "em:0/a", "em:0/b", "hourly", "pm1:0", "em1:1/x"]),
            st.integers(0, 4 * 24 * 3 - 1),  # a slot of three days
            st.integers(0, 5000),
            st.sampled_from([0, 0, 7]),
            st.booleans(),
        ),
        max_size=60,
    ),
    st.sampled_from(["15min", "hour", "day"]),
    st.sampled_from(["UTC", "Asia/Kolkata"]),
)
def test_channel_totals_equal_the_total_grouping_for_any_slots(
    slots: list[tuple[str, str, int, int, int, bool]], by: str, tz: str
) -> None:
    """The stores' way: cells per channel and bucket, the hourly energy of the hours in which
    its device has other channels' data, then the totals of the rows by channel."""
    p = plan(by, tz, date(2026, 6, 1), date(2026, 6, 4))
    first = P.start - P.start % 86400
    cells: Cells = {}
    covered: dict[str, set[int]] = {}
    raw = []
    for device, channel, n, imp, exp, est in slots:
        ts = first + 900 * n
        if not p.start <= ts < p.end:
            continue
        add(cells, device, channel, p.key(ts), imp, exp, est)
        raw.append((device, channel, ts, imp, exp))
        if channel != "hourly":
            covered.setdefault(device, set()).add(ts - ts % 3600)
    hourly = [(d, ts, i, e) for d, c, ts, i, e in raw if c == "hourly"]
    cut = shadow_hourly(p, hourly, covered)
    query = EnergyQuery(by, tz, date(2026, 6, 1), date(2026, 6, 4))  # type: ignore[arg-type]
    by_channel = EnergyTable.from_flat(p, grouped_flat(query, cells))
    total = grouped_flat(replace(query, group="total"), cells, cut)
    assert channel_totals(by_channel.columns(), cut) == total
    assert by_channel.with_totals(total).total_import_mwh == sum(r[3] for r in total)
