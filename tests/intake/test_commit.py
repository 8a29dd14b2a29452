"""The commit step against real stores: a record no store can hold is set aside as a dead letter
and the rest of its batch is stored; an unavailable store is retried and nothing is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from kilowatch.errors import StoreError, UnstorableError
from kilowatch.intake.commit import UNSTORABLE, Committer, describe, merge, split
from kilowatch.intake.stats import CommitFailure, IngestStats
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, DeadLetter, DeviceUpdate, Store

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
DEEP = 253
"""Levels of nesting that decode (orjson reads 1024) but do not encode (orjson writes 254)."""


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def a_batch(device: str = "shellypmminig3-000000000001", *, bad_events: int = 1) -> Batch:
    """Energy of two channels, a device update, a latest reading, good and bad events, a log
    line, a dead letter."""
    slots = [
        SlotEnergy(device, "pm1:0", T0, 1000, 0),
        SlotEnergy(device, "pm1:0", T0 + 900, 500, 0),
        SlotEnergy(device, "switch:0", T0, 250, 10),
    ]
    states = {(device, "pm1:0"): {"v": 1, "t": T0 + 900}, (device, "switch:0"): {"v": 1, "t": T0}}
    good = [Event(device, T0 + k, "input:0", "single_push", {"k": k}) for k in range(3)]
    bad = [Event(device, T0 + 10 + k, "script:1", "deep", nested(DEEP)) for k in range(bad_events)]
    return Batch(
        slots=slots,
        ledger_states=states,
        devices=[DeviceUpdate(device, last_seen=T0 + 900, online=True, model="S3PM-001PCEU16")],
        latest=[Reading(device, "pm1:0", T0 + 900, power_w=60.0, energy_wh=1.5)],
        events=[good[0], *bad, good[1], good[2]],
        logs=[LogLine(device, T0, "booted", level=2)],
        dead_letters=[DeadLetter(T0, f"{device}/events/rpc", b"{", "invalid_json", "bad")],
    )


async def energy_mwh(store: Store, device: str) -> dict[str, float]:
    rows = await store.energy(
        EnergyQuery(
            by="day",
            tz="UTC",
            start=datetime(2026, 1, 1, tzinfo=UTC),
            end=datetime(2026, 1, 2, tzinfo=UTC),
            devices=(device,),
            group="channel",
        )
    )
    return {r.channel or "": r.energy_wh for r in rows}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_split_and_merge_keep_every_record_and_a_channels_energy_whole() -> None:
    batch = a_batch(bad_events=2)
    units = split(batch)
    # 2 channels + device + latest + 5 events + log + dead letter
    assert len(units) == 11
    assert [len(u.slots) for u in units[:2]] == [2, 1]
    assert all(len(u.ledger_states) == 1 for u in units[:2])
    again = merge(units)
    assert sorted(again.slots, key=repr) == sorted(batch.slots, key=repr)
    assert again.ledger_states == batch.ledger_states
    for name in ("devices", "latest", "events", "logs", "dead_letters"):
        assert list(getattr(again, name)) == list(getattr(batch, name)), name
    assert describe(units[0])[0].startswith("the energy of shellypmminig3-000000000001 pm1:0")
    assert describe(units[5])[0] == "event script:1/deep of shellypmminig3-000000000001"


def test_a_ledger_state_without_slots_is_a_record_of_its_own() -> None:
    units = split(Batch(ledger_states={("d", "c"): {"v": 1}}))
    assert units == [Batch(slots=(), ledger_states={("d", "c"): {"v": 1}})]


@pytest.mark.parametrize("bad_events", [1, 2])
async def test_unstorable_events_become_dead_letters_and_the_rest_is_stored(
    store: Store, bad_events: int
) -> None:
    device = "shellypmminig3-000000000001"
    batch = a_batch(device, bad_events=bad_events)
    with pytest.raises(UnstorableError, match="Recursion limit"):
        await store.commit(batch)  # the issue: every retry of the whole batch fails alike
    stats, set_aside = IngestStats(), list[DeadLetter]()
    clock = Clock()
    committer = Committer(
        store, stats, clock=clock, wall_clock=lambda: T0, on_dead_letter=set_aside.append,
        sleep=clock.sleep,
    )  # fmt: skip
    await committer.commit(batch)
    assert clock.slept == []  # never waited: nothing to wait for
    assert await energy_mwh(store, device) == {"pm1:0": 1.5, "switch:0": 0.25}
    assert await store.load_ledger_states() == batch.ledger_states
    events = await store.events(device, limit=10)
    assert sorted(e.data.get("k") for e in events) == [0, 1, 2]
    assert [x.message for x in await store.logs(device)] == ["booted"]
    assert [r.power_w for r in await store.latest(device)] == [60.0]
    record = await store.device(device)
    assert record is not None and record.model == "S3PM-001PCEU16"
    letters = await store.dead_letters(10)
    expected = sorted(["invalid_json"] + [UNSTORABLE] * bad_events)
    assert sorted(d.reason for d in letters) == expected
    unstorable = [d for d in letters if d.reason == UNSTORABLE]
    # the pipeline is told of each, to count them
    assert sorted(unstorable, key=repr) == sorted(set_aside, key=repr)
    for d in unstorable:
        assert d.topic == ""
        assert d.detail.startswith(f"the store refused event script:1/deep of {device}")
        assert "Recursion limit reached" in d.detail
        assert d.payload.startswith(b"Event{'component': 'script:1', 'data': {'a': {'a':")
        assert f"'device': '{device}'".encode() in d.payload and len(d.payload) < 1000
    assert stats.commit_failures_by_kind[CommitFailure.UNSTORABLE] >= 1 + bad_events
    assert stats.failing_since is None and stats.last_commit_at == clock.now


class FailingStore:
    """A real store behind a switch: while ``failing``, commits raise ``error`` (the store's own
    error for a server that is down) before they reach it."""

    def __init__(self, store: Store, error: BaseException) -> None:
        self.store = store
        self.error = error
        self.failing = True
        self.attempts = 0
        self.seen: list[Batch] = []
        self.on_attempt: Callable[[int], Awaitable[None]] | None = None

    async def commit(self, batch: Batch) -> None:
        self.attempts += 1
        self.seen.append(batch)
        if self.on_attempt is not None:
            await self.on_attempt(self.attempts)
        if self.failing:
            raise self.error
        await self.store.commit(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (StoreError("commit to Redis failed: Connection refused"), CommitFailure.UNAVAILABLE),
        (RuntimeError("a store bug"), CommitFailure.UNEXPECTED),
    ],
)
async def test_an_unavailable_store_is_retried_with_backoff_and_nothing_is_dropped(
    store: Store, error: BaseException, kind: CommitFailure
) -> None:
    device = "shellypmminig3-000000000002"
    failing = FailingStore(store, error)
    stats, clock = IngestStats(), Clock()
    committer = Committer(failing, stats, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]

    async def heal(attempt: int) -> None:
        if attempt == 1:
            assert stats.failing_since is None
        if attempt > 1:
            assert stats.failing_since == 100.0  # since the first failure
            assert stats.last_error == str(error)
        if attempt == 9:
            failing.failing = False

    failing.on_attempt = heal
    await committer.commit(a_batch(device, bad_events=0))
    assert failing.attempts == 9
    assert clock.slept == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]  # capped at 10 s
    assert stats.commit_failures == stats.commit_failures_by_kind[kind] == 8
    assert stats.failing_since is None and stats.last_commit_at == clock.now
    assert await energy_mwh(store, device) == {"pm1:0": 1.5, "switch:0": 0.25}
    assert len(await store.events(device)) == 3


async def test_a_store_failing_while_records_are_set_aside_loses_and_doubles_nothing(
    store: Store,
) -> None:
    """The store goes away in the middle of isolating a record: the part being committed is
    retried (as the same object: a store may know it by its commit id), the parts already stored
    are not stored again."""
    device = "shellypmminig3-000000000003"
    failing = FailingStore(store, StoreError("commit to Redis failed: Connection reset"))
    failing.failing = False
    stats, clock = IngestStats(), Clock()
    committer = Committer(failing, stats, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]

    async def flap(attempt: int) -> None:
        failing.failing = attempt in (3, 4)

    failing.on_attempt = flap
    await committer.commit(a_batch(device, bad_events=1))
    assert stats.commit_failures_by_kind[CommitFailure.UNAVAILABLE] == 2
    assert failing.seen[2] is failing.seen[3] is failing.seen[4]  # one part, tried three times
    assert failing.seen[1] is not failing.seen[2]
    assert await energy_mwh(store, device) == {"pm1:0": 1.5, "switch:0": 0.25}
    assert sorted(e.data.get("k") for e in await store.events(device, limit=10)) == [0, 1, 2]
    assert sorted(d.reason for d in await store.dead_letters(10)) == ["invalid_json", UNSTORABLE]


async def test_a_refused_dead_letter_is_only_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    letter = DeadLetter(T0, "t", b"x", "invalid_json", "bad")
    refused = UnstorableError("refused", detail="no")

    class Refusing:
        async def commit(self, batch: Batch) -> None:
            raise refused

    committer = Committer(Refusing(), IngestStats())  # type: ignore[arg-type]
    await asyncio.wait_for(committer.commit(Batch(dead_letters=[letter])), 5)
    assert "dead letter dropped: the store refused it" in caplog.text
