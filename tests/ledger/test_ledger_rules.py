"""One test per rule of docs/energy-accounting.md, with the numbers of its worked examples."""

from __future__ import annotations

import json
import math

import pytest

from kilowatch.errors import LedgerStateError
from kilowatch.ledger import Ledger, spread
from kilowatch.model.messages import Interval, Reading
from kilowatch.model.slots import SlotEnergy, merge_slot_energy

H = 1720717200  # 2024-07-11T17:00:00Z, the hour of the BRIEF's hourly-script example
DEV = "shellypmminig3-ecda3bc4ddb0"
CH = "pm1:0"


def read(ledger: Ledger, ts: float, wh: float | None, ret: float | None = None) -> list[SlotEnergy]:
    return ledger.add_reading(Reading(DEV, CH, ts, energy_wh=wh, returned_energy_wh=ret))


def imports(rows: list[SlotEnergy]) -> dict[int, int]:
    """slot offset from H -> import mWh."""
    return {r.slot - H: r.import_mwh for r in rows}


def hour(start: int, wh: float, ret: float = 0.0) -> Interval:
    return Interval(DEV, "hourly", start, start + 3600, wh, ret)


# Rule 1: conversion to integer mWh, once.
def test_counters_convert_to_integer_mwh_once() -> None:
    ledger = Ledger()
    read(ledger, H + 10, 42291.09)
    rows = read(ledger, H + 70, 42292.0934)  # 42292093.4 mWh -> 42292093
    assert imports(rows) == {0: 42292093 - 42291090}
    assert all(isinstance(r.import_mwh, int) for r in rows)


# Rule 2: the first reading of a channel only sets the baseline.
def test_first_reading_is_baseline_only() -> None:
    ledger = Ledger()
    assert read(ledger, H + 10, 42291.09) == []
    assert imports(read(ledger, H + 70, 42291.59)) == {0: 500}


# Rule 3: proportional split with exact remainders.
def test_span_across_a_boundary_splits_proportionally() -> None:
    ledger = Ledger()
    read(ledger, H + 840, 1000.0)
    rows = read(ledger, H + 930, 1001.0)  # 1000 mWh over 90 s: 60 s before the boundary, 30 s after
    assert imports(rows) == {0: 666, 900: 334}
    assert not any(r.estimated for r in rows)


def test_spread_parts_add_up_exactly() -> None:
    assert spread(10, 0, 3_600_000) == [(0, 2), (900, 3), (1800, 2), (2700, 3)]
    assert spread(7, 1_000, 2_000) == [(0, 7)]
    assert spread(0, 0, 3_600_000) == []


# Rule 4: duplicates, replays and out-of-order readings add nothing.
def test_duplicates_replays_and_old_readings_add_nothing() -> None:
    ledger = Ledger()
    stream = [(H + 0, 100.0), (H + 60, 100.5), (H + 120, 101.0)]
    total = sum(r.import_mwh for ts, wh in stream for r in read(ledger, ts, wh))
    assert total == 1000
    assert ledger.take_dirty_states()
    replay = [r for ts, wh in stream for r in read(ledger, ts, wh)]
    assert replay == []
    assert read(ledger, H + 90, 100.9) == []  # older than the last accepted: redundant
    assert ledger.take_dirty_states() == {}  # nothing changed, nothing to save


# Rule 5: a small drop is a rounding dip: nothing until the high-water mark is passed.
def test_rounding_dip_counts_nothing_until_high_water_mark_passed() -> None:
    ledger = Ledger()
    read(ledger, H, 544.587493)
    assert read(ledger, H + 60, 544.587) == []  # same mWh: 544587
    read(ledger, H + 120, 1000.0)
    assert read(ledger, H + 180, 998.0) == []  # 2 Wh down: within the 10 Wh tolerance
    assert read(ledger, H + 240, 999.9) == []  # still below 1000 Wh
    assert imports(read(ledger, H + 300, 1000.5)) == {0: 500}
    state = {"version": 1, "import": {"t": (H + 300) * 1000, "hwm": 1000500}}
    assert ledger.state(DEV, CH) == state


# Rule 6: a drop beyond the tolerance is a reset, confirmed by the next reading.
def test_reset_counts_energy_since_reset_after_confirmation() -> None:
    ledger = Ledger()
    read(ledger, H, 1000.0)
    assert read(ledger, H + 60, 0.2) == []  # suspect: held
    rows = read(ledger, H + 120, 1.2)
    assert imports(rows) == {0: 200 + 1000}
    assert ledger.state(DEV, CH) == {"version": 1, "import": {"t": (H + 120) * 1000, "hwm": 1200}}


def test_transient_zero_is_a_glitch_not_a_reset() -> None:
    ledger = Ledger()
    read(ledger, H, 1000.0)
    assert read(ledger, H + 60, 0.0) == []
    assert imports(read(ledger, H + 120, 1000.3)) == {0: 300}  # not 1000.3 Wh counted twice


def test_reset_across_a_boundary_goes_to_the_span_before_it() -> None:
    ledger = Ledger()
    read(ledger, H + 870, 5000.0)
    read(ledger, H + 930, 0.6)  # reset somewhere in [H+870, H+930)
    rows = read(ledger, H + 990, 1.6)
    assert imports(rows) == {0: 300, 900: 300 + 1000}


def test_two_resets_in_a_row_keep_the_latest_suspect() -> None:
    ledger = Ledger()
    read(ledger, H, 1000.0)
    read(ledger, H + 60, 500.0)  # suspect
    assert read(ledger, H + 120, 0.1) == []  # neither continues 1000 nor 500: new suspect
    assert imports(read(ledger, H + 180, 0.4)) == {0: 400}


# Rule 7: gaps are spread over the slots they cover and marked estimated.
def test_gap_is_spread_and_marked_estimated() -> None:
    ledger = Ledger()
    read(ledger, H + 840, 2000.0)
    rows = read(ledger, H + 4440, 2003.6)  # one hour without readings, 3600 mWh
    assert imports(rows) == {0: 60, 900: 900, 1800: 900, 2700: 900, 3600: 840}
    assert all(r.estimated for r in rows)


def test_normal_periods_are_not_gaps() -> None:
    for period in (30, 60, 300, 900):
        ledger = Ledger()
        read(ledger, H, 10.0)
        rows = read(ledger, H + period, 11.0)
        assert rows and not any(r.estimated for r in rows), period


# Rule 8: intervals counted once; corrections as deltas; bounded memory.
def test_hourly_interval_splits_into_four_quarters() -> None:
    ledger = Ledger()
    rows = ledger.add_interval(hour(H, 564.559))
    assert imports(rows) == {0: 141139, 900: 141140, 1800: 141140, 2700: 141140}
    assert not any(r.estimated for r in rows)
    assert ledger.add_interval(hour(H, 564.559)) == []


def test_interval_correction_adds_the_difference() -> None:
    ledger = Ledger()
    ledger.add_interval(hour(H, 564.559))
    rows = ledger.add_interval(hour(H, 564.0, 1.0))
    assert imports(rows) == {0: -139, 900: -140, 1800: -140, 2700: -140}
    assert [r.export_mwh for r in rows] == [250, 250, 250, 250]
    assert ledger.add_interval(hour(H, 564.0, 1.0)) == []


def test_interval_older_than_window_is_rejected_and_memory_bounded() -> None:
    ledger = Ledger()
    ledger.add_interval(hour(H, 1.0))
    newest = H + 8 * 86400
    assert ledger.add_interval(hour(newest, 2.0))
    assert ledger.add_interval(hour(H, 1.0)) == []  # a week and more behind: rejected
    assert ledger.rejected == {"interval_outside_window": 1}
    state = ledger.state(DEV, "hourly")
    assert state is not None
    assert list(state["intervals"]["seen"]) == [str(newest)]
    for k in range(1, 24 * 10):
        ledger.add_interval(hour(newest + 3600 * k, 0.5))
    state = ledger.state(DEV, "hourly")
    assert state is not None
    assert len(state["intervals"]["seen"]) == 7 * 24 + 1


@pytest.mark.parametrize(
    ("start", "end", "wh"),
    [
        (H, H, 1.0),  # empty
        (H, H - 3600, 1.0),  # backwards
        (H, H + 2 * 86400, 1.0),  # longer than a day
        (H, H + 3600, -5.0),  # negative
        (H, H + 3600, math.nan),
        (H, H + 3600, 2_000_000.0),  # 2 MWh in an hour: 2 MW
        (0, 3600, 1.0),  # an unsynchronised clock
    ],
)
def test_absurd_intervals_are_rejected(start: int, end: int, wh: float) -> None:
    ledger = Ledger()
    assert ledger.add_interval(Interval(DEV, "hourly", start, end, wh)) == []
    assert ledger.rejected == {"interval_invalid": 1}
    assert ledger.take_dirty_states() == {}


# Rule 9: absurd inputs.
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 1e13])
def test_absurd_counters_are_rejected(bad: float) -> None:
    ledger = Ledger()
    read(ledger, H, 10.0)
    assert read(ledger, H + 60, bad) == []
    assert ledger.rejected == {"counter_out_of_range": 1}
    assert imports(read(ledger, H + 120, 10.5)) == {0: 500}


@pytest.mark.parametrize("bad_ts", [math.nan, 0.0, 1_000_000.0, 1e10, math.inf])
def test_absurd_timestamps_are_rejected(bad_ts: float) -> None:
    ledger = Ledger()
    assert read(ledger, bad_ts, 10.0) == []
    assert ledger.rejected == {"timestamp_out_of_range": 1}
    assert ledger.take_dirty_states() == {}


def test_far_future_reading_is_held_and_dropped_when_time_goes_on_normally() -> None:
    ledger = Ledger()
    read(ledger, H, 10.0)
    assert read(ledger, H + 10 * 365 * 86400, 10.1) == []  # clock gone wrong: held
    assert imports(read(ledger, H + 60, 10.2)) == {0: 200}  # normal readings go on
    assert imports(read(ledger, H + 120, 10.3)) == {0: 100}
    state = ledger.state(DEV, CH)
    assert state is not None
    assert state["import"]["jump"] == [(H + 10 * 365 * 86400) * 1000, 10100]


def test_two_far_readings_confirm_each_other_in_either_order() -> None:
    ledger = Ledger()
    read(ledger, H, 10.0)
    back = H + 3 * 86400
    assert read(ledger, back + 60, 82.1) == []  # the later one arrives first: held
    rows = read(ledger, back, 82.0)
    assert sum(r.import_mwh for r in rows) == 72_100


def test_held_jump_becomes_ordinary_when_time_catches_up() -> None:
    ledger = Ledger()
    read(ledger, H, 10.0)
    assert read(ledger, H + 86400 + 600, 10.5) == []  # just over a day ahead: held
    rows = read(ledger, H + 700, 10.1)  # now the held reading is within a day: taken as well
    assert sum(r.import_mwh for r in rows) == 500
    assert ledger.state(DEV, CH) == {
        "version": 1,
        "import": {"t": (H + 86400 + 600) * 1000, "hwm": 10500},
    }
    assert read(ledger, H + 86400 + 600, 10.5) == []


def test_reset_while_a_jump_is_held_is_still_counted() -> None:
    ledger = Ledger()
    read(ledger, H, 1000.0)
    read(ledger, H + 5 * 365 * 86400, 1000.1)  # held jump
    assert read(ledger, H + 60, 0.3) == []  # a reset: suspect
    assert imports(read(ledger, H + 120, 0.5)) == {0: 500}


def test_long_outage_is_counted_once_confirmed() -> None:
    ledger = Ledger()
    read(ledger, H, 10.0)
    back = H + 3 * 86400
    assert read(ledger, back, 82.0) == []  # three days later: held until confirmed
    rows = read(ledger, back + 60, 82.1)
    assert sum(r.import_mwh for r in rows) == 72_100
    assert all(r.estimated for r in rows if r.slot < back - back % 900)


def test_impossible_rise_is_not_energy() -> None:
    ledger = Ledger()
    read(ledger, H, 1000.0)
    assert read(ledger, H + 60, 1e9) == []  # 1 GWh in a minute: held
    assert imports(read(ledger, H + 120, 1000.1)) == {0: 100}  # a glitch
    assert read(ledger, H + 180, 5e8) == []  # a new meter with a large counter...
    assert imports(read(ledger, H + 240, 5e8 + 0.2)) == {0: 200}  # ...re-based, not counted


# Rule 10: import and export are independent.
def test_import_and_export_counters_are_independent() -> None:
    ledger = Ledger()
    read(ledger, H, 10.0, 500.0)
    rows = read(ledger, H + 60, None, 500.25)
    assert [(r.import_mwh, r.export_mwh) for r in rows] == [(0, 250)]
    rows = read(ledger, H + 120, 10.5, None)
    assert [(r.import_mwh, r.export_mwh) for r in rows] == [(500, 0)]
    rows = read(ledger, H + 180, 11.0, 0.1)  # export reset: suspect; import goes on
    assert [(r.import_mwh, r.export_mwh) for r in rows] == [(500, 0)]
    rows = read(ledger, H + 240, 11.0, 0.2)
    assert [(r.import_mwh, r.export_mwh) for r in rows] == [(0, 200)]


def test_reading_without_counters_changes_nothing() -> None:
    ledger = Ledger()
    assert ledger.add_reading(Reading(DEV, CH, H, power_w=12.0)) == []
    assert ledger.take_dirty_states() == {}
    assert ledger.state(DEV, CH) is None


# Rule 11: saved states continue exactly.
def test_restart_from_saved_states_continues_exactly() -> None:
    stream = [(H + 60 * i, 100.0 + 0.37 * i) for i in range(10)]
    stream[5] = (stream[5][0], 0.05)  # a suspect pending at the restart point
    one = Ledger()
    expected = [r for ts, wh in stream for r in read(one, ts, wh)]
    first = Ledger()
    got = [r for ts, wh in stream[:6] for r in read(first, ts, wh)]
    saved = json.loads(json.dumps({"|".join(k): v for k, v in first.take_dirty_states().items()}))
    second = Ledger({(k.split("|")[0], k.split("|")[1]): v for k, v in saved.items()})
    got += [r for ts, wh in stream[6:] for r in read(second, ts, wh)]
    assert got == expected


def test_unreadable_state_is_a_clear_error() -> None:
    with pytest.raises(LedgerStateError, match="version"):
        Ledger({(DEV, CH): {"version": 99}})
    with pytest.raises(LedgerStateError, match="KeyError"):
        Ledger({(DEV, CH): {"version": 1, "import": {"t": 1}}})


# The batch helper.
def test_merge_slot_energy_sums_and_ors() -> None:
    rows = [
        SlotEnergy(DEV, CH, H, 100, 0),
        SlotEnergy(DEV, CH, H + 900, 5, 0),
        SlotEnergy(DEV, CH, H, 50, 7, estimated=True),
        SlotEnergy(DEV, "hourly", H, 10, 0),
        SlotEnergy(DEV, "hourly", H, -10, 0),
    ]
    assert merge_slot_energy(rows) == [
        SlotEnergy(DEV, CH, H, 150, 7, estimated=True),
        SlotEnergy(DEV, CH, H + 900, 5, 0),
    ]


# Rule 12: readings stamped on receipt may be late, not impossible.
G1, RELAY = "shellyplug-s-C18B12", "relay/0"


def got(ledger: Ledger, ts: float, wh: float) -> list[SlotEnergy]:
    """A Gen1 reading: its time is when kilowatch received it."""
    return ledger.add_reading(Reading(G1, RELAY, ts, energy_wh=wh, stamped_on_receipt=True))


def test_backlog_stamped_on_receipt_is_late_not_impossible() -> None:
    ledger = Ledger()
    got(ledger, H, 1000.0)
    rows = got(ledger, H + 7200, 1016.7)  # after two hours of silence: on time, an ordinary gap
    assert sum(r.import_mwh for r in rows) == 16_700 and all(r.estimated for r in rows)
    backlog = [round(1000.0 + 16.7 * k, 1) for k in range(2, 241)]
    for i, wh in enumerate(backlog, 1):
        assert got(ledger, H + 7200 + i / 1000, wh) == []  # held, each in its predecessor's place
    assert backlog[-1] == 5008.0
    state = ledger.state(G1, RELAY)
    assert state is not None
    assert state["import"]["suspect"] == [(H + 7200) * 1000 + 239, 5_008_000]
    assert state["import"]["anchor"] == H * 1000
    rows = got(ledger, H + 7230, 5024.7)  # on time: the held 3 991 300 mWh are confirmed
    late = [(slot, part) for slot, part in spread(3_991_300, H * 1000, (H + 7200) * 1000 + 239)]
    assert {(slot - H, part) for slot, part in late[:-1]} == {
        (k * 900, 498_896) for k in range(1, 8)
    } | {(0, 498_895)}
    assert imports(rows) == {**{s - H: p for s, p in late[:-1]}, 7200: late[-1][1] + 16_700}
    assert all(r.estimated for r in rows)
    assert sum(r.import_mwh for r in rows) == 3_991_300 + 16_700


def test_late_rise_that_falls_back_is_a_glitch() -> None:
    ledger = Ledger()
    got(ledger, H, 1000.0)
    assert imports(got(ledger, H + 30, 1000.5)) == {0: 500}
    assert got(ledger, H + 30.001, 1500.0) == []  # held
    assert imports(got(ledger, H + 60, 1000.6)) == {0: 100}  # fell back: 1500.0 was a glitch


def test_reset_inside_a_backlog_counts_nothing_twice() -> None:
    ledger = Ledger()
    got(ledger, H, 1000.0)
    got(ledger, H + 3600, 1001.0)  # on time: H is the anchor
    assert got(ledger, H + 3600.001, 1200.0) == []
    rows = got(ledger, H + 3600.002, 0.3)  # below both: 1200.0 was real, then a reset
    assert sum(r.import_mwh for r in rows) == 199_000
    assert {r.slot - H for r in rows} == {0, 900, 1800, 2700, 3600}
    assert got(ledger, H + 3600.003, 0.5) == []  # continues the reset, too soon: held instead
    rows = got(ledger, H + 3630, 0.6)  # on time: confirms the reset
    since_reset = spread(500, H * 1000, (H + 3600) * 1000 + 3)
    last = dict(since_reset)
    last[H + 3600] = last.get(H + 3600, 0) + 100
    assert {r.slot: r.import_mwh for r in rows} == last
    state = ledger.state(G1, RELAY)
    assert state == {
        "version": 1,
        "import": {"t": (H + 3630) * 1000, "hwm": 600, "anchor": H * 1000},
    }


def test_redelivered_messages_are_not_a_reset() -> None:
    """After a crash between a commit and its acknowledgements the broker delivers the messages
    again, stamped anew: lower values climbing back to the accepted counter, not a reset."""
    ledger = Ledger()
    for k in range(10):
        got(ledger, H + 30 * k, 1000.0 + 10 * k)  # 1090.0 at H+270, each on time
    total = 0
    for k in range(4, 12):  # redelivered from 1040.0 on, then two new readings
        rows = got(ledger, H + 280 + k / 1000, 1000.0 + 10 * k)
        total += sum(r.import_mwh for r in rows)
    total += sum(r.import_mwh for r in got(ledger, H + 300, 1120.0))
    assert total == 30_000  # 1090.0 -> 1120.0, nothing twice


def test_on_time_readings_stamped_on_receipt_count_as_usual() -> None:
    ledger = Ledger()
    got(ledger, H + 10, 42291.09)
    assert imports(got(ledger, H + 40, 42291.59)) == {0: 500}
    assert got(ledger, H + 40.002, 42291.59) == []  # the same report on another topic
    rows = got(ledger, H + 940, 42292.59)
    assert imports(rows) == {0: 955, 900: 45} and not any(r.estimated for r in rows)
    assert ledger.state(G1, RELAY) == {
        "version": 1,
        "import": {"t": (H + 940) * 1000, "hwm": 42_292_590, "anchor": (H + 40) * 1000 + 2},
    }


def test_a_larger_counter_stamped_on_receipt_is_rebased() -> None:
    ledger = Ledger()
    got(ledger, H, 1000.0)
    got(ledger, H + 30, 1000.5)
    assert got(ledger, H + 60, 5e8) == []  # 500 MWh in a minute: held
    # Continued: too fast even over the span from the anchor, so the counter is re-based there
    # (rule 9) and only what it counted since is energy.
    assert imports(got(ledger, H + 90, 5e8 + 0.2)) == {0: 200}


def test_a_pause_while_reading_a_backlog_keeps_the_anchor() -> None:
    ledger = Ledger()
    got(ledger, H, 1000.0)
    got(ledger, H + 3600, 1016.7)  # anchor: H
    got(ledger, H + 3600.001, 1033.4)  # held
    rows = got(ledger, H + 3602, 1050.1)  # kilowatch paused 2 s: this one looks on time
    assert [r.slot - H for r in rows if r.slot < H + 3600] == [0, 900, 1800, 2700]
    got(ledger, H + 3602.001, 1066.8)  # the backlog goes on: held
    rows = got(ledger, H + 3632, 1083.5)  # confirmed, still from the anchor H
    assert min(r.slot for r in rows) == H and sum(r.import_mwh for r in rows) == 33_400


def test_a_reading_stamped_by_the_device_ends_the_anchor() -> None:
    ledger = Ledger()
    got(ledger, H, 10.0)
    got(ledger, H + 60, 10.5)
    state = ledger.state(G1, RELAY)
    assert state is not None and state["import"]["anchor"] == H * 1000
    ledger.add_reading(Reading(G1, RELAY, H + 120, energy_wh=11.0))  # e.g. a NotifyStatus
    assert ledger.state(G1, RELAY) == {
        "version": 1,
        "import": {"t": (H + 120) * 1000, "hwm": 11000},
    }


def test_readings_in_the_newest_ones_millisecond_are_new_if_higher() -> None:
    ledger = Ledger()
    got(ledger, H, 1000.0)
    got(ledger, H + 3600, 1016.7)
    ledger.take_dirty_states()
    assert got(ledger, H + 3600.0004, 1033.4) == []  # the same millisecond, higher: held
    assert ledger.take_dirty_states()
    assert got(ledger, H + 3600.0004, 1033.4) == []  # the same again: a duplicate
    assert ledger.take_dirty_states() == {}
    assert got(ledger, H + 3600.0004, 1050.1) == []  # higher still: held in its place
    rows = got(ledger, H + 3630, 1050.1)  # on time, confirms it
    assert sum(r.import_mwh for r in rows) == 33_400 and min(r.slot for r in rows) == H


def test_two_resets_inside_a_backlog_count_each_once() -> None:
    ledger = Ledger()
    got(ledger, H, 5000.0)
    got(ledger, H + 3600, 5001.0)  # on time: H is the anchor
    assert got(ledger, H + 3600.001, 0.2) == []  # a reset, held
    assert got(ledger, H + 3600.002, 30.9) == []  # the counter went on from it
    rows = got(ledger, H + 3600.003, 0.1)  # another reset: the first one was real
    assert sum(r.import_mwh for r in rows) == 30_900
    got(ledger, H + 3600.004, 0.4)
    rows = got(ledger, H + 3630, 0.5)  # on time: confirms the second
    assert sum(r.import_mwh for r in rows) == 400 + 100


def test_without_an_anchor_a_plausible_rise_is_taken_at_once() -> None:
    ledger = Ledger()
    got(ledger, H, 50.0)  # the first reading: no reading on time to anchor to yet
    assert imports(got(ledger, H + 0.05, 50.5)) == {0: 500}  # nothing to place it better
    assert got(ledger, H + 0.1, 80.0) == []  # too fast even so: held (rule 9)
    assert imports(got(ledger, H + 60, 50.7)) == {0: 200}  # fell back: a glitch
    ledger.add_reading(Reading(G1, RELAY, H + 120, energy_wh=51.0))  # stamped by the device
    assert imports(got(ledger, H + 120.01, 51.2)) == {0: 200}  # no anchor again
