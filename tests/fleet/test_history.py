"""Backfill from device history: records → measured slots (pure), fetching with next_record_ts
through a simulated Pro 3EM and Pro EM, and backfill against a real store (SQLite and Redis)
whose slots a gap left estimated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kilowatch.cli.app import app
from kilowatch.cli.backfill import SETTLE_S, pick, time_range
from kilowatch.errors import ConfigError, DeviceError, FleetError, KilowatchError
from kilowatch.fleet.history import (
    NO_HISTORY,
    NOTHING_ESTIMATED,
    RECORDS_PER_SLOT,
    BackfillReport,
    backfill,
    fetch_records,
    history_channels,
    history_components,
    merged_ranges,
    slot_energy_from_records,
)
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.model.slots import SlotEnergy, slot_of
from kilowatch.query.energy import EnergyQuery
from kilowatch.service.config import load_settings
from kilowatch.store import Batch, Registration, Store, open_store
from kilowatch.testing.servers import free_port
from shellysim import Fleet
from shellysim.clock import SimClock

from .simrpc import lan_rpc

H = 1_773_000_000 // 3600 * 3600
"""A UTC full hour (2026-03-08 20:00): slots H, H+900, ..."""
EM1_KEYS = ["total_act_energy", "total_act_ret_energy", "max_act_power"]


def em1_answer(ts: int, rows: list[list[Any]], **extra: Any) -> dict[str, Any]:
    """A GetData answer of EM1Data shape (a few of its keys are enough: keys name the columns)."""
    return {"keys": EM1_KEYS, "data": [{"ts": ts, "period": 60, "values": rows}], **extra}


def emdata_answer(ts: int, phases: list[tuple[float, float]], minutes: int) -> dict[str, Any]:
    """EMData rows whose phase a/b/c import and export are ``phases`` every minute."""
    keys: list[str] = []
    for p in "abc":
        keys += [f"{p}_total_act_energy", f"{p}_total_act_ret_energy", f"{p}_max_act_power"]
    row: list[Any] = []
    for imp, ret in phases:
        row += [imp, ret, 1000.0]
    return {"keys": [*keys, "n_avg_current"], "data": [
        {"ts": ts, "period": 60, "values": [[*row, 0.0] for _ in range(minutes)]}
    ]}  # fmt: skip


# --- pure -----------------------------------------------------------------------------------------


def test_a_slot_of_fifteen_records_is_measured_in_mwh() -> None:
    rows = [[0.123, 0.0, 7.0]] * 15 + [[1.0, 0.25, 7.0]] * 15
    got = slot_energy_from_records("d", "em1data:1", [em1_answer(H, rows)], start=H, end=H + 1800)
    assert got == [
        SlotEnergy("d", "em1:1", H, 1845, 0),
        SlotEnergy("d", "em1:1", H + 900, 15000, 3750),
    ]
    assert all(not s.estimated for s in got)


def test_a_three_phase_meter_gives_each_phase_and_their_sum() -> None:
    answer = emdata_answer(H, [(0.5, 0.0), (0.001, 0.002), (0.1, 0.0)], RECORDS_PER_SLOT)
    got = {s.channel: s for s in slot_energy_from_records("d", "emdata:0", [answer],
                                                           start=H, end=H + 900)}  # fmt: skip
    assert {c: (s.import_mwh, s.export_mwh) for c, s in got.items()} == {
        "em:0": (9015, 30),
        "em:0/a": (7500, 0),
        "em:0/b": (15, 30),
        "em:0/c": (1500, 0),
    }


def test_a_slot_with_a_missing_minute_is_never_guessed() -> None:
    full = [[0.1, 0.0, 1.0]] * 15
    holed = em1_answer(H + 900, [[0.1, 0.0, 1.0]] * 7)
    holed["data"].append({"ts": H + 900 + 8 * 60, "period": 60, "values": [[0.1, 0.0, 1.0]] * 7})
    got = slot_energy_from_records(
        "d", "em1data:0", [em1_answer(H, full), holed], start=H, end=H + 1800
    )
    assert [s.slot for s in got] == [H]


def test_only_slots_wholly_in_the_range_and_in_records() -> None:
    rows = [[0.1, 0.0, 1.0]] * 45  # H .. H+2700
    answer = em1_answer(H, rows)
    # the range starts mid-slot: slot H is not wholly in it; slot H+1800 is cut by the end
    got = slot_energy_from_records("d", "em1data:0", [answer], start=H + 60, end=H + 2700 - 60)
    assert [s.slot for s in got] == [H + 900]
    # records starting mid-slot do not measure that slot
    late = em1_answer(H + 120, [[0.1, 0.0, 1.0]] * 43)
    got = slot_energy_from_records("d", "em1data:0", [late], start=H, end=H + 2700)
    assert [s.slot for s in got] == [H + 900, H + 1800]


def test_overlapping_chunks_count_a_minute_once_and_keys_carry_over() -> None:
    first = em1_answer(H, [[0.2, 0.0, 1.0]] * 10, next_record_ts=H + 600)
    second = {"data": [{"ts": H + 480, "period": 60, "values": [[0.2, 0.0, 1.0]] * 7}]}
    got = slot_energy_from_records("d", "em1data:0", [first, second], start=H, end=H + 900)
    assert got == [SlotEnergy("d", "em1:0", H, 3000, 0)]


def test_one_rounding_per_slot() -> None:
    # 15 rows of 0.0001 Wh: rounding each row would give 0; the slot holds 1.5 mWh → 2
    # (round half to even), and 15 x 0.1 Wh (not exact in binary) is exactly 1500 mWh
    rows = [[0.0001, 0.1, 1.0]] * 15
    got = slot_energy_from_records("d", "em1data:0", [em1_answer(H, rows)], start=H, end=H + 900)
    assert (got[0].import_mwh, got[0].export_mwh) == (2, 1500)


@pytest.mark.parametrize("bad", [None, -0.001, float("nan"), "0.1", True])
def test_a_bad_value_leaves_the_slot_of_that_channel_out(bad: Any) -> None:
    rows = [[0.1, 0.0, 1.0]] * 14 + [[bad, 0.0, 1.0]]
    assert (
        slot_energy_from_records("d", "em1data:0", [em1_answer(H, rows)], start=H, end=H + 900)
        == []
    )


def test_rows_of_another_period_are_not_understood() -> None:
    answer = {"keys": EM1_KEYS, "data": [{"ts": H, "period": 300, "values": [[1.0, 0, 1]] * 3}]}
    assert slot_energy_from_records("d", "em1data:0", [answer], start=H, end=H + 900) == []


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"data": [{"ts": H, "period": 60, "values": [[0.1, 0, 1]]}]}, "without their keys"),
        ({"keys": EM1_KEYS, "data": [{"ts": H, "period": 60, "values": [[0.1]]}]}, "match"),
        ({"keys": EM1_KEYS, "data": {"ts": H}}, "data is not a list"),
        ({"keys": EM1_KEYS, "data": [{"ts": "x", "period": 60, "values": []}]}, "lacks"),
        ({"keys": "total_act_energy", "data": []}, "keys is not"),
    ],
)
def test_answers_out_of_shape_are_the_devices_error(answer: dict[str, Any], match: str) -> None:
    with pytest.raises(DeviceError, match=match) as err:
        slot_energy_from_records("dev-1", "em1data:0", [answer], start=H, end=H + 900)
    assert err.value.device == "dev-1"


def test_components_channels_and_ranges() -> None:
    status: dict[str, Any] = {
        "sys": {},
        "em:0": {},
        "emdata:0": {},
        "em1data:1": {},
        "em1data:x": {},
        "pm1:0": {},
    }
    assert history_components(status) == ["em1data:1", "emdata:0"]
    assert list(history_channels("emdata:2")) == ["em:2", "em:2/a", "em:2/b", "em:2/c"]
    assert history_channels("em1data:1") == {
        "em1:1": (("total_act_energy",), ("total_act_ret_energy",))
    }
    with pytest.raises(ValueError, match="keeps no history"):
        history_channels("pm1:0")
    assert merged_ranges([H + 2700, H, H + 1800, H + 900, H + 900, H + 5400]) == [
        (H, H + 3600),
        (H + 5400, H + 6300),
    ]
    assert merged_ranges([]) == []


# --- fetching from simulated meters -------------------------------------------------------------


@pytest.fixture
async def meters() -> AsyncIterator[Fleet]:
    """A Pro 3EM and a Pro EM that have metered (at least) three hours since ``H - 600``, then
    frozen."""
    clock = SimClock(start=H - 600, speed=40_000)
    async with Fleet(devices=2, models=["3em", "em"], clock=clock, engine=None) as fleet:
        await fleet.wait_until(H + 3 * 3600)
        clock.set_speed(1e-9)  # freeze: the records and the truth stay where they are
        fleet.tick()
        yield fleet


def truth_mwh(fleet: Fleet, device: str, channel: str, slot: int) -> tuple[float, float]:
    imported, returned = fleet.truth.total(device, channel, slot, slot + 1)
    return imported * 1000, returned * 1000


async def test_records_through_next_record_ts_measure_every_slot(meters: Fleet) -> None:
    three, em = meters.devices
    async with lan_rpc(meters, three) as (rpc, recording):
        answers = await fetch_records(rpc, "emdata", 0, start=H, end=H + 7200)
        assert recording.count("EMData.GetData") == len(answers) == 2  # 120 rows, 60 a call
        assert "next_record_ts" in answers[0] and "next_record_ts" not in answers[1]
    slots = slot_energy_from_records(three.id, "emdata:0", answers, start=H, end=H + 7200)
    assert len(slots) == 8 * 4  # 8 slots, em:0 and its three phases
    assert sum(s.import_mwh for s in slots) > 1_000_000  # over 1 kWh: a real load
    worst = _worst(meters, slots)
    print("worst slot error, mWh:", worst)
    # records carry whole mWh per minute: a phase's slot is off by at most 15 x 0.5 mWh,
    # the total (45 rows) by at most 22.5 mWh
    assert worst["phase"] <= 7.5 and worst["total"] <= 22.5, worst
    async with lan_rpc(meters, em) as (rpc, recording):
        answers = await fetch_records(rpc, "em1data", 1, start=H, end=H + 3600)
        assert recording.count("EM1Data.GetData") == 1
    slots = slot_energy_from_records(em.id, "em1data:1", answers, start=H, end=H + 3600)
    assert [s.channel for s in slots] == ["em1:1"] * 4
    assert _worst(meters, slots)["phase"] <= 7.5


def _worst(fleet: Fleet, slots: list[SlotEnergy]) -> dict[str, float]:
    worst = {"phase": 0.0, "total": 0.0}
    truth = fleet.truth.as_dict()
    for s in slots:
        assert str(s.slot) in truth[s.device][s.channel], f"no truth for {s}"
        imported, returned = truth_mwh(fleet, s.device, s.channel, s.slot)
        kind = "total" if s.channel.startswith("em:") and "/" not in s.channel else "phase"
        off = max(abs(s.import_mwh - imported), abs(s.export_mwh - returned))
        worst[kind] = max(worst[kind], off)
    return worst


async def test_records_beyond_the_device_are_no_slots(meters: Fleet) -> None:
    three = meters.devices[0]
    async with lan_rpc(meters, three) as (rpc, _):
        # before the first record and after the last complete minute: empty answers, one call
        before = await fetch_records(rpc, "emdata", 0, start=H - 7200, end=H - 3600)
        now = slot_of(three.meters()[0].t)
        after = await fetch_records(rpc, "emdata", 0, start=now + 900, end=now + 4500)
    assert [a["data"] for a in before + after] == [[], []]
    assert slot_energy_from_records(three.id, "emdata:0", before, start=H - 7200, end=H) == []


async def test_get_records_lists_the_stored_blocks(meters: Fleet) -> None:
    three, em = meters.devices
    async with lan_rpc(meters, three) as (rpc, _):
        blocks = (await rpc.emdata_get_records(0))["data_blocks"]
        assert blocks[0]["ts"] == H - 540 and blocks[0]["period"] == 60  # from its first minute
        later = (await rpc.emdata_get_records(0, ts=H))["data_blocks"]
        assert later[0]["ts"] == H and later[0]["records"] == blocks[0]["records"] - 9
    async with lan_rpc(meters, em) as (rpc, _):
        assert (await rpc.em1data_get_records(1))["data_blocks"][0]["ts"] == H - 540


class Stuck:
    """A device whose GetData always points back at the same next_record_ts."""

    label = "stuck-1"

    async def call(self, method: str, params: Mapping[str, Any] | None, *, timeout: float) -> Any:
        assert params is not None
        return {"keys": EM1_KEYS, "data": [], "next_record_ts": params["ts"]}

    async def close(self) -> None:
        pass


async def test_a_device_that_never_stops_chunking_is_bounded() -> None:
    async with ShellyRpc(Stuck()) as rpc:
        with pytest.raises(DeviceError, match="does not move past"):
            await fetch_records(rpc, "em1data", 0, start=H, end=H + 900)
    with pytest.raises(ValueError, match="keeps no history"):
        await fetch_records(rpc, "pm1", 0, start=H, end=H + 900)


# --- backfill against a real store ---------------------------------------------------------------

GAP = range(H + 900, H + 4500, 900)
"""Four slots a gap left estimated on every channel of both meters; H and H+4500 are measured."""


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'backfill.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("redis_url")
    )
    async with open_store(url) as opened:
        yield opened


async def _gap(store: Store, fleet: Fleet) -> None:
    """Commit, as the ledger would, measured slots around GAP and 1000 mWh estimated in each of
    GAP's slots, on every channel of the fleet's meters."""
    slots = []
    for dev in fleet.devices:
        for channel in _channels(dev.id):
            for slot in range(H, H + 5400, 900):
                gap = slot in GAP
                slots.append(SlotEnergy(dev.id, channel, slot, 1000 if gap else 500, 0, gap))
    await store.commit(Batch(slots=slots))


def _channels(device: str) -> list[str]:
    if device.startswith("shellypro3em"):
        return list(history_channels("emdata:0"))
    return ["em1:0", "em1:1"]


async def _slots(store: Store, device: str) -> dict[tuple[str, int], tuple[int, int, bool]]:
    query = EnergyQuery(
        by="15min", tz="UTC", start=datetime.fromtimestamp(H, UTC),
        end=datetime.fromtimestamp(H + 5400, UTC), devices=(device,),
    )  # fmt: skip
    return {
        (str(r.channel), int(r.start.timestamp())): (
            round(r.energy_wh * 1000),
            round(r.returned_energy_wh * 1000),
            r.estimated,
        )
        for r in await store.energy(query)
    }


async def test_backfill_replaces_the_estimated_slots_with_the_records(
    meters: Fleet, store: Store
) -> None:
    await _gap(store, meters)
    three = meters.devices[0]
    async with lan_rpc(meters, three) as (rpc, recording):
        report = await backfill(store, rpc, three.id, start=H - 3600, end=H + 7200)
        assert recording.sent[0] == "Shelly.GetStatus"
        assert recording.count("EMData.GetData") == 1  # the four slots: one range, 60 rows
    assert (report.estimated, report.measured, report.replaced, report.left) == (16, 16, 16, 0)
    assert (report.calls, report.components, report.note) == (2, ("emdata:0",), None)
    async with lan_rpc(meters, three) as (rpc, _):
        answers = await fetch_records(rpc, "emdata", 0, start=H + 900, end=H + 4500)
    expected = {
        (s.channel, s.slot): (s.import_mwh, s.export_mwh, False)
        for s in slot_energy_from_records(three.id, "emdata:0", answers, start=H, end=H + 4500)
    }
    stored = await _slots(store, three.id)
    for channel in _channels(three.id):
        for slot in range(H, H + 5400, 900):
            want = expected[channel, slot] if slot in GAP else (500, 0, False)
            assert stored[channel, slot] == want, (channel, slot)
    assert _worst(meters, [SlotEnergy(three.id, c, t, i, e) for (c, t), (i, e, _) in
                           stored.items() if t in GAP])["phase"] <= 7.5  # fmt: skip

    # a second backfill finds nothing estimated: no call, no write
    async with lan_rpc(meters, three) as (rpc, recording):
        again = await backfill(store, rpc, three.id, start=H - 3600, end=H + 7200)
        assert recording.sent == []
    assert again == BackfillReport(three.id, note=NOTHING_ESTIMATED)
    assert await _slots(store, three.id) == stored


async def test_backfill_asks_only_for_what_is_estimated_and_leaves_what_records_lack(
    meters: Fleet, store: Store
) -> None:
    """Slots past the device's last complete minute stay estimated; a range cutting a slot
    leaves that slot alone; named components skip GetStatus."""
    em = meters.devices[1]
    last = slot_of(em.meters()[0].t)  # the slot the device is in: not all its records exist
    late = [SlotEnergy(em.id, "em1:0", t, 900, 0, True) for t in (last - 900, last)]
    await store.commit(Batch(slots=late))
    async with lan_rpc(meters, em) as (rpc, recording):
        # a start a minute into slot last-900 leaves that slot out; slot last has no records yet
        report = await backfill(
            store, rpc, em.id, start=last - 840, end=last + 900, components=["em1data:0"]
        )
        assert recording.sent == ["EM1Data.GetData"]  # components named: no GetStatus
        assert (report.estimated, report.measured, report.replaced, report.left) == (1, 0, 0, 1)
        report = await backfill(
            store, rpc, em.id, start=last - 900, end=last + 900, components=["em1data:0"]
        )
    assert (report.estimated, report.measured, report.replaced, report.left) == (2, 1, 1, 1)
    still = await store.estimated_slots(start=H, end=H + 86400, device=em.id)
    assert still == [(em.id, "em1:0", last)]


async def test_a_device_without_history_is_told_not_failed(store: Store) -> None:
    clock = SimClock(start=H - 600, speed=40_000)
    async with Fleet(devices=1, models=["pm1"], clock=clock, engine=None) as fleet:
        dev = fleet.devices[0]
        await store.commit(Batch(slots=[SlotEnergy(dev.id, "pm1:0", H, 10, 0, True)]))
        async with lan_rpc(fleet, dev) as (rpc, recording):
            report = await backfill(store, rpc, dev.id, start=H, end=H + 900)
            assert recording.sent == ["Shelly.GetStatus"]
    assert report == BackfillReport(dev.id, estimated=1, left=1, calls=1, note=NO_HISTORY)
    assert await store.estimated_slots(start=H, end=H + 900) == [(dev.id, "pm1:0", H)]


# --- the command ---------------------------------------------------------------------------------


def test_the_commands_range_defaults_to_a_week_and_never_reaches_now() -> None:
    settings = load_settings({"tz": "Europe/Sofia"}, env={})
    now = H + 3600.5
    assert time_range(None, None, settings, now=now) == (
        H + 3600 - SETTLE_S - 7 * 86400,
        H + 3600 - SETTLE_S,
    )
    first, last = time_range("2026-03-01", "2099-01-01", settings, now=now)
    assert (first, last) == (int(datetime(2026, 2, 28, 22, tzinfo=UTC).timestamp()), last)
    assert last == H + 3600 - SETTLE_S
    assert time_range("2026-03-08T10:00+00:00", "2026-03-08T11:00Z", settings, now=now) == (
        H - 10 * 3600,
        H - 9 * 3600,
    )
    with pytest.raises(ConfigError, match="empty range"):
        time_range("2026-03-09", "2026-03-08", settings, now=now)


def test_the_command_picks_registered_devices_by_id_glob() -> None:
    regs = [Registration(d) for d in ("shellypro3em-aa", "shellyproem50-bb", "shellypmminig3-cc")]
    assert [r.device for r in pick(regs, ["shellypro*", "SHELLYPRO3EM-AA"])] == [
        "shellypro3em-aa",
        "shellyproem50-bb",
    ]
    with pytest.raises(FleetError, match="no registered device"):
        pick(regs, ["shellyplug*"])


def invoke(*args: str) -> tuple[int, str]:
    """``kilowatch ARGS`` in this process: (exit code, stdout or the error's one line)."""
    result = CliRunner().invoke(
        app, list(args), env={"KILOWATCH_STORE": "", "KILOWATCH_CONFIG": ""}
    )
    if isinstance(result.exception, KilowatchError):
        return 1, str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def test_the_command_reports_each_device_and_fails_when_one_failed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: refused

    async def prepare() -> None:
        async with open_store(url) as store:
            await store.register(
                [Registration("shellypro3em-aa", address=closed, transport="lan"),
                 Registration("shellyproem50-bb", address=closed, transport="lan")]
            )  # fmt: skip
            slot = SlotEnergy("shellypro3em-aa", "em:0", H, 100, 0, True)
            await store.commit(Batch(slots=[slot]))

    asyncio.run(prepare())
    common = ["--from", "2026-03-08T00:00Z", "--to", "2026-03-09T00:00Z", "--store", url]
    common += ["--data-dir", str(tmp_path)]
    code, out = invoke("backfill", *common)
    assert (code, out) == (1, "name the devices to backfill (ids, globs allowed) or pass --all")
    code, out = invoke("backfill", "shellyplug*", *common)
    assert code == 1 and "no registered device" in out
    code, out = invoke("backfill", "--all", *common, "--format", "json")
    assert code == 1
    reports = {r["device"]: r for r in json.loads(out)["devices"]}
    failed = reports["shellypro3em-aa"]
    assert closed in failed["error"] and (failed["estimated"], failed["left"]) == (1, 1)
    assert reports["shellyproem50-bb"]["note"] == NOTHING_ESTIMATED  # not contacted
    code, out = invoke("backfill", "shellyproem50-bb", *common)
    assert code == 0 and "shellyproem50-bb" in out and "nothing estimated" in out
    code, out = invoke("backfill", "--all", *common[:-2], "--store", f"sqlite:///{tmp_path}/no.db")
    assert code == 1 and "no store at" in out
