"""Repair of estimated energy (issue 13, "Never lose an hour"): where a device kept the truth,
estimated slots (rule 7 of docs/energy-accounting.md: a gap's energy spread evenly) take the
measured energy instead.

Two sources:

- the hours of the on-device metering script (channel ``hourly``, docs/scripting.md): an hour
  the script measured fixes the estimated 15-minute slots of the device's one metered channel in
  that hour (:func:`repair_from_hours`; the store only);
- the device's own history (``EMData``/``EM1Data``), through a backfill function handed in by
  the caller (``kilowatch.fleet.history.backfill`` behind ``open_rpc`` in ``kilowatch serve``).

:class:`Repairer` runs both, every ``repair_interval_s``, over the last ``repair_window_h``
hours, inside serve's task group. Everything it writes goes through
:meth:`Store.replace_estimated`, which touches only slots still marked estimated: a repair
repeated after an unknown outcome, or by two services at once, changes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kilowatch.errors import KilowatchError
from kilowatch.intake.live import LiveHub
from kilowatch.ledger.intervals import IntervalMemory
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.store import Registration, Store

log = logging.getLogger(__name__)

HOUR_S = 3600
SLOT_S = 900
HOURLY = "hourly"
"""The metering script's channel (kilowatch.decode.hourly)."""
SCRIPT_CHANNELS = frozenset({"pm1:0", "switch:0", "em:0"})
"""Channels whose energy the script's hour measures when they are the device's only top-level
channel (hourly_energy.js reads ``pm1:0``, ``switch:0`` or ``emdata:0``, the total of ``em:0``)."""

NO_HISTORY_RECHECK_S = 86_400.0
"""A device that said it keeps no history is asked again only after this (a firmware update
may add it)."""
BACKFILL_SLACK_S = 120
"""Device history is asked only up to this long before now: the slot the device came back in
must first get its last minutes from the ledger (kilowatch.fleet.history.backfill)."""

BACK_GAP_S = 900.0
"""A device whose readings resume after more than this (its own clock) came back from a gap."""

HistoryBackfill = Callable[[Registration, int, int], Awaitable[int | None]]
"""``(registered device, start, end) -> slots repaired``, or ``None`` when the device keeps no
history (no ``EMData``/``EM1Data``). Raises for a device that cannot be reached or answers badly."""


@dataclass
class RepairReport:
    """What one repair from the script's hours did."""

    slots: int = 0
    """Estimated slots that took measured energy."""
    hours: int = 0
    """Hours those slots belong to."""
    inconsistent: int = 0
    """Hours left alone: their measured slots already hold more than the script's hour."""
    skipped_devices: list[str] = field(default_factory=list)
    """Devices with estimated slots the script's hour cannot be attributed to (several
    top-level channels, or a channel the script does not read)."""


def _mwh(wh: float) -> int:
    return round(wh * 1000)


def _stamp(row: EnergyRow) -> int:
    return int(row.start.timestamp())


def _top_level(channel: str) -> bool:
    return "/" not in channel and channel != HOURLY


def _split(total: int, n: int) -> list[int]:
    """``total`` in ``n`` integer shares, the remainder on the last."""
    share = total // n
    return [share] * (n - 1) + [total - share * (n - 1)]


async def repair_from_hours(store: Store, *, start: int, end: int) -> RepairReport:
    """Replace estimated slots in ``[start, end)`` (unix seconds) with the script's hours.

    For each device with estimated slots on its only top-level channel ``c`` (``pm1:0``,
    ``switch:0`` or ``em:0``; never a phase) and a stored ``hourly`` value ``V`` for the UTC hour
    of those slots: the hour's estimated slots of ``c`` take ``V`` minus the hour's measured
    (not estimated) slots of ``c``, split evenly (integer mWh, the remainder to the last slot),
    import and export alike, when neither difference is negative; otherwise the hour is left
    estimated and counted in :attr:`RepairReport.inconsistent`. Idempotent.
    """
    report = RepairReport()
    slots = await store.estimated_slots(start=start, end=end)
    by_device: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for device, channel, slot in slots:
        by_device[device].append((channel, slot))
    memory = _ScriptHours(store)
    for device, estimated in by_device.items():
        hours = sorted({slot - slot % HOUR_S for _, slot in estimated})
        rows = await store.energy(
            EnergyQuery(
                by="15min",
                tz="UTC",
                start=datetime.fromtimestamp(hours[0], UTC),
                end=datetime.fromtimestamp(hours[-1] + HOUR_S, UTC),
                devices=(device,),
                group="channel",
            )
        )
        tops = {row.channel for row in rows if row.channel and _top_level(row.channel)}
        tops |= {channel for channel, _ in estimated if _top_level(channel)}
        if len(tops) != 1 or not tops <= SCRIPT_CHANNELS:
            report.skipped_devices.append(device)
            continue
        (channel,) = tops
        script = _script_hours(rows)
        if any(h not in script for h in hours):
            # A script hour of 0 Wh leaves no slot; the ledger's memory of intervals has it.
            for h, value in (await memory.of(device)).items():
                script.setdefault(h, value)
        measured = _repair_device(device, channel, hours, estimated, rows, script, report)
        if measured:
            report.slots += await store.replace_estimated(measured)
    return report


class _ScriptHours:
    """The script's hours as the ledger remembers them (``IntervalMemory`` of each device's
    ``hourly`` channel: the last 7 days, zeros included), loaded once per repair when needed."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._states: dict[tuple[str, str], dict[str, object]] | None = None

    async def of(self, device: str) -> dict[int, list[int]]:
        if self._states is None:
            self._states = dict(await self._store.load_ledger_states())
        state = self._states.get((device, HOURLY)) or {}
        data = state.get("intervals")
        if not isinstance(data, dict):
            return {}
        seen = IntervalMemory.from_json(data).seen
        return {
            start: [imp, exp]
            for start, (stop, imp, exp) in seen.items()
            if stop - start == HOUR_S and start % HOUR_S == 0
        }


def _script_hours(rows: list[EnergyRow]) -> dict[int, list[int]]:
    """``hour start -> [import mWh, export mWh]`` of the ``hourly`` rows."""
    script: dict[int, list[int]] = {}
    for row in rows:
        if row.channel == HOURLY:
            slot = _stamp(row)
            acc = script.setdefault(slot - slot % HOUR_S, [0, 0])
            acc[0] += _mwh(row.energy_wh)
            acc[1] += _mwh(row.returned_energy_wh)
    return script


def _repair_device(
    device: str,
    channel: str,
    hours: Iterable[int],
    estimated: list[tuple[str, int]],
    rows: list[EnergyRow],
    script: dict[int, list[int]],
    report: RepairReport,
) -> list[SlotEnergy]:
    """The replacement values of one device's estimated slots on ``channel``."""
    est_by_hour: dict[int, list[int]] = defaultdict(list)
    for ch, slot in estimated:
        if ch == channel:
            est_by_hour[slot - slot % HOUR_S].append(slot)
    measured: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if row.channel == channel and not row.estimated:
            slot = _stamp(row)
            acc = measured[slot - slot % HOUR_S]
            acc[0] += _mwh(row.energy_wh)
            acc[1] += _mwh(row.returned_energy_wh)
    out: list[SlotEnergy] = []
    for hour in hours:
        targets = sorted(set(est_by_hour.get(hour, ())))
        value = script.get(hour)
        if not targets or value is None:
            continue
        rest_in = value[0] - measured[hour][0]
        rest_out = value[1] - measured[hour][1]
        if rest_in < 0 or rest_out < 0:
            report.inconsistent += 1
            continue
        report.hours += 1
        for slot, imp, exp in zip(
            targets, _split(rest_in, len(targets)), _split(rest_out, len(targets)), strict=True
        ):
            out.append(SlotEnergy(device, channel, slot, imp, exp))
    return out


@dataclass
class RepairStats:
    """Counters of a :class:`Repairer` since it started (for health and metrics)."""

    passes: int = 0
    slots_from_hours: int = 0
    slots_from_history: int = 0
    inconsistent_hours: int = 0
    backfill_failures: int = 0
    last_error: str | None = None


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


class Repairer:
    """The repair service of ``kilowatch serve``: :meth:`run` in serve's task group.

    Every ``interval_s``, and soon after :meth:`wake` (a device came back online), it repairs the
    last ``window_h`` hours: first from the script's hours (the store only), then, when a
    ``backfill`` is given, from the history of every registered device with estimated slots in
    the window, at most ``concurrency`` at a time. A device whose backfill fails is not asked
    again for ``backoff_s`` (doubling per failure, at most ``backoff_max_s``).
    """

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = 60.0,
        window_h: float = 168.0,
        backfill: HistoryBackfill | None = None,
        concurrency: int = 4,
        backoff_s: float = 60.0,
        backoff_max_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._window_s = int(window_h * HOUR_S)
        self._backfill = backfill
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._backoffs: dict[str, _Backoff] = {}
        self._wake = asyncio.Event()
        self.stats = RepairStats()

    def wake(self) -> None:
        """Repair soon (a device came back online: its hours and history are arriving)."""
        self._wake.set()

    async def watch(self, hub: LiveHub, *, gap_s: float = BACK_GAP_S, delay_s: float = 5.0) -> None:
        """Call :meth:`wake` ``delay_s`` after a device comes back: a reading stamped more than
        ``gap_s`` after that device's previous one (a gap the ledger spread and marked
        estimated). The delay lets the hours the script kept arrive first. Until cancelled."""
        last: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        async with hub.subscribe() as queue:
            while True:
                back = False
                for reading in await queue.get():
                    prev = last.get(reading.device)
                    if prev is not None and reading.ts - prev > gap_s:
                        back = True
                    if prev is None or reading.ts > prev:
                        last[reading.device] = reading.ts
                if back:
                    loop.call_later(delay_s, self.wake)

    async def run(self) -> None:
        """Repair every ``interval_s`` (or on :meth:`wake`) until cancelled; a store error is
        logged and the next pass tries again."""
        while True:
            try:
                await self.repair_once()
            except KilowatchError as exc:
                self.stats.last_error = str(exc)
                log.warning("repair failed: %s", exc)
            self._wake.clear()
            try:
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def repair_once(self) -> RepairStats:
        """One pass over the window; returns what this pass did (the totals are :attr:`stats`)."""
        now = self._clock()
        end = int(now) - int(now) % SLOT_S + SLOT_S
        start = end - self._window_s
        done = RepairStats(passes=1)
        hours = await repair_from_hours(self._store, start=start, end=end)
        done.slots_from_hours = hours.slots
        done.inconsistent_hours = hours.inconsistent
        if self._backfill is not None:
            await self._history(start, end, done)
        self._add(done)
        if done.slots_from_hours or done.slots_from_history or done.backfill_failures:
            log.info(
                "repair: %d slots from script hours, %d from device history, %d hours "
                "inconsistent, %d backfills failed",
                done.slots_from_hours, done.slots_from_history, done.inconsistent_hours,
                done.backfill_failures,
            )  # fmt: skip
        return done

    def _add(self, done: RepairStats) -> None:
        s = self.stats
        s.passes += 1
        s.slots_from_hours += done.slots_from_hours
        s.slots_from_history += done.slots_from_history
        s.inconsistent_hours += done.inconsistent_hours
        s.backfill_failures += done.backfill_failures
        if done.last_error:
            s.last_error = done.last_error

    async def _history(self, start: int, end: int, done: RepairStats) -> None:
        backfill = self._backfill
        assert backfill is not None
        pending = {
            device for device, _, _ in await self._store.estimated_slots(start=start, end=end)
        }
        if not pending:
            return
        now = self._clock()
        regs = [
            reg
            for reg in await self._store.registry()
            if reg.device in pending and self._backoffs.get(reg.device, _Backoff()).until <= now
        ]

        async def one(reg: Registration) -> None:
            async with self._limit:
                try:
                    n = await backfill(reg, start, end)
                except (KilowatchError, OSError, TimeoutError) as exc:
                    b = self._backoffs.setdefault(reg.device, _Backoff())
                    b.failures += 1
                    delay = min(self._backoff_max_s, self._backoff_s * 2 ** (b.failures - 1))
                    b.until = self._clock() + delay
                    done.backfill_failures += 1
                    done.last_error = f"{reg.device}: {exc}"
                    log.warning(
                        "backfill of %s failed (next try in %gs): %s", reg.device, delay, exc
                    )
                    return
                self._backoffs.pop(reg.device, None)
                if n is None:  # no EMData/EM1Data: do not ask every pass
                    self._backoffs[reg.device] = _Backoff(until=now + NO_HISTORY_RECHECK_S)
                    return
                done.slots_from_history += n

        async with asyncio.TaskGroup() as tg:
            for reg in regs:
                tg.create_task(one(reg))


@asynccontextmanager
async def fleet_backfill(
    store: Store, *, data_dir: Path, slack_s: int = BACKFILL_SLACK_S
) -> AsyncIterator[HistoryBackfill]:
    """The :data:`HistoryBackfill` of ``kilowatch serve``: each registered device reached through
    ``kilowatch.fleet.registry.open_rpc`` (on the LAN, its password from the secrets file in
    ``data_dir``) and repaired by ``kilowatch.fleet.history.backfill`` up to ``slack_s`` before
    now. One HTTP session for all, closed on exit."""
    import aiohttp

    from kilowatch.fleet.history import NO_HISTORY, backfill
    from kilowatch.fleet.registry import open_rpc
    from kilowatch.fleet.secrets import SecretBox

    secrets = SecretBox.in_data_dir(data_dir)
    async with aiohttp.ClientSession() as session:

        async def one(reg: Registration, start: int, end: int) -> int | None:
            end = min(end, int(time.time()) - slack_s)
            if end <= start:
                return 0
            async with open_rpc(reg, secrets=secrets, session=session, mqtt=None) as rpc:
                report = await backfill(store, rpc, reg.device, start=start, end=end)
            return None if report.note == NO_HISTORY else report.replaced

        yield one


__all__ = [
    "HistoryBackfill",
    "RepairReport",
    "RepairStats",
    "Repairer",
    "fleet_backfill",
    "repair_from_hours",
]
