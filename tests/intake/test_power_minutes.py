"""The pipeline's minute means of power: a minute's mean goes out when it completes and, while
open, at most every POWER_WRITE_INTERVAL_S; it replaces what the store held; a channel's open
minutes are bounded and late readings for a minute let go are ignored."""

from __future__ import annotations

from collections.abc import Sequence

from kilowatch.decode.registry import default_registry
from kilowatch.decode.state import DecoderState
from kilowatch.intake.client import Delivery
from kilowatch.intake.commit import UNSTORABLE, Committer
from kilowatch.intake.pipeline import POWER_MINUTES_OPEN, POWER_WRITE_INTERVAL_S, Pipeline
from kilowatch.intake.stats import IngestStats
from kilowatch.ledger import Ledger
from kilowatch.model.messages import Event, Message, Reading
from kilowatch.store import Batch, Store
from kilowatch.store.protocol import PowerMinute

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z, a whole minute
DEV = "acme-0000000000aa"


class PowerDecoder:
    """``acme/<device>/<channel>`` with payload ``<ts> <power W>``."""

    name = "acme-power"
    subscriptions = ("acme/+/+",)

    def matches(self, topic: str) -> bool:
        return topic.startswith("acme/")

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        _, device, channel = topic.split("/")
        t, w = payload.split()
        return [Reading(device, channel, float(t), power_w=float(w))]

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        return None


class Clock:
    """The pipeline's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pipeline(store: Store | None = None, clock: Clock | None = None) -> Pipeline:
    registry = default_registry()
    registry.register(PowerDecoder())
    return Pipeline(
        registry=registry,
        ledger=Ledger({}),
        store=store,  # type: ignore[arg-type]
        clock=clock or Clock(),
    )


def readings(*items: tuple[str, float, float]) -> list[Delivery]:
    """Deliveries of ``(channel, seconds after T0, watts)``."""
    return [
        Delivery(f"acme/{DEV}/{ch}", f"{T0 + dt} {w}".encode(), T0 + dt, k + 1, 1)
        for k, (ch, dt, w) in enumerate(items)
    ]


def means(batch_power: Sequence[PowerMinute]) -> dict[tuple[str, int], tuple[float, int]]:
    return {(p.channel, p.minute - T0): (p.power_w, p.samples) for p in batch_power}


def test_a_minute_goes_out_when_complete_and_while_open_every_interval() -> None:
    clock = Clock()
    ingest = pipeline(clock=clock)
    first, _ = ingest.build(
        readings(("a", 0, 10), ("a", 30, 20), ("a", 59.9, 60), ("a", 60, 5), ("b", 1, 2))
    )
    # a's minute 0 is complete; a's minute 60 and b's minute 0 are open, never written: due
    assert means(first.power) == {("a", 0): (30.0, 3), ("a", 60): (5.0, 1), ("b", 0): (2.0, 1)}
    clock.now += 1
    second, _ = ingest.build(readings(("a", 61, 15), ("a", 119, float("nan"))))
    assert list(second.power) == []  # open, written a second ago
    clock.now += POWER_WRITE_INTERVAL_S
    third, _ = ingest.build([])
    assert means(third.power) == {("a", 60): (10.0, 2)}  # a NaN is not a sample
    clock.now += POWER_WRITE_INTERVAL_S
    assert list(ingest.build([])[0].power) == []  # nothing changed
    fourth, _ = ingest.build(readings(("b", 2, 4), ("a", 120, 1)))
    assert means(fourth.power) == {("a", 120): (1.0, 1), ("b", 0): (3.0, 2)}  # not a's 60
    fifth, _ = ingest.build(readings(("b", 3, 6)))
    assert list(fifth.power) == []  # written just now
    last, _ = ingest.build([], final=True)  # shutdown: everything pending
    assert means(last.power) == {("b", 0): (4.0, 3)}


def test_open_minutes_are_bounded_and_late_readings_of_a_closed_minute_ignored() -> None:
    clock = Clock()
    ingest = pipeline(clock=clock)
    # minutes 0 .. POWER_MINUTES_OPEN in one batch: minute 0 is let go, yet goes out with it
    open_ = POWER_MINUTES_OPEN
    batch, _ = ingest.build(readings(*[("a", 60 * k, float(k)) for k in range(open_ + 1)]))
    assert sorted(means(batch.power)) == [("a", 60 * k) for k in range(open_ + 1)]
    clock.now += POWER_WRITE_INTERVAL_S
    late, _ = ingest.build(readings(("a", 5, 100.0), ("a", 60 * open_ + 1, 1.0)))
    assert means(late.power) == {("a", 60 * open_): (3.0, 2)}
    clock.now += POWER_WRITE_INTERVAL_S
    older, _ = ingest.build(readings(("a", -600, 1.0)))  # older than every open minute
    assert list(older.power) == []


async def test_the_store_holds_the_latest_mean_of_a_minute(store: Store) -> None:
    clock = Clock()
    ingest = pipeline(store, clock)
    for items in ([("a", 0, 10), ("a", 10, 20)], [("a", 20, 60)], [("a", 70, 1)]):
        batch, got = ingest.build(readings(*items))
        await ingest.commit(batch, got)
        clock.now += POWER_WRITE_INTERVAL_S
    assert await store.power(DEV, start=T0, end=T0 + 120) == [
        PowerMinute(DEV, "a", T0, 30.0, 3),
        PowerMinute(DEV, "a", T0 + 60, 1.0, 1),
    ]


async def test_a_power_minute_the_store_refuses_is_set_aside_and_the_rest_stored(
    store: Store,
) -> None:
    """The commit step bisects a refused batch: a channel's power minutes are one record."""
    stats = IngestStats()
    good = PowerMinute(DEV, "a", T0, 5.0, 2)
    bad = PowerMinute(DEV, "b", T0, 1e300, 1)  # beyond what a store keeps
    batch = Batch(power=[good, bad], events=[Event(DEV, T0, "sys", "tick")])
    await Committer(store, stats).commit(batch)
    assert await store.power(DEV, start=T0, end=T0 + 60) == [good]
    assert len(await store.events(DEV)) == 1
    [letter] = await store.dead_letters()
    assert letter.reason == UNSTORABLE
    assert letter.detail.startswith(f"the store refused the power of {DEV} b (1 minutes)")
