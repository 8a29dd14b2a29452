"""The ingest pipeline: batches of MQTT messages → decode → ledger → one ``Batch`` → store → acks.

Two stages run concurrently so that decoding the next batch overlaps committing the previous one:

- :meth:`Pipeline.build` (on the event loop, pure CPU): decodes every message with the decoder
  registry, feeds counters and intervals to the ledger, gathers device updates, latest readings,
  events, logs and dead letters into one :class:`~kilowatch.store.protocol.Batch`;
- the commit stage commits batches *in order* and only then acknowledges their MQTT messages
  (:class:`~kilowatch.intake.commit.Committer`): while the store is unavailable the commit is
  retried with backoff, nothing unstored is acknowledged; a record no store can hold is set aside
  as a dead letter and the rest of its batch is stored.

Each reading with a power value also feeds the mean power of its channel's UTC minute
(:class:`_PowerMeans`); a minute's mean goes out (replacing what the store held for it) in the
batch where it completes, and while it is open at most every :data:`POWER_WRITE_INTERVAL_S`.

A message that cannot be decoded never stops ingestion: it becomes a dead letter (topic, payload,
reason), counted per reason and logged at most once per :data:`DEAD_LETTER_LOG_INTERVAL_S` and
reason. Neither does an event or a log line that decodes but cannot be stored (JSON nested deeper
than the stores' encoder allows): it is checked with that encoder while decoding and becomes a
dead letter ``unstorable`` with the encoder's complaint; the message's other readings count.

:meth:`Pipeline.health` says whether commits keep failing or batches wait too long
(:func:`kilowatch.intake.stats.assess`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kilowatch.decode.registry import DecoderRegistry
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError, UnstorableError
from kilowatch.intake.client import Delivery
from kilowatch.intake.commit import UNSTORABLE, Committer
from kilowatch.intake.live import LiveHub
from kilowatch.intake.stats import STALL_S, IngestHealth, IngestStats, assess
from kilowatch.model.messages import (
    Availability,
    DeviceInfo,
    Event,
    Interval,
    LogLine,
    Message,
    Reading,
)
from kilowatch.model.slots import ChannelKey, SlotEnergy, merge_slot_energy
from kilowatch.store import records
from kilowatch.store.protocol import Batch, DeadLetter, DeviceUpdate, PowerMinute, Store

log = logging.getLogger("kilowatch.ingest")

MAX_BATCH = 5000
"""Messages per committed batch at most (larger batches amortise per-channel store writes)."""
DEVICE_WRITE_INTERVAL_S = 30.0
"""A device's ``last_seen`` is written at most this often (other device changes at once)."""
LATEST_WRITE_INTERVAL_S = 1.0
"""A channel's latest reading is written at most this often (live views get every reading)."""
DEAD_LETTER_LOG_INTERVAL_S = 10.0
PAYLOAD_LOG_EXCERPT = 120
"""Bytes of a dead letter's payload shown in the log line."""
DECODER_CRASH = "decoder_crash"
"""Dead-letter reason for an exception a decoder did not translate (a bug: report it)."""
LEDGER_ERROR = "ledger_error"
POWER_MINUTES_OPEN = 5
"""Minutes of a channel whose mean power is still being accumulated (the newest ones): a reading
late by more (a device's backlog after an outage) is not counted in its minute's mean."""
POWER_WRITE_INTERVAL_S = 10.0
"""A minute still open is written at most this often (the device page's live chart); a minute
is written at once when it completes: its channel's next minute began, or it was let go."""


class DeliverySource(Protocol):
    """Where deliveries come from and go back to when committed (:class:`MqttIntake`)."""

    async def next_batch(self, max_items: int) -> list[Delivery]:
        """Up to ``max_items`` deliveries, waiting for at least one; ``[]`` once stopped."""
        ...

    def take_pending(self) -> list[Delivery]: ...

    def ack(self, deliveries: Sequence[Delivery]) -> None: ...


class LedgerLike(Protocol):
    """What the pipeline needs of :class:`kilowatch.ledger.Ledger`."""

    def add_reading(self, reading: Reading) -> list[SlotEnergy]: ...

    def add_interval(self, interval: Interval) -> list[SlotEnergy]: ...

    def take_dirty_states(self) -> dict[ChannelKey, dict[str, Any]]: ...


_Staged = tuple[Batch, list[Reading], Sequence[Delivery]]


class _PowerMeans:
    """Mean power per channel and UTC minute (``floor(ts / 60) * 60``), for :class:`PowerMinute`.

    Bounded: a channel keeps its :data:`POWER_MINUTES_OPEN` newest minutes open; opening a newer
    one lets the oldest go. A reading for a minute that was let go, or that is older than every
    open one while all are taken, is **ignored**: its mean was stored already, and a fresh mean of
    the late readings alone would replace it with a mean of fewer samples. So is a reading whose
    power or time is not a finite number. After a restart a minute's mean starts afresh with the
    first reading this process sees (its earlier readings were stored with the mean before).

    Written (:meth:`take`): a minute changed since it was last taken, in the batch where it
    completes (a reading of its channel fell in a later minute, or it was let go), while open at
    most every :data:`POWER_WRITE_INTERVAL_S`, and all of them at shutdown (``final``): a fleet
    reporting every second must not rewrite every channel's minute in every batch. A crash loses
    at most that interval of an open minute's samples (their messages were acknowledged with
    the batches before); the restarted process's mean of that minute replaces it.

    The per-reading path is one dict lookup (the channel's last minute), a range test and two
    additions (ingest's hot loop); the per-channel bookkeeping runs only when a reading falls in
    another minute than its channel's previous one.
    """

    def __init__(self) -> None:
        self.current: dict[ChannelKey, list[Any]] = {}
        """Channel -> its last minute's accumulator: ``[sum of power, samples, 1 if changed since
        written, minute, minute end (-1 once let go), device, channel, when last written (the
        pipeline's clock)]``."""
        self._open: dict[ChannelKey, tuple[dict[int, list[Any]], list[int]]] = {}
        """Channel -> (its open minutes' accumulators, ``[newest minute let go]``)."""
        self._touched: list[list[Any]] = []

    def add(self, key: ChannelKey, ts: float, power_w: float) -> None:
        """Count a reading of channel ``key`` (the pipeline inlines the case of a reading in its
        channel's current minute: ``current``, ``touch``)."""
        acc = self.current.get(key)
        if acc is not None and acc[3] <= ts < acc[4] and power_w - power_w == 0.0:
            acc[0] += power_w
            acc[1] += 1
            if not acc[2]:
                self.touch(acc)
            return
        self._add_elsewhere(key, ts, power_w)

    def touch(self, acc: list[Any]) -> None:
        """Mark an accumulator as changed since the last :meth:`take`."""
        acc[2] = 1
        self._touched.append(acc)

    def _add_elsewhere(self, key: ChannelKey, ts: float, power_w: float) -> None:
        if power_w - power_w != 0.0 or ts - ts != 0.0:  # NaN or infinite: no minute takes it
            return
        minute = int(ts // 60) * 60
        state = self._open.get(key)
        if state is None:
            state = self._open[key] = ({}, [-1])
        minutes, closed = state
        acc = minutes.get(minute)
        if acc is None:
            if minute <= closed[0]:
                return
            if len(minutes) >= POWER_MINUTES_OPEN:
                oldest = min(minutes)
                if minute < oldest:
                    return
                minutes.pop(oldest)[4] = -1  # if touched, it still goes out with this batch
                closed[0] = max(closed[0], oldest)
            acc = minutes[minute] = [0.0, 0, 0, minute, minute + 60, key[0], key[1], -math.inf]
        self.current[key] = acc
        acc[0] += power_w
        acc[1] += 1
        if not acc[2]:
            acc[2] = 1
            self._touched.append(acc)

    @property
    def pending(self) -> bool:
        """Whether a changed minute waits to be written."""
        return bool(self._touched)

    def take(self, now: float, *, final: bool = False) -> list[PowerMinute]:
        """The current mean of every changed minute that is due (see the class): complete, let
        go, last written :data:`POWER_WRITE_INTERVAL_S` before ``now`` or longer, or ``final``."""
        out: list[PowerMinute] = []
        waiting: list[list[Any]] = []
        current = self.current
        for acc in self._touched:
            due = (
                final
                or acc[4] == -1
                or now - acc[7] >= POWER_WRITE_INTERVAL_S
                or current.get((acc[5], acc[6])) is not acc
            )
            if not due:
                waiting.append(acc)
                continue
            acc[2] = 0
            acc[7] = now
            n = acc[1]
            out.append(PowerMinute(acc[5], acc[6], acc[3], acc[0] / n, n))
        self._touched = waiting
        return out


class _RateLimitedLog:
    """One log line per reason per interval; the lines in between are counted, then reported."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def dead_letter(self, letter: DeadLetter) -> None:
        now = self.clock()
        last = self._last.get(letter.reason)
        if last is not None and now - last < self.interval:
            self._suppressed[letter.reason] += 1
            return
        self._last[letter.reason] = now
        suppressed = self._suppressed.pop(letter.reason, 0)
        log.warning(
            "dead letter reason=%s topic=%r detail=%r payload=%r suppressed_since_last=%d",
            letter.reason,
            letter.topic,
            letter.detail,
            letter.payload[:PAYLOAD_LOG_EXCERPT],
            suppressed,
        )


class Pipeline:
    """Turns deliveries into committed batches. Owns the decoder state and the ledger.

    ``stall_s``: how long commits may fail, or a batch wait, before :meth:`health` says
    ``degraded``.
    """

    def __init__(
        self,
        *,
        registry: DecoderRegistry,
        ledger: LedgerLike,
        store: Store,
        hub: LiveHub | None = None,
        state: DecoderState | None = None,
        clock: Callable[[], float] = time.monotonic,
        stall_s: float = STALL_S,
    ) -> None:
        self.registry = registry
        self.ledger = ledger
        self.store = store
        self.hub = hub
        self.state = state or DecoderState()
        self.stats = IngestStats(started_at=clock())
        self.clock = clock
        self.stall_s = stall_s
        self._dead_log = _RateLimitedLog(DEAD_LETTER_LOG_INTERVAL_S)
        self.committer = Committer(store, self.stats, clock=clock, on_dead_letter=self._count_dead)
        self._sources: dict[str, str | None] = {}
        self._devices_pending: dict[str, dict[str, Any]] = {}
        self._devices_written: dict[str, tuple[float, dict[str, Any]]] = {}
        self._latest_pending: dict[ChannelKey, Reading] = {}
        self._latest_written: dict[ChannelKey, float] = {}
        self._power = _PowerMeans()
        self._online: dict[str, bool] = {}
        """Each device's availability as this process last heard it (for its events)."""
        self._uptime: dict[str, tuple[float, int]] = {}
        """Each device's last ``(ts, uptime_s)`` (a smaller uptime later: it rebooted)."""

    # -- stage 1: decode + account ---------------------------------------------------------------

    def build(
        self, deliveries: Sequence[Delivery], *, final: bool = False
    ) -> tuple[Batch, list[Reading]]:
        """Decode ``deliveries`` and account their energy; the batch to commit and its readings.

        Energy, ledger states, events, logs and dead letters are always in the batch. Device
        ``last_seen`` and latest readings are written at most every :data:`DEVICE_WRITE_INTERVAL_S`
        / :data:`LATEST_WRITE_INTERVAL_S` (any other device change at once): a fleet reporting
        every second must not rewrite every device row in every batch; a minute's mean power
        when it completes, and while open every :data:`POWER_WRITE_INTERVAL_S` at most.
        ``final`` writes everything still pending (shutdown).
        """
        decode = self.registry.decode
        state = self.state
        sources = self._sources
        devices = self._devices_pending
        latest = self._latest_pending
        fresh: dict[ChannelKey, Reading] = {}
        slots: list[SlotEnergy] = []
        events: list[Event] = []
        logs: list[LogLine] = []
        dead: list[DeadLetter] = []
        for topic, payload, received_at, _mid, _gen in deliveries:
            try:
                messages = decode(topic, payload, received_at=received_at, state=state)
            except DecodeError as err:
                dead.append(DeadLetter(received_at, topic, payload, err.reason, str(err)))
                continue
            except Exception as err:  # a decoder bug must not stop ingestion
                dead.append(DeadLetter(received_at, topic, payload, DECODER_CRASH, repr(err)))
                continue
            if not messages:
                continue
            try:
                source = sources[topic]
            except KeyError:
                decoder = self.registry.decoder_for(topic)
                source = sources[topic] = decoder.name if decoder is not None else None
            for m in messages:
                try:
                    self._account(m, received_at, source, slots, devices, fresh, events, logs)
                except UnstorableError as err:
                    what = f"event {m.component}/{m.event}" if isinstance(m, Event) else m.kind
                    why = f"{what} of {m.device} cannot be stored: {err.detail}"
                    dead.append(DeadLetter(received_at, topic, payload, UNSTORABLE, why))
                except Exception as err:  # the ledger refusing one value must not stop the others
                    log.exception("ledger failed on %r", m)
                    dead.append(DeadLetter(received_at, topic, payload, LEDGER_ERROR, repr(err)))
        for letter in dead:
            self._count_dead(letter)
        latest.update(fresh)
        now = self.clock()
        batch = Batch(
            slots=merge_slot_energy(slots),
            ledger_states=self.ledger.take_dirty_states(),
            devices=self._due_devices(now, final),
            latest=self._due_latest(now, final),
            events=events,
            logs=logs,
            dead_letters=dead,
            power=self._power.take(now, final=final),
        )
        self.stats.received += len(deliveries)
        self.stats.readings += len(fresh)
        return batch, list(fresh.values())

    def _count_dead(self, letter: DeadLetter) -> None:
        self.stats.dead_letters[letter.reason] += 1
        self._dead_log.dead_letter(letter)

    def _due_devices(self, now: float, final: bool) -> list[DeviceUpdate]:
        out: list[DeviceUpdate] = []
        written = self._devices_written
        for device, fields in list(self._devices_pending.items()):
            before = written.get(device)
            due = final or before is None or now - before[0] >= DEVICE_WRITE_INTERVAL_S
            if not due and before is not None:
                old = before[1]
                due = any(k != "last_seen" and old.get(k) != v for k, v in fields.items())
            if due:
                out.append(DeviceUpdate(device=device, **fields))
                merged = dict(before[1]) if before is not None else {}
                merged.update(fields)
                written[device] = (now, merged)
                del self._devices_pending[device]
        return out

    def _due_latest(self, now: float, final: bool) -> list[Reading]:
        out: list[Reading] = []
        written = self._latest_written
        for key, reading in list(self._latest_pending.items()):
            if final or now - written.get(key, -LATEST_WRITE_INTERVAL_S) >= LATEST_WRITE_INTERVAL_S:
                out.append(reading)
                written[key] = now
                del self._latest_pending[key]
        return out

    def _account(
        self,
        m: Message,
        received_at: float,
        source: str | None,
        slots: list[SlotEnergy],
        devices: dict[str, dict[str, Any]],
        latest: dict[ChannelKey, Reading],
        events: list[Event],
        logs: list[LogLine],
    ) -> None:
        device = devices.get(m.device)
        if device is None:
            device = devices[m.device] = {"last_seen": received_at, "source": source}
        else:
            device["last_seen"] = received_at
            device["source"] = source
        if isinstance(m, Reading):
            if m.energy_wh is not None or m.returned_energy_wh is not None:
                slots.extend(self.ledger.add_reading(m))
            key = (m.device, m.channel)
            old = latest.get(key)
            if old is None or m.ts >= old.ts:
                latest[key] = m
            p = m.power_w
            if p is not None:  # _PowerMeans.add, its common case inlined (once per reading)
                acc = self._power.current.get(key)
                ts = m.ts
                if acc is not None and acc[3] <= ts < acc[4] and p - p == 0.0:
                    acc[0] += p
                    acc[1] += 1
                    if not acc[2]:
                        self._power.touch(acc)
                else:
                    self._power.add(key, ts, p)
            device["online"] = True
        elif isinstance(m, Interval):
            slots.extend(self.ledger.add_interval(m))
        elif isinstance(m, Availability):
            device["online"] = m.online
            was = self._online.get(m.device)
            self._online[m.device] = m.online
            # A change is an event; so is a device first heard of as offline (its will), not one
            # first heard of as online (every retained "true" again at each start of kilowatch).
            if was != m.online and (was is not None or not m.online):
                events.append(Event(m.device, m.ts, "sys", "online" if m.online else "offline"))
        elif isinstance(m, DeviceInfo):
            for name in ("mac", "model", "gen", "fw_ver", "name", "ip", "available_update"):
                value = getattr(m, name)
                if value is not None:
                    device[name] = value
            if m.uptime_s is not None:
                last = self._uptime.get(m.device)
                if last is None or m.ts > last[0]:  # a late or repeated status says nothing new
                    self._uptime[m.device] = (m.ts, m.uptime_s)
                    if last is not None and m.uptime_s < last[1]:
                        events.append(
                            Event(m.device, m.ts, "sys", "reboot", {"uptime_s": m.uptime_s})
                        )
        elif isinstance(m, Event):
            # Encoded now with the stores' own encoder: one that cannot be stored is a dead letter
            # with its message, instead of a commit that no retry can ever get through.
            records.event_dumps(m)
            events.append(m)
        else:
            records.log_dumps(m)
            logs.append(m)

    # -- stage 2: commit + ack -------------------------------------------------------------------

    async def commit(self, batch: Batch, readings: Sequence[Reading]) -> None:
        """Commit ``batch`` (see :class:`~kilowatch.intake.commit.Committer`: retried while the
        store is unavailable, unstorable records set aside), then publish its readings live."""
        await self.committer.commit(batch)
        self.stats.batches += 1
        if self.hub is not None:
            self.hub.publish(readings)

    def health(self) -> IngestHealth:
        """``ok``, or ``degraded`` with the reasons: commits failing, or a batch waiting, for
        ``stall_s`` or longer."""
        return assess(self.stats, self.clock(), stall_s=self.stall_s)

    async def run(self, source: DeliverySource, *, max_batch: int = MAX_BATCH) -> None:
        """Ingest until ``source`` stops giving deliveries (``next_batch`` returns ``[]``), then
        commit what is in flight and what ``source.take_pending()`` holds, acknowledge, return.

        Cancelling it instead is a hard stop: what was not committed is simply redelivered later.
        """
        queue: asyncio.Queue[_Staged | None] = asyncio.Queue(2)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._commit_stage(queue, source))
            while True:
                try:
                    deliveries = await asyncio.wait_for(
                        source.next_batch(max_batch), timeout=LATEST_WRITE_INTERVAL_S
                    )
                except TimeoutError:
                    # Quiet: write what the throttles still hold (a device's last reading).
                    if self._devices_pending or self._latest_pending or self._power.pending:
                        batch, readings = self.build([])
                        if batch.devices or batch.latest or batch.power:
                            await self._stage(queue, (batch, readings, []))
                    continue
                if not deliveries:
                    break
                batch, readings = self.build(deliveries)
                await self._stage(queue, (batch, readings, deliveries))
            pending = source.take_pending()
            batch, readings = self.build(pending, final=True)
            await self._stage(queue, (batch, readings, pending))
            await queue.put(None)

    async def _stage(self, queue: asyncio.Queue[_Staged | None], staged: _Staged) -> None:
        """Hand a built batch to the commit stage; it is in flight until acknowledged."""
        self.stats.in_flight.append((self.clock(), len(staged[2])))
        await queue.put(staged)

    async def _commit_stage(
        self, queue: asyncio.Queue[_Staged | None], source: DeliverySource
    ) -> None:
        while (staged := await queue.get()) is not None:
            batch, readings, deliveries = staged
            await self.commit(batch, readings)
            source.ack(deliveries)
            self.stats.committed += len(deliveries)
            self.stats.in_flight.popleft()


__all__ = ["MAX_BATCH", "DeliverySource", "IngestStats", "LedgerLike", "Pipeline"]
