"""What is new in a device's log or events: by the store's order, never by time alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kilowatch.fleet.logs import POLL_LIMIT_MAX, event_tail, log_tail, newer
from kilowatch.model.messages import Event, LogLine
from kilowatch.store import Batch, Store, open_store

DEV = "shellypmminig3-ecda3bc4ddb0"


def line(i: int, ts: float = 100.0, text: str | None = None) -> LogLine:
    return LogLine(DEV, ts, text if text is not None else f"line {i}", level=2)


def test_newer_finds_the_seen_stretch_below_the_new_items() -> None:
    a, b, c, d, e = (line(i) for i in range(5))  # all at the same time
    assert newer([c, b, a], [e, d, c, b, a]) == [e, d]
    assert newer([c, b, a], [c, b, a]) == []
    assert newer([], [b, a]) == [b, a]
    # equal lines in a row are told apart by their place
    x, y = line(0, text="x"), line(0, text="y")
    assert newer([x, x, y], [x, x, x, y]) == [x]
    assert newer([x, y], [x, x, y]) == [x]
    # the oldest seen dropped off the end of a bounded list
    assert newer([c, b, a], [e, d, c]) == [e, d]
    # none of the seen is there: more arrived than the read holds
    assert newer([b, a], [e, d, c]) is None
    # a read cut at its limit may end with an item equal to the newest seen: not enough
    assert newer([c, b], [e, d, c], min_overlap=2) is None
    assert newer([c, b], [d, c, b], min_overlap=2) == [d]


def test_newer_does_not_go_by_time() -> None:
    late, early = line(1, ts=200.0), line(2, ts=50.0)  # a device whose clock jumped back
    assert newer([late], [early, late]) == [early]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'kw.db'}") as s:
        yield s


async def test_a_tail_reads_each_item_once_and_reports_a_gap(store: Store) -> None:
    await store.commit(Batch(logs=[line(i) for i in range(3)]))
    tail = log_tail(store, DEV)
    assert [x.message for x in await tail.start(2)] == ["line 2", "line 1"]
    assert (await tail.poll()).items == []
    await store.commit(Batch(logs=[line(2), line(3)]))  # an equal line again, and a new one
    fresh = await tail.poll()
    assert [x.message for x in fresh.items] == ["line 3", "line 2"] and not fresh.gap
    # a burst longer than a short read: read as far as the store keeps, nothing missed
    await store.commit(Batch(logs=[line(i) for i in range(4, 304)]))
    fresh = await tail.poll()
    assert [x.message for x in fresh.items] == [f"line {i}" for i in range(303, 3, -1)]
    assert not fresh.gap
    # more than the store keeps of a device: what is kept, and the gap said
    await store.commit(Batch(logs=[line(i) for i in range(304, 304 + POLL_LIMIT_MAX + 5)]))
    fresh = await tail.poll()
    assert fresh.gap and len(fresh.items) == POLL_LIMIT_MAX
    assert fresh.items[0].message == f"line {303 + POLL_LIMIT_MAX + 5}"
    await store.commit(Batch(logs=[line(0)]))
    fresh = await tail.poll()
    assert [x.message for x in fresh.items] == ["line 0"] and not fresh.gap


async def test_an_events_tail_from_nothing(store: Store) -> None:
    tail = event_tail(store, DEV)
    assert await tail.start(10) == []
    ev = Event(DEV, 5.0, "sys", "ota_success")
    await store.commit(Batch(events=[ev, ev]))
    assert (await tail.poll()).items == [ev, ev]
    assert (await tail.poll()).items == []
