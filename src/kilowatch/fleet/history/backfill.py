"""Backfill from device history, the I/O part: fetch a meter's records over RPC and hand what
they measured to the store for the slots a gap left estimated (docs/backfill.md).

* :func:`fetch_records`: one component's ``GetData`` answers over a range, following
  ``next_record_ts``, bounded.
* :func:`backfill`: one device: the store's estimated slots → the records they need → the store.
* :func:`backfill_fleet`: many registered devices, a bounded number at a time; a failure stays
  with its device.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from kilowatch.errors import DeviceError, FleetError
from kilowatch.fleet.history.records import (
    RECORD_PERIOD_S,
    history_channels,
    history_components,
    merged_ranges,
    slot_energy_from_records,
)
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy, slot_of
from kilowatch.store.protocol import Registration, Store

CONCURRENCY = 8
"""Devices backfilled at once by default: a fleet coming back together after a broker outage
must not have every meter serve its history at the same moment."""


# --- fetching -------------------------------------------------------------------------------------


async def fetch_records(
    rpc: ShellyRpc, component: str, component_id: int, *, start: int, end: int
) -> list[dict[str, Any]]:
    """The ``GetData`` answers of ``component`` (``"emdata"`` or ``"em1data"``) number
    ``component_id`` for the records in ``[start, end)``: one call, then one per
    ``next_record_ts`` the device chunks with, sequentially (a meter serves few calls at once).

    Bounded: each answer must move ``next_record_ts`` forward, and there are at most as many
    calls as minutes in the range plus one; a device that breaks either raises
    :class:`~kilowatch.errors.DeviceError`. Errors of the calls propagate."""
    get = {"emdata": rpc.emdata_get_data, "em1data": rpc.em1data_get_data}.get(component)
    if get is None:
        raise ValueError(f"{component!r} keeps no history (expected emdata or em1data)")
    limit = -(-(end - start) // RECORD_PERIOD_S) + 1
    answers: list[dict[str, Any]] = []
    ts = start
    while ts < end:
        if len(answers) >= limit:
            raise DeviceError(
                rpc.label,
                f"{component}:{component_id} GetData still chunking after {limit} answers for "
                f"{(end - start) // RECORD_PERIOD_S} minutes of records",
            )
        answer = await get(component_id, ts, end)
        answers.append(answer)
        following = answer.get("next_record_ts")
        if following is None:
            break
        if not isinstance(following, int) or isinstance(following, bool) or following <= ts:
            raise DeviceError(
                rpc.label,
                f"{component}:{component_id} GetData: next_record_ts {following!r} does not "
                f"move past {ts}",
            )
        ts = following
    return answers


# --- one device -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackfillReport:
    """What a backfill did for one device.

    ``estimated``: slots marked estimated in the range before; ``measured``: those of them the
    device's records measured; ``replaced``: those the store took (fewer than ``measured`` only
    when something else cleared a mark meanwhile); ``left``: estimated slots without complete
    records, which stay estimated; ``calls``: RPC calls made; ``components``: the device's
    history components; ``note``: why nothing was asked of the device, if so; ``error``: why the
    device failed (:func:`backfill_fleet` only)."""

    device: str
    estimated: int = 0
    measured: int = 0
    replaced: int = 0
    left: int = 0
    calls: int = 0
    components: tuple[str, ...] = ()
    note: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "estimated": self.estimated,
            "measured": self.measured,
            "replaced": self.replaced,
            "left": self.left,
            "calls": self.calls,
            "components": list(self.components),
            "note": self.note,
            "error": self.error,
        }


NOTHING_ESTIMATED = "nothing estimated in the range"
NO_HISTORY = "the device keeps no history (no EMData/EM1Data): its estimated slots stay"

Opener = Callable[[], AbstractAsyncContextManager[ShellyRpc]]
"""Opens the device's RPC when (and only when) a backfill needs it."""


async def backfill(
    store: Store,
    rpc: ShellyRpc,
    device: str,
    *,
    start: int,
    end: int,
    components: Sequence[str] | None = None,
) -> BackfillReport:
    """Replace ``device``'s estimated slots lying wholly in ``[start, end)`` (unix seconds) with
    the energy its records measured, per channel (phases and total).

    Asks the store which slots are estimated; with none, returns at once without a call. Else
    learns the device's history components from ``Shelly.GetStatus`` (unless ``components``,
    e.g. ``["emdata:0"]``, names them), fetches only the records of the estimated slots
    (adjacent slots merged into one range), and hands the measured ones to
    :meth:`~kilowatch.store.Store.replace_estimated`, which is atomic per device and takes
    nothing twice: a second backfill finds nothing estimated and writes nothing. A device
    without history gets a report saying so (``note``), not an error.

    Only slots the device has finished and whose readings are in the store should be asked
    for: pass an ``end`` a little behind the device's clock (the CLI keeps two minutes), or
    the slot the device came back in could take a measured value before the ledger adds its
    last minutes to it. Raises the :class:`~kilowatch.errors.DeviceError` family when the
    device fails, :class:`~kilowatch.errors.StoreError` when the store does."""

    @asynccontextmanager
    async def given() -> AsyncIterator[ShellyRpc]:
        yield rpc

    return await _backfill(store, given, device, start=start, end=end, components=components)


async def _backfill(
    store: Store,
    opener: Opener,
    device: str,
    *,
    start: int,
    end: int,
    components: Sequence[str] | None,
    keep_errors: bool = False,
) -> BackfillReport:
    """:func:`backfill` with the device opened only when needed; ``keep_errors``: a device's
    failure becomes the report's ``error`` instead of an exception."""
    first = -(-start // SLOT_SECONDS) * SLOT_SECONDS
    last = slot_of(end)
    estimated = (
        await store.estimated_slots(start=first, end=last, device=device) if first < last else []
    )
    if not estimated:
        return BackfillReport(device, note=NOTHING_ESTIMATED)
    wanted = {(channel, slot) for _, channel, slot in estimated}
    calls = 0
    measured: list[SlotEnergy] = []
    try:
        async with opener() as rpc:
            if components is None:
                components = history_components(await rpc.get_status())
                calls += 1
            if not components:
                return BackfillReport(
                    device, estimated=len(wanted), left=len(wanted), calls=calls, note=NO_HISTORY
                )
            for component in components:
                channels = history_channels(component)
                kind, _, cid = component.partition(":")
                slots = sorted({slot for channel, slot in wanted if channel in channels})
                for lo, hi in merged_ranges(slots):
                    answers = await fetch_records(rpc, kind, int(cid), start=lo, end=hi)
                    calls += len(answers)
                    rows = slot_energy_from_records(device, component, answers, start=lo, end=hi)
                    measured += [r for r in rows if (r.channel, r.slot) in wanted]
    except (DeviceError, FleetError) as err:
        if not keep_errors:
            raise
        # nothing was written: every estimated slot is still estimated
        return BackfillReport(
            device, estimated=len(wanted), left=len(wanted), calls=calls, error=str(err)
        )
    replaced = await store.replace_estimated(measured) if measured else 0
    return BackfillReport(
        device,
        estimated=len(wanted),
        measured=len(measured),
        replaced=replaced,
        left=len(wanted) - len(measured),
        calls=calls,
        components=tuple(components),
    )


# --- many devices ---------------------------------------------------------------------------------


async def backfill_fleet(
    store: Store,
    targets: Sequence[Registration],
    open_device: Callable[[Registration], AbstractAsyncContextManager[ShellyRpc]],
    *,
    start: int,
    end: int,
    concurrency: int = CONCURRENCY,
    done: Callable[[BackfillReport], Awaitable[None] | None] | None = None,
) -> list[BackfillReport]:
    """:func:`backfill` for every registered device of ``targets``, at most ``concurrency`` at
    once, each reached through ``open_device`` (``registry.open_rpc``) only when it has
    estimated slots. A device that fails (unreachable, refused, an answer out of shape) gets a
    report with ``error`` and does not stop the others; a store error stops everything.
    ``done`` is told of each report as it is made. Reports come in the order of ``targets``."""
    if concurrency < 1:
        raise FleetError("--concurrency", f"must be 1 or more, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)

    async def one(reg: Registration) -> BackfillReport:
        async with gate:
            report = await _backfill(
                store,
                lambda: open_device(reg),
                reg.device,
                start=start,
                end=end,
                components=None,
                keep_errors=True,
            )
        if done is not None:
            told = done(report)
            if told is not None:
                await told
        return report

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(reg)) for reg in targets]
    return [t.result() for t in tasks]


__all__ = [
    "CONCURRENCY",
    "NOTHING_ESTIMATED",
    "NO_HISTORY",
    "BackfillReport",
    "backfill",
    "backfill_fleet",
    "fetch_records",
]
