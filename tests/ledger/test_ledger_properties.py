"""Property-based tests of the ledger (docs/energy-accounting.md, "What the counters prove").

The generator simulates a meter: a true cumulative energy per counter (import and export, each with
its own resets), readings with float noise below 1 mWh, rounding dips, gaps, missing counters; then
delivers them reordered and duplicated. The oracle computes, from the ground truth, what the
counters prove; the ledger must store exactly that, whatever the order of delivery.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from kilowatch.ledger import Ledger, spread
from kilowatch.ledger.rules import ROUNDING_TOLERANCE_MWH, SLOT_MS
from kilowatch.model.messages import Interval, Reading
from kilowatch.model.slots import SlotEnergy

H = 1720717200
DEV, CH = "dev", "em1:0"
SMALL_INC, BIG_INC = 2_000, 100_000  # mWh per reading
RESET_MIN = ROUNDING_TOLERANCE_MWH + 2 * SMALL_INC + 1_000
"""Resets only when the counter is this high, and the reset reading and the one after it grow by
small increments: both then stay clearly below the old high-water mark, so the ledger can tell."""

FAST = settings(max_examples=100, deadline=None)
STREAMS = settings(max_examples=80, deadline=None)


@dataclass
class Sample:
    ts: float
    imp: float | None
    exp: float | None
    # ground truth, per counter: reported value in mWh and segment number (resets seen so far)
    truth: tuple[tuple[int, int] | None, tuple[int, int] | None]


@st.composite
def meter_streams(draw: st.DrawFn) -> tuple[list[Sample], list[int]]:
    """A true stream of readings and a delivery order (indices, with duplicates)."""
    n = draw(st.integers(2, 40))
    t = H * 1000 + draw(st.integers(0, 3_600_000))
    times = []
    for _ in range(n):
        gap = draw(st.integers(0, 9)) == 0
        t += draw(st.integers(900_001, 20_000_000) if gap else st.integers(1_000, 400_000))
        times.append(t)
    counters = []
    resets: set[int] = set()
    for _ in range(2):
        last_reset = -10
        value = draw(st.integers(0, 10**9))
        segment = 0
        values: list[tuple[int, int, bool]] = []  # (reported mWh, segment, present)
        for i in range(n):
            big = draw(st.integers(0, 3)) == 0 and i - last_reset > 1
            inc = draw(st.integers(0, BIG_INC if big else SMALL_INC))
            if (
                not big
                and draw(st.integers(0, 3)) == 0
                and value >= RESET_MIN
                and i >= 1
                and i - last_reset >= 6
                and all(abs(i - r) >= 6 for r in resets)
            ):
                value = draw(st.integers(0, inc))  # energy since the reset, within this span
                segment += 1
                last_reset = i
                resets.add(i)
            else:
                value += inc
            reported = value
            if draw(st.integers(0, 4)) == 0:
                reported = max(0, value - draw(st.integers(1, 999)))  # rounding dip
            values.append((reported, segment, draw(st.integers(0, 9)) < 8))
        counters.append(values)
    # The reading of a reset, the one after it and a block's last are never reordered and carry
    # both counters (so every segment has two readings the ledger can see in order).
    fixed = {0, n - 1} | resets | {r + 1 for r in resets if r + 1 < n} | {r - 1 for r in resets}
    samples = []
    for i in range(n):
        truths: list[tuple[int, int] | None] = []
        floats: list[float | None] = []
        for values in counters:
            reported, segment, present = values[i]
            if present or i in fixed:
                noise = draw(st.floats(-0.0004 if reported else 0.0, 0.0004))
                floats.append(reported / 1000 + noise)
                truths.append((reported, segment))
            else:
                floats.append(None)
                truths.append(None)
        samples.append(Sample(times[i] / 1000, floats[0], floats[1], (truths[0], truths[1])))
    order = list(range(n))
    movable = [i for i in range(n) if i not in fixed]
    for i in movable:  # local swaps between neighbouring movable readings of the same block
        j = i + 1
        if j in movable and not any(i < r <= j for r in resets) and draw(st.booleans()):
            pos = order.index(i)
            order[pos], order[pos + 1] = order[pos + 1], order[pos]
    for _ in range(draw(st.integers(0, n // 2))):  # duplicates, delivered any time later
        pos = draw(st.integers(0, len(order) - 1))
        later = draw(st.integers(pos + 1, len(order)))
        order.insert(later, order[pos])
    return samples, order


@st.composite
def wild_streams(draw: st.DrawFn, *, far_only: bool = False) -> tuple[list[Sample], list[int]]:
    """A meter stream with absurd readings mixed in: clocks leaping ahead, glitches to zero,
    impossible counters, NaN. No oracle for these; the ledger must still be restart-safe, and
    replay-safe as long as the leaps stay far ahead (see the doc, rule 4: a replay after time caught
    up with a discarded far reading may take it as new)."""
    samples, order = draw(meter_streams())
    least_leap = 30 * 86_400 if far_only else 86_401
    for _ in range(draw(st.integers(1, 6))):
        base = samples[draw(st.integers(0, len(samples) - 1))]
        kind = draw(st.sampled_from(["future", "zero", "huge", "nan", "past"]))
        ts, imp, exp = base.ts + draw(st.floats(0.001, 100.0)), base.imp, base.exp
        if kind == "future":
            ts = base.ts + draw(st.integers(least_leap, 4_000 * 86_400))
        elif kind == "zero":
            imp, exp = 0.0, 0.0
        elif kind == "huge":
            imp = draw(st.floats(1e8, 1e11))
        elif kind == "nan":
            imp = float("nan")
        else:
            ts = draw(st.floats(0.0, 946_684_799.0))
        samples.append(Sample(ts, imp, exp, (None, None)))
        order.insert(draw(st.integers(0, len(order))), len(samples) - 1)
    return samples, order


def proven(samples: list[Sample], order: list[int], which: int) -> int:
    """What the counters prove (see the doc): per segment, the rise of the high-water mark."""
    newest = -1.0
    by_segment: dict[int, list[int]] = defaultdict(list)
    for i in order:
        truth = samples[i].truth[which]
        if truth is None or samples[i].ts <= newest:
            continue
        newest = samples[i].ts
        by_segment[truth[1]].append(truth[0])
    total = 0
    for segment, values in by_segment.items():
        if segment == 0:
            total += max(values) - values[0]
        elif len(values) >= 2:  # a reset is counted once the next reading confirms it
            total += max(values)
    return total


def feed(ledger: Ledger, samples: list[Sample], order: list[int]) -> list[SlotEnergy]:
    rows = []
    for i in order:
        s = samples[i]
        reading = Reading(DEV, CH, s.ts, energy_wh=s.imp, returned_energy_wh=s.exp)
        rows += ledger.add_reading(reading)
    return rows


def restart(ledger: Ledger, saved: dict[tuple[str, str], dict[str, object]]) -> Ledger:
    saved.update(ledger.take_dirty_states())
    wire = json.dumps({"\x00".join(k): v for k, v in saved.items()})  # as a store would keep it
    loaded = json.loads(wire).items()
    return Ledger({(k.split("\x00")[0], k.split("\x00")[1]): v for k, v in loaded})


@STREAMS
@given(meter_streams())
def test_stored_energy_is_what_the_counters_prove(stream: tuple[list[Sample], list[int]]) -> None:
    samples, order = stream
    rows = feed(Ledger(), samples, order)
    assert sum(r.import_mwh for r in rows) == proven(samples, order, 0)
    assert sum(r.export_mwh for r in rows) == proven(samples, order, 1)
    for r in rows:
        assert type(r.import_mwh) is int and type(r.export_mwh) is int
        assert r.slot % 900 == 0 and r.import_mwh >= 0 and r.export_mwh >= 0


@STREAMS
@given(st.one_of(meter_streams(), wild_streams(far_only=True)))
def test_replaying_the_stream_changes_nothing(stream: tuple[list[Sample], list[int]]) -> None:
    samples, order = stream
    ledger = Ledger()
    feed(ledger, samples, order)
    before = ledger.state(DEV, CH)
    ledger.take_dirty_states()
    assert feed(ledger, samples, order) == []
    assert ledger.take_dirty_states() == {}
    assert ledger.state(DEV, CH) == before


@STREAMS
@given(st.one_of(meter_streams(), wild_streams()), st.data())
def test_restart_from_saved_states_is_invisible(
    stream: tuple[list[Sample], list[int]], data: st.DataObject
) -> None:
    samples, order = stream
    straight = Ledger()
    expected = feed(straight, samples, order)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=3)))
    saved: dict[tuple[str, str], dict[str, object]] = {}
    ledger, got, done = Ledger(), [], 0
    for cut in [*cuts, len(order)]:
        got += feed(ledger, samples, order[done:cut])
        done = cut
        ledger = restart(ledger, saved)
    assert got == expected
    assert ledger.state(DEV, CH) == straight.state(DEV, CH)


@FAST
@given(st.integers(-(10**12), 10**12), st.integers(0, 10**13), st.integers(1, 10**9))
def test_spread_is_exact_and_proportional(mwh: int, start: int, length: int) -> None:
    parts = spread(mwh, start, start + length)
    assert sum(part for _, part in parts) == mwh
    for slot, part in parts:
        lo = max(start, slot * 1000)
        hi = min(start + length, slot * 1000 + SLOT_MS)
        assert hi > lo
        assert abs(part * length - mwh * (hi - lo)) < 2 * length  # within 1 mWh of the exact share


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, 71), st.integers(0, 2_000_000), st.integers(0, 3)),
        min_size=1,
        max_size=60,
    ),
    st.data(),
)
def test_intervals_count_the_latest_value_once(
    messages: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    """Hours within three days, repeated and corrected in any order: the last value of each wins."""
    saved: dict[tuple[str, str], dict[str, object]] = {}
    ledger, rows = Ledger(), []
    latest: dict[int, tuple[int, int]] = {}
    cut = data.draw(st.integers(0, len(messages)))
    for n, (h, mwh, ret) in enumerate(messages):
        if n == cut:
            ledger = restart(ledger, saved)
        start = H + 3600 * h
        interval = Interval(DEV, "hourly", start, start + 3600, mwh / 1000, ret / 1000)
        rows += ledger.add_interval(interval)
        latest[start] = (mwh, ret)
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        totals[r.slot][0] += r.import_mwh
        totals[r.slot][1] += r.export_mwh
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for start, (mwh, ret) in latest.items():
        for slot, part in spread(mwh, start * 1000, (start + 3600) * 1000):
            expected[slot][0] += part
        for slot, part in spread(ret, start * 1000, (start + 3600) * 1000):
            expected[slot][1] += part
    assert {k: v for k, v in totals.items() if v != [0, 0]} == dict(expected)
    replay = [
        r
        for h, mwh, ret in messages
        for r in ledger.add_interval(
            Interval(DEV, "hourly", H + 3600 * h, H + 3600 * h + 3600, mwh / 1000, ret / 1000)
        )
    ]
    # Replaying re-applies older values as corrections, then the last ones put everything back.
    assert sum(r.import_mwh for r in replay) == 0 and sum(r.export_mwh for r in replay) == 0


# Readings stamped on receipt (rule 12): a meter reporting at its own pace, read by a kilowatch
# that is down now and then; what the broker kept arrives as a backlog, milliseconds apart (several
# in one millisecond too), in runs between commits, mixed with what the meter reports meanwhile,
# some of it delivered again after a crash (stamped anew) or out of order.
RX_START = 10**7  # the counters start at 10 kWh and rise less than 6 kWh in a stream: a reset
RX_BIG = 100_000  # (to at most one report's energy) is always clearly below the old mark


@dataclass
class Received:
    at: float
    imp: float | None
    exp: float | None


@st.composite
def backlog_streams(draw: st.DrawFn) -> tuple[list[Received], list[Sample]]:
    """Deliveries stamped on receipt, and the meter's true readings in the order it took them."""
    n = draw(st.integers(8, 60))
    period = draw(st.sampled_from([2_000, 10_000, 30_000, 60_000, 300_000]))  # ms
    t0 = H * 1000 + draw(st.integers(0, 3_600_000))
    counters = []
    fixed: set[int] = set()  # around a reset, never out of order (a rise before a reset that
    # comes back lower looks like a glitch: see the device-stamped streams above)
    for _ in range(2):
        value, segment, values = RX_START + draw(st.integers(0, 10**7)), 0, []
        reset_at = draw(st.integers(3, n - 4)) if draw(st.booleans()) else -1
        fixed |= {reset_at - 1, reset_at, reset_at + 1} if reset_at > 0 else set()
        for i in range(n):
            inc = draw(st.integers(0, RX_BIG if draw(st.integers(0, 3)) == 0 else 2_000))
            if i == reset_at:
                value, segment = draw(st.integers(0, inc)), 1
            else:
                value += inc
            sent = i in (0, 1, reset_at, reset_at + 1, n - 1) or draw(st.integers(0, 9)) < 8
            values.append((value, segment, sent))
        counters.append(values)
    samples = []
    for i in range(n):
        imp, exp = counters[0][i], counters[1][i]
        samples.append(
            Sample(
                (t0 + i * period) / 1000,
                imp[0] / 1000 if imp[2] else None,
                exp[0] / 1000 if exp[2] else None,
                ((imp[0], imp[1]) if imp[2] else None, (exp[0], exp[1]) if exp[2] else None),
            )
        )
    # Kilowatch is down over up to two windows and back between two reports; the first two and
    # the last three reports arrive on time (an anchor at the start, all decided at the end).
    back: dict[int, float] = {}
    for _ in range(draw(st.integers(0, 2))):
        a = draw(st.integers(2, n - 5))
        b = draw(st.integers(a + 1, min(a + 20, n - 3)))
        up = samples[b - 1].ts + draw(st.floats(0.0, period / 1000 - 0.001))
        for i in range(a, b):
            back[i] = max(back.get(i, 0.0), up)
    out: list[Received] = []
    taken_from: list[int] = []  # the sample each delivery carries
    previous = 0.0
    for i, s in enumerate(samples):
        taken = s.ts + draw(st.integers(1, 500)) / 1000  # network latency
        # Read as fast as kilowatch can: several in a millisecond, runs between commits.
        soon = previous + draw(st.sampled_from([0.0, 0.0001, 0.0004, 0.001, 0.002, 0.3, 0.9]))
        if i in back:
            at = max(back[i], soon)  # kept by the broker while kilowatch was down
        elif taken <= previous:
            at = soon  # reported while the backlog is read: queued behind it
        else:
            at = taken
        out.append(Received(at, s.imp, s.exp))
        taken_from.append(i)
        previous = at
        if at - taken > 0.5 and 0 < i < n - 3 and draw(st.integers(0, 7)) == 0:
            # Delivered again after a crash, stamped anew, from a few reports back (never across
            # a reset: stamps on receipt cannot tell that replay from a new reading, see the doc).
            for j in range(max(1, i - draw(st.integers(0, 4))), i + 1):
                if all(c[j][1] == c[i][1] for c in counters):
                    previous += draw(st.sampled_from([0.0001, 0.001]))
                    out.append(Received(previous, samples[j].imp, samples[j].exp))
                    taken_from.append(j)
    for k in range(1, len(out) - 4):  # now and then two neighbours in a backlog swap places
        a_, b_ = out[k], out[k + 1]
        if fixed & {taken_from[k], taken_from[k + 1]}:
            continue
        if b_.at - a_.at < 1 and draw(st.integers(0, 9)) == 0:
            out[k], out[k + 1] = Received(a_.at, b_.imp, b_.exp), Received(b_.at, a_.imp, a_.exp)
            taken_from[k], taken_from[k + 1] = taken_from[k + 1], taken_from[k]
    return out, samples


def feed_received(ledger: Ledger, deliveries: list[Received]) -> list[SlotEnergy]:
    rows = []
    for d in deliveries:
        reading = Reading(
            DEV, CH, d.at, energy_wh=d.imp, returned_energy_wh=d.exp, stamped_on_receipt=True
        )
        rows += ledger.add_reading(reading)
    return rows


@STREAMS
@given(backlog_streams())
def test_a_backlog_stamped_on_receipt_is_counted_once(
    stream: tuple[list[Received], list[Sample]],
) -> None:
    deliveries, samples = stream
    rows = feed_received(Ledger(), deliveries)
    order = list(range(len(samples)))  # what the counters prove, from the meter's own order
    assert sum(r.import_mwh for r in rows) == proven(samples, order, 0)
    assert sum(r.export_mwh for r in rows) == proven(samples, order, 1)
    for r in rows:
        assert type(r.import_mwh) is int and r.import_mwh >= 0 and r.export_mwh >= 0


@STREAMS
@given(backlog_streams(), st.data())
def test_a_backlog_survives_restarts_and_replays(
    stream: tuple[list[Received], list[Sample]], data: st.DataObject
) -> None:
    deliveries, _ = stream
    straight = Ledger()
    expected = feed_received(straight, deliveries)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=3)))
    saved: dict[tuple[str, str], dict[str, object]] = {}
    ledger, got, done = Ledger(), [], 0
    for cut in [*cuts, len(deliveries)]:
        got += feed_received(ledger, deliveries[done:cut])
        done = cut
        ledger = restart(ledger, saved)
    assert got == expected
    assert ledger.state(DEV, CH) == straight.state(DEV, CH)
    ledger.take_dirty_states()
    assert feed_received(ledger, deliveries) == []  # the same deliveries again: duplicates
    assert ledger.take_dirty_states() == {}
