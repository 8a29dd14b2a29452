"""One batch into the store, whatever the store or the batch does: the commit stage's step.

Two kinds of failure, told apart by the error the store raises:

- **the store is unavailable** (:class:`~kilowatch.errors.StoreError`: down, unreachable, full,
  locked, read-only): the same write is retried with capped exponential backoff until the store
  takes it. Nothing is dropped, so nothing unstored is ever acknowledged;
- **a record cannot be stored** (:class:`~kilowatch.errors.UnstorableError`: nested deeper than
  JSON encoders allow, a value the store refuses): retrying can never help. The batch is split into
  its records and bisected until the offender stands alone; every other record is stored and the
  offender becomes a dead letter (reason :data:`UNSTORABLE`, the store's complaint as its detail).
  A channel's energy (its slots *and* its ledger state) is one record, stored whole or not at all:
  isolating an event never drops energy, and a redelivery never counts it twice.

A record set aside at commit has no MQTT message of its own (a batch merges many): its dead letter
has an empty topic and the record, abbreviated, as its payload. The pipeline checks events and log
lines with the stores' own encoders while decoding (see :mod:`kilowatch.intake.pipeline`), so this
path is the safety net for what only the store itself refuses.

Anything else a store raises is a bug in that store (it should have translated it): it is logged
with its traceback and retried like an unavailable store, so nothing is lost while it lasts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import reprlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kilowatch.errors import KilowatchError, UnstorableError
from kilowatch.intake.stats import CommitFailure, IngestStats
from kilowatch.model.slots import ChannelKey, SlotEnergy
from kilowatch.store.protocol import Batch, DeadLetter, PowerMinute, Store

log = logging.getLogger("kilowatch.ingest")

COMMIT_RETRY_MIN_S = 0.2
COMMIT_RETRY_MAX_S = 10.0
"""An unavailable store is retried after 0.2, 0.4, 0.8 ... s, then every 10 s."""
UNSTORABLE = "unstorable"
"""Dead-letter reason of a record no store can hold."""
PAYLOAD_MAX = 4096
"""Bytes of a set-aside record kept as its dead letter's payload."""

_abbreviate = reprlib.Repr()
_abbreviate.maxlevel = 12  # a record nested 250 levels deep is shown 12 levels deep
_abbreviate.maxdict = _abbreviate.maxlist = _abbreviate.maxtuple = 20
_abbreviate.maxstring = _abbreviate.maxother = 200


def abbreviated(record: object) -> str:
    """``record`` (a dataclass, or anything) shown in at most a few kB, however deeply nested: its
    fields through :mod:`reprlib` (the built-in ``repr`` would walk all of it)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        return type(record).__name__ + _abbreviate.repr(fields)
    return _abbreviate.repr(record)


def split(batch: Batch) -> list[Batch]:
    """``batch`` as one batch per record, energy first: one per channel (its slots with its ledger
    state), then each device update, latest reading, event, log line and dead letter, then one
    per channel of its power minutes."""
    slots: dict[ChannelKey, list[SlotEnergy]] = {}
    for s in batch.slots:
        slots.setdefault((s.device, s.channel), []).append(s)
    states = batch.ledger_states
    channels = list(slots) + [k for k in states if k not in slots]
    units = [
        Batch(slots=slots.get(k, ()), ledger_states={k: states[k]} if k in states else {})
        for k in channels
    ]
    units += [Batch(devices=(d,)) for d in batch.devices]
    units += [Batch(latest=(r,)) for r in batch.latest]
    units += [Batch(events=(e,)) for e in batch.events]
    units += [Batch(logs=(x,)) for x in batch.logs]
    units += [Batch(dead_letters=(d,)) for d in batch.dead_letters]
    power: dict[ChannelKey, list[PowerMinute]] = {}
    for p in batch.power:
        power.setdefault((p.device, p.channel), []).append(p)
    units += [Batch(power=minutes) for minutes in power.values()]
    return units


def merge(units: Sequence[Batch]) -> Batch:
    """The records of ``units`` in one batch (the inverse of :func:`split`)."""
    states: dict[ChannelKey, dict[str, Any]] = {}
    for u in units:
        states.update(u.ledger_states)
    return Batch(
        slots=[s for u in units for s in u.slots],
        ledger_states=states,
        devices=[d for u in units for d in u.devices],
        latest=[r for u in units for r in u.latest],
        events=[e for u in units for e in u.events],
        logs=[x for u in units for x in u.logs],
        dead_letters=[d for u in units for d in u.dead_letters],
        power=[p for u in units for p in u.power],
    )


def describe(unit: Batch) -> tuple[str, float | None, object]:
    """What the one record of ``unit`` is, in words; its time, if it has one; the record."""
    if unit.slots or unit.ledger_states:
        device, channel = next(iter(unit.ledger_states), None) or (
            unit.slots[0].device,
            unit.slots[0].channel,
        )
        imported = sum(s.import_mwh for s in unit.slots)
        exported = sum(s.export_mwh for s in unit.slots)
        what = (
            f"the energy of {device} {channel} ({imported} mWh imported, {exported} mWh exported "
            f"in {len(unit.slots)} slots, and its ledger state)"
        )
        return what, None, {"slots": list(unit.slots), "ledger_states": dict(unit.ledger_states)}
    if unit.devices:
        u = unit.devices[0]
        return f"an update of device {u.device}", u.last_seen, u
    if unit.latest:
        r = unit.latest[0]
        return f"the latest reading of {r.device} {r.channel}", r.ts, r
    if unit.events:
        e = unit.events[0]
        return f"event {e.component}/{e.event} of {e.device}", e.ts, e
    if unit.logs:
        x = unit.logs[0]
        return f"a log line of {x.device}", x.ts, x
    if unit.dead_letters:
        d = unit.dead_letters[0]
        return f"a dead letter ({d.reason}) of topic {d.topic!r}", d.ts, d
    p = unit.power[0]
    what = f"the power of {p.device} {p.channel} ({len(unit.power)} minutes)"
    return what, float(p.minute), list(unit.power)


class Committer:
    """Commits batches into ``store`` for the pipeline, keeping ``stats`` up to date.

    ``on_dead_letter`` is told of every record set aside (the pipeline counts and logs it);
    ``clock`` is the pipeline's, ``wall_clock`` dates dead letters, ``sleep`` waits between
    retries (tests drive both).
    """

    def __init__(
        self,
        store: Store,
        stats: IngestStats,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.stats = stats
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_dead_letter = on_dead_letter
        self.sleep = sleep

    async def commit(self, batch: Batch) -> None:
        """Store ``batch``: retried while the store is unavailable, its unstorable records set
        aside as dead letters. Returns once every other record is stored."""
        # What is still to commit, in order: each part with its records (None: not split yet);
        # the batch itself until a record is refused. A part is built once and retried as the
        # same object: a store may know it by its commit id (a retry must not store it twice).
        todo: list[tuple[Batch, list[Batch] | None]] = [(batch, None)]
        delay = COMMIT_RETRY_MIN_S
        while todo:
            part, units = todo[0]
            try:
                await self.store.commit(part)
            except UnstorableError as err:
                self._failed(CommitFailure.UNSTORABLE, err)
                if part is batch:
                    log.warning(
                        "store refused a record error=%r: committing the batch in parts to set "
                        "it aside",
                        str(err),
                    )
                todo[:1] = self._narrow(part, units, err)
            except Exception as err:  # anything else: the store may come back, never drop
                kind = (
                    CommitFailure.UNAVAILABLE
                    if isinstance(err, KilowatchError)
                    else CommitFailure.UNEXPECTED
                )
                self._failed(kind, err)
                log.error(
                    "store commit failed kind=%s error=%r retry_in_s=%.1f",
                    kind.value,
                    str(err) or type(err).__name__,
                    delay,
                    exc_info=kind is CommitFailure.UNEXPECTED,
                )
                await self.sleep(delay)
                delay = min(delay * 2, COMMIT_RETRY_MAX_S)
            else:
                del todo[0]
                self._succeeded()

    def _narrow(
        self, part: Batch, units: list[Batch] | None, err: UnstorableError
    ) -> list[tuple[Batch, list[Batch] | None]]:
        """What to commit instead of the refused ``part``: its two halves, or, for a lone
        record, its dead letter."""
        if units is None:
            units = split(part)
        if len(units) > 1:
            halves = units[: len(units) // 2], units[len(units) // 2 :]
            return [(h[0], None) if len(h) == 1 else (merge(h), h) for h in halves]
        if not units:
            return []
        letter = self._dead_letter(units[0], err)
        return [] if letter is None else [(Batch(dead_letters=(letter,)), None)]

    def _dead_letter(self, unit: Batch, err: UnstorableError) -> DeadLetter | None:
        what, ts, record = describe(unit)
        if unit.dead_letters:  # nowhere left to put it but the log
            log.error(
                "dead letter dropped: the store refused it error=%r letter=%s",
                str(err),
                abbreviated(record),
            )
            return None
        payload = abbreviated(record).encode("utf-8", "backslashreplace")[:PAYLOAD_MAX]
        letter = DeadLetter(
            ts=ts if ts is not None else self.wall_clock(),
            topic="",
            payload=payload,
            reason=UNSTORABLE,
            detail=f"the store refused {what}: {err.detail}",
        )
        if self.on_dead_letter is not None:
            self.on_dead_letter(letter)
        return letter

    def _failed(self, kind: CommitFailure, err: BaseException) -> None:
        stats = self.stats
        stats.commit_failures += 1
        stats.commit_failures_by_kind[kind] += 1
        stats.last_error = str(err) or type(err).__name__
        if kind is not CommitFailure.UNSTORABLE and stats.failing_since is None:
            stats.failing_since = self.clock()

    def _succeeded(self) -> None:
        self.stats.failing_since = None
        self.stats.last_commit_at = self.clock()


__all__ = [
    "COMMIT_RETRY_MAX_S",
    "COMMIT_RETRY_MIN_S",
    "UNSTORABLE",
    "Committer",
    "abbreviated",
    "describe",
    "merge",
    "split",
]
