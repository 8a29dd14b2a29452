"""The pipeline's minute means of power: each batch carries the current mean of every minute it
touched, which replaces what the store held; a channel's open minutes are bounded and late
readings for a minute let go are ignored."""

from __future__ import annotations

from kilowatch.decode.registry import default_registry
from kilowatch.decode.state import DecoderState
from kilowatch.intake.client import Delivery
from kilowatch.intake.commit import UNSTORABLE, Committer
from kilowatch.intake.pipeline import POWER_MINUTES_OPEN, Pipeline
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


def pipeline(store: Store | None = None) -> Pipeline:
    registry = default_registry()
    registry.register(PowerDecoder())
    return Pipeline(registry=registry, ledger=Ledger({}), store=store)  # type: ignore[arg-type]


def readings(*items: tuple[str, float, float]) -> list[Delivery]:
    """Deliveries of ``(channel, seconds after T0, watts)``."""
    return [
        Delivery(f"acme/{DEV}/{ch}", f"{T0 + dt} {w}".encode(), T0 + dt, k + 1, 1)
        for k, (ch, dt, w) in enumerate(items)
    ]


def means(batch_power: list[PowerMinute]) -> dict[tuple[str, int], tuple[float, int]]:
    return {(p.channel, p.minute - T0): (p.power_w, p.samples) for p in batch_power}


def test_each_batch_carries_the_current_mean_of_the_minutes_it_touched() -> None:
    ingest = pipeline()
    first, _ = ingest.build(
        readings(("a", 0, 10), ("a", 30, 20), ("a", 59.9, 60), ("a", 60, 5), ("b", 1, 2))
    )
    assert means(list(first.power)) == {
        ("a", 0): (30.0, 3),
        ("a", 60): (5.0, 1),
        ("b", 0): (2.0, 1),
    }
    second, _ = ingest.build(readings(("a", 61, 15), ("a", 119, float("nan"))))
    assert means(list(second.power)) == {("a", 60): (10.0, 2)}  # a NaN is not a sample
    quiet, _ = ingest.build([])
    assert list(quiet.power) == []


def test_open_minutes_are_bounded_and_late_readings_of_a_closed_minute_ignored() -> None:
    ingest = pipeline()
    # minutes 0 .. POWER_MINUTES_OPEN in one batch: minute 0 is let go, yet goes out with it
    batch, _ = ingest.build(
        readings(*[("a", 60 * k, float(k)) for k in range(POWER_MINUTES_OPEN + 1)])
    )
    assert sorted(means(list(batch.power))) == [
        ("a", 60 * k) for k in range(POWER_MINUTES_OPEN + 1)
    ]
    late, _ = ingest.build(readings(("a", 5, 100.0), ("a", 60 * POWER_MINUTES_OPEN + 1, 1.0)))
    assert means(list(late.power)) == {("a", 60 * POWER_MINUTES_OPEN): (3.0, 2)}
    older, _ = ingest.build(readings(("a", -600, 1.0)))  # older than every open minute
    assert list(older.power) == []


async def test_the_store_holds_the_latest_mean_of_a_minute(store: Store) -> None:
    ingest = pipeline(store)
    for items in ([("a", 0, 10), ("a", 10, 20)], [("a", 20, 60)], [("a", 70, 1)]):
        batch, got = ingest.build(readings(*items))
        await ingest.commit(batch, got)
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
