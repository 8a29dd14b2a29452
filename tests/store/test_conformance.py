"""One suite, every backend: SQLite, Redis and Redis Cluster must behave the same."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from kilowatch.errors import InvalidQueryError, StoreError, UnstorableError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.store import Batch, DeadLetter, DeviceUpdate, Store, open_store, records
from kilowatch.store.protocol import AuditEntry, PowerMinute

DEV = "shellypmminig3-ecda3bc4ddb0"
PRO = "shellypro3em-a0b1c2d3e4f5"


def ts(text: str) -> int:
    """Unix seconds of an ISO 8601 UTC time such as ``2026-03-29T00:00``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def slots(
    device: str,
    channel: str,
    start: str,
    count: int,
    mwh: int = 1000,
    *,
    export: int = 0,
    estimated: bool = False,
) -> list[SlotEnergy]:
    """``count`` consecutive 15-minute slots from ``start`` (UTC), each with ``mwh``."""
    t0 = ts(start)
    return [SlotEnergy(device, channel, t0 + i * 900, mwh, export, estimated) for i in range(count)]


async def q(store: Store, by: str, tz: str, start: Any, end: Any, **kw: Any) -> list[EnergyRow]:
    """The rows of a query; also checks that the table's own JSON rendering (what the API sends)
    is byte for byte the JSON of those rows."""
    query = EnergyQuery(by=by, tz=tz, start=start, end=end, **kw)  # type: ignore[arg-type]
    rows = await store.energy(query)
    table = await store.energy_table(query)
    assert table.rows() == rows
    assert table.json_rows() == orjson.dumps([r.to_json() for r in rows])
    return rows


# -- commit ----------------------------------------------------------------------------------------


async def test_commit_is_all_or_nothing(store: Store) -> None:
    good = slots(DEV, "pm1:0", "2026-01-01T00:00", 4)
    bad = Batch(slots=good, ledger_states={(DEV, "pm1:0"): {"not json": object()}})
    with pytest.raises(StoreError):
        await store.commit(bad)
    rows = await q(store, "day", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    assert rows == []
    assert await store.load_ledger_states() == {}
    await store.commit(Batch(slots=good, ledger_states={(DEV, "pm1:0"): {"total": 4.0}}))
    rows = await q(store, "day", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    assert [r.energy_wh for r in rows] == [4.0]


async def test_the_same_batch_committed_again_is_stored_once(store: Store) -> None:
    """A commit whose outcome was unknown is retried with the same batch: whatever got through
    the first time is not added again, on every backend. A batch built anew is a new commit."""
    a = Batch(
        slots=slots(DEV, "pm1:0", "2026-01-01T00:00", 4),
        ledger_states={(DEV, "pm1:0"): {"total": 4.0}},
        events=[Event(DEV, ts("2026-01-01T00:00"), "sys", "restart")],
        dead_letters=[DeadLetter(1.0, "t", b"x", "invalid_json", "bad")],
    )
    b = Batch(slots=slots(DEV, "pm1:0", "2026-01-01T01:00", 1, 500))
    for again in (a, a, b, a, b):
        await store.commit(again)
    rows = await q(store, "day", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    assert [r.energy_wh for r in rows] == [4.5]
    assert len(await store.events()) == 1
    assert await store.dead_letter_counts() == {"invalid_json": 1}
    twin = Batch(slots=b.slots)  # the same content, a new batch: counted again
    assert twin == b
    await store.commit(twin)
    rows = await q(store, "day", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    assert [r.energy_wh for r in rows] == [5.0]


async def test_slots_add_up_and_estimated_sticks(store: Store) -> None:
    t = "2026-01-01T10:00"
    await store.commit(Batch(slots=slots(DEV, "pm1:0", t, 1, 1500, export=20, estimated=True)))
    await store.commit(Batch(slots=slots(DEV, "pm1:0", t, 1, 250, export=5)))
    await store.commit(Batch(slots=slots(DEV, "pm1:0", t, 1, -50)))  # a correction
    rows = await q(
        store,
        "15min",
        "UTC",
        datetime(2026, 1, 1, 10, tzinfo=UTC),
        datetime(2026, 1, 1, 11, tzinfo=UTC),
    )
    assert len(rows) == 1
    assert (rows[0].energy_wh, rows[0].returned_energy_wh, rows[0].estimated) == (1.7, 0.025, True)
    # the next slot, never estimated, is not marked
    await store.commit(Batch(slots=slots(DEV, "pm1:0", "2026-01-01T10:15", 1, 10)))
    rows = await q(store, "15min", "UTC", date(2026, 1, 1), date(2026, 1, 2))
    assert [r.estimated for r in rows] == [True, False]


async def test_ledger_states_round_trip_and_replace(store: Store) -> None:
    a = {"counter": 42291.09, "slot": 1752840000, "resets": [1, 2], "nested": {"x": None}}
    await store.commit(Batch(ledger_states={(DEV, "pm1:0"): a, (DEV, "hourly"): {"seen": [3]}}))
    await store.commit(Batch(ledger_states={(DEV, "hourly"): {"seen": [3, 4]}}))
    assert await store.load_ledger_states() == {
        (DEV, "pm1:0"): a,
        (DEV, "hourly"): {"seen": [3, 4]},
    }


# -- devices ---------------------------------------------------------------------------------------


async def test_devices_merge_updates(store: Store) -> None:
    await store.commit(
        Batch(
            devices=[
                DeviceUpdate(
                    DEV, last_seen=100.0, fw_ver="1.4.0", model="S3PM-001PCEU16", gen=3, online=True
                )
            ]
        )
    )
    await store.commit(
        Batch(
            devices=[DeviceUpdate(DEV, last_seen=200.0, ip="192.168.1.20", online=False)],
            slots=slots(DEV, "pm1:0", "2026-01-01T00:00", 1),
            latest=[Reading(DEV, "switch:0", 200.0, power_w=1.0)],
        )
    )
    record = await store.device(DEV)
    assert record is not None
    assert (record.first_seen, record.last_seen) == (100.0, 200.0)
    assert (record.fw_ver, record.model, record.gen, record.ip) == (
        "1.4.0",
        "S3PM-001PCEU16",
        3,
        "192.168.1.20",
    )
    assert record.online is False
    assert record.channels == ("pm1:0", "switch:0")
    assert await store.device("nobody") is None
    await store.commit(Batch(events=[Event(PRO, 5.0, "sys", "boot")]))
    assert [d.device for d in await store.devices()] == [DEV, PRO]


async def test_labels_set_keep_and_clear(store: Store) -> None:
    await store.commit(Batch(devices=[DeviceUpdate(DEV, name="Boiler meter")]))
    await store.set_device_label(DEV, label="Boiler", room="Bathroom")
    await store.set_device_label(DEV, room="Attic")
    record = await store.device(DEV)
    assert record is not None
    assert (record.name, record.label, record.room) == ("Boiler meter", "Boiler", "Attic")
    await store.set_device_label(DEV, label="")
    record = await store.device(DEV)
    assert record is not None
    assert (record.label, record.room) == (None, "Attic")


async def test_latest_keeps_newest_per_channel(store: Store) -> None:
    await store.commit(
        Batch(
            latest=[
                Reading(DEV, "pm1:0", 10.0, power_w=1.0, energy_wh=5.0),
                Reading(DEV, "pm1:0", 20.0, power_w=2.0, energy_wh=6.0),
                Reading(PRO, "em:0/a", 15.0, voltage_v=230.1),
            ]
        )
    )
    await store.commit(Batch(latest=[Reading(DEV, "switch:0", 30.0, power_w=3.0)]))
    mine = await store.latest(DEV)
    assert mine == [
        Reading(DEV, "pm1:0", 20.0, power_w=2.0, energy_wh=6.0),
        Reading(DEV, "switch:0", 30.0, power_w=3.0),
    ]
    assert len(await store.latest()) == 3


async def test_events_logs_dead_letters_are_bounded(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "EVENTS_PER_DEVICE", 3)
    monkeypatch.setattr(records, "LOGS_PER_DEVICE", 3)
    monkeypatch.setattr(records, "DEAD_LETTERS", 4)
    for i in range(5):
        await store.commit(
            Batch(
                events=[Event(DEV, float(i), "sys", "tick", {"n": i})],
                logs=[LogLine(DEV, float(i), f"line {i}", level=2, seq=i)],
                dead_letters=[
                    DeadLetter(float(i), "x/y", b"\xff" + bytes([i]), "invalid_json", f"bad {i}")
                ],
            )
        )
    await store.commit(
        Batch(
            events=[Event(PRO, 9.0, "switch:0", "btn_down")],
            dead_letters=[DeadLetter(9.0, "z", b"{}", "unknown_topic", "")],
        )
    )
    assert [e.data["n"] for e in await store.events(DEV)] == [4, 3, 2]
    assert [e.event for e in await store.events(limit=2)] == ["btn_down", "tick"]
    assert [x.seq for x in await store.logs(DEV)] == [4, 3, 2]
    assert (await store.logs(DEV, limit=1))[0] == LogLine(DEV, 4.0, "line 4", level=2, seq=4)
    letters = await store.dead_letters()
    assert [d.detail for d in letters] == ["", "bad 4", "bad 3", "bad 2"]
    assert letters[1].payload == b"\xff\x04"
    assert await store.dead_letter_counts() == {"invalid_json": 5, "unknown_topic": 1}


async def test_meta_round_trip(store: Store) -> None:
    assert await store.get_meta("settings") is None
    await store.put_meta("settings", {"tz": "Europe/Sofia", "price": 0.25})
    await store.put_meta("users", [{"name": "admin", "hash": "$argon2id$..."}])
    await store.put_meta("settings", {"tz": "UTC"})
    assert await store.get_meta("settings") == {"tz": "UTC"}
    assert await store.get_meta("users") == [{"name": "admin", "hash": "$argon2id$..."}]


# -- queries ---------------------------------------------------------------------------------------


async def test_group_by_channel_device_total_with_parts_and_filters(store: Store) -> None:
    t = "2026-06-01T00:00"  # Sofia is UTC+3: 03:00 local
    await store.commit(
        Batch(
            slots=[
                *slots(PRO, "em:0", t, 4, 3000),
                *slots(PRO, "em:0/a", t, 4, 1000),
                *slots(PRO, "em:0/b", t, 4, 2000),
                *slots(DEV, "pm1:0", t, 4, 500, export=100),
                *slots(DEV, "em1:0/a", t, 4, 7),  # a part without its parent counts
            ]
        )
    )
    day = (date(2026, 6, 1), date(2026, 6, 2))
    by_channel = await q(store, "hour", "Europe/Sofia", *day)
    assert DEV < PRO  # rows are sorted by start, device, channel
    assert [(r.device, r.channel, r.energy_wh) for r in by_channel] == [
        (DEV, "em1:0/a", 0.028),
        (DEV, "pm1:0", 2.0),
        (PRO, "em:0", 12.0),
        (PRO, "em:0/a", 4.0),
        (PRO, "em:0/b", 8.0),
    ]
    assert by_channel[0].start.isoformat() == "2026-06-01T03:00:00+03:00"
    by_device = await q(store, "hour", "Europe/Sofia", *day, group="device")
    assert {(r.device, r.channel, r.energy_wh, r.returned_energy_wh) for r in by_device} == {
        (PRO, None, 12.0, 0.0),
        (DEV, None, 2.028, 0.4),
    }
    total = await q(
        store, "month", "Europe/Sofia", date(2026, 1, 1), date(2027, 1, 1), group="total"
    )
    assert [(r.device, r.channel, r.energy_wh) for r in total] == [(None, None, 14.028)]
    assert total[0].start.isoformat() == "2026-06-01T00:00:00+03:00"
    assert total[0].end.isoformat() == "2026-07-01T00:00:00+03:00"
    phases = await q(
        store, "day", "Europe/Sofia", *day, channels=("em:0/a", "em:0/b"), group="device"
    )
    assert [(r.device, r.energy_wh) for r in phases] == [(PRO, 12.0)]
    one = await q(store, "day", "Europe/Sofia", *day, devices=(DEV,))
    assert {r.channel for r in one} == {"pm1:0", "em1:0/a"}


async def test_hourly_counts_only_in_hours_without_other_data(store: Store) -> None:
    # the metering script reported 10:00-13:00; the meter channel only has 11:00-12:00
    await store.commit(
        Batch(
            slots=[
                *slots(DEV, "hourly", "2026-01-05T10:00", 12, 250),
                *slots(DEV, "pm1:0", "2026-01-05T11:00", 4, 300),
            ]
        )
    )
    day = (date(2026, 1, 5), date(2026, 1, 6))
    total = await q(store, "day", "UTC", *day, group="device")
    assert [r.energy_wh for r in total] == [1.0 + 1.2 + 1.0]
    hours = await q(store, "hour", "UTC", *day, group="total")
    assert [(r.start.hour, r.energy_wh) for r in hours] == [(10, 1.0), (11, 1.2), (12, 1.0)]
    quarters = await q(store, "15min", "UTC", *day, group="device")
    assert [r.energy_wh for r in quarters] == [0.25] * 4 + [0.3] * 4 + [0.25] * 4
    channels = await q(store, "day", "UTC", *day)
    assert {(r.channel, r.energy_wh) for r in channels} == {("hourly", 3.0), ("pm1:0", 1.2)}


@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 6, 1), 24)]
)
async def test_dst_days_have_23_or_25_hours(store: Store, day: date, hours: int) -> None:
    # one Wh per slot for 3 days around the local day, in UTC slots
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=1)
    await store.commit(Batch(slots=slots(DEV, "pm1:0", start.isoformat()[:16], 4 * 72)))
    rows = await q(store, "hour", "Europe/Sofia", day, day + timedelta(days=1))
    assert len(rows) == hours
    assert all(r.energy_wh == 4.0 for r in rows)
    assert (rows[0].start.date(), rows[0].start.hour) == (day, 0)
    days = await q(store, "day", "Europe/Sofia", day, day + timedelta(days=1))
    assert [r.energy_wh for r in days] == [4.0 * hours]
    assert (days[0].end - days[0].start) == timedelta(days=1)  # wall clock
    assert days[0].end.timestamp() - days[0].start.timestamp() == hours * 3600
    if hours == 25:
        repeated = [r for r in rows if r.start.hour == 3]
        assert [r.start.isoformat() for r in repeated] == [
            "2026-10-25T03:00:00+03:00",
            "2026-10-25T03:00:00+02:00",
        ]


@pytest.mark.parametrize(("tz", "minute"), [("Asia/Kolkata", 30), ("Asia/Kathmandu", 15)])
async def test_half_and_quarter_hour_zones_give_exact_local_hours(
    store: Store, tz: str, minute: int
) -> None:
    # slot k of the day holds k Wh, so a wrong alignment changes every sum
    t0 = ts("2026-02-01T00:00")
    await store.commit(
        Batch(slots=[SlotEnergy(DEV, "pm1:0", t0 + k * 900, k * 1000, 0) for k in range(96)])
    )
    rows = await q(store, "hour", tz, datetime(2026, 2, 1, 6), datetime(2026, 2, 1, 9))
    assert [r.start.strftime("%H:%M") for r in rows] == ["06:00", "07:00", "08:00"]
    for r in rows:
        first = (int(r.start.timestamp()) - t0) // 900
        assert r.start.astimezone(UTC).minute == minute
        assert r.energy_wh == sum(range(first, first + 4))


async def test_lord_howe_half_hour_dst(store: Store) -> None:
    # 2026-04-05 02:00 +11:00 → 01:30 +10:30: a 24.5-hour day
    await store.commit(Batch(slots=slots(DEV, "pm1:0", "2026-04-04T00:00", 4 * 72)))
    rows = await q(store, "hour", "Australia/Lord_Howe", date(2026, 4, 5), date(2026, 4, 6))
    assert sum(r.energy_wh for r in rows) == 4 * 24.5
    assert [(r.start.isoformat()[11:], r.energy_wh) for r in rows[1:3]] == [
        ("01:00:00+11:00", 4.0),
        ("01:30:00+10:30", 2.0),
    ]


async def test_query_errors(store: Store) -> None:
    with pytest.raises(InvalidQueryError, match="unknown time zone"):
        await q(store, "hour", "Mars/Olympus", date(2026, 1, 1), date(2026, 1, 2))
    with pytest.raises(InvalidQueryError, match="empty time range"):
        await q(store, "hour", "UTC", date(2026, 1, 2), date(2026, 1, 1))


async def test_empty_store_answers_empty(store: Store) -> None:
    assert await q(store, "month", "UTC", date(2025, 1, 1), date(2027, 1, 1)) == []
    assert await store.devices() == []
    assert await store.latest() == []
    assert await store.events() == []
    assert await store.dead_letter_counts() == {}


async def test_reopen_keeps_everything(store_url: str) -> None:
    async with open_store(store_url) as s:
        await s.commit(
            Batch(
                slots=slots(DEV, "pm1:0", "2026-01-01T00:00", 8),
                ledger_states={(DEV, "pm1:0"): {"c": 1}},
                devices=[DeviceUpdate(DEV, fw_ver="1.4.0")],
            )
        )
        await s.put_meta("k", [1])
    async with open_store(store_url) as s:
        rows = await q(s, "day", "UTC", date(2026, 1, 1), date(2026, 1, 2))
        assert [r.energy_wh for r in rows] == [8.0]
        assert await s.load_ledger_states() == {(DEV, "pm1:0"): {"c": 1}}
        assert await s.get_meta("k") == [1]
        record = await s.device(DEV)
        assert record is not None and record.fw_ver == "1.4.0"


# -- power minutes ---------------------------------------------------------------------------------


def minute(text: str) -> int:
    return ts(text)


async def test_power_round_trip_sorted_by_channel_then_minute(store: Store) -> None:
    m0 = minute("2026-01-01T10:00")
    await store.commit(
        Batch(
            power=[
                PowerMinute(DEV, "switch:0", m0 + 60, 10.0, 6),
                PowerMinute(DEV, "switch:0", m0, 123.4567, 3),  # kept to the milliwatt
                PowerMinute(DEV, "pm1:0", m0 + 120, -5.5, 1),
                PowerMinute(DEV, "pm1:0", m0 - 60, 1.0, 1),
                PowerMinute(PRO, "em:0/a", m0, 99.0, 2),
            ]
        )
    )
    got = await store.power(DEV, start=m0, end=m0 + 180)
    assert got == [
        PowerMinute(DEV, "pm1:0", m0 + 120, -5.5, 1),
        PowerMinute(DEV, "switch:0", m0, 123.457, 3),
        PowerMinute(DEV, "switch:0", m0 + 60, 10.0, 6),
    ]
    assert await store.power(DEV, start=m0, end=m0 + 120) == got[1:]  # the end is excluded
    assert await store.power(PRO, start=0, end=m0 + 86400) == [
        PowerMinute(PRO, "em:0/a", m0, 99.0, 2)
    ]
    assert await store.power("nobody", start=0, end=m0 + 86400) == []


async def test_power_minutes_are_replaced_not_added(store: Store) -> None:
    """A batch committed again, or a later batch with the minute's new mean, replaces it."""
    m0 = minute("2026-01-01T23:59")  # the next minute is on the next UTC day
    first = Batch(power=[PowerMinute(DEV, "pm1:0", m0, 100.0, 2)])
    for again in (first, first):
        await store.commit(again)
    await store.commit(Batch(power=[PowerMinute(DEV, "pm1:0", m0, 110.0, 3)]))
    await store.commit(first)  # a replay of the old batch: a no-op, not the old value
    await store.commit(Batch(power=[PowerMinute(DEV, "pm1:0", m0 + 60, 7.0, 1)]))
    assert await store.power(DEV, start=m0, end=m0 + 120) == [
        PowerMinute(DEV, "pm1:0", m0, 110.0, 3),
        PowerMinute(DEV, "pm1:0", m0 + 60, 7.0, 1),
    ]


async def test_power_keeps_the_last_days_of_a_channel(store: Store) -> None:
    d0 = minute("2026-03-01T12:00")
    days = [d0 + k * 86400 for k in range(records.POWER_DAYS + 1)]
    for t in days:
        await store.commit(Batch(power=[PowerMinute(DEV, "pm1:0", t, 1.0, 1)]))
    await store.commit(Batch(power=[PowerMinute(DEV, "switch:0", d0, 2.0, 1)]))
    got = await store.power(DEV, start=0, end=days[-1] + 60)
    assert [(p.channel, p.minute) for p in got] == [
        *[("pm1:0", t) for t in days[1:]],  # the oldest day went when the newest came
        ("switch:0", d0),  # another channel keeps its own days
    ]


@pytest.mark.parametrize(
    "bad",
    [
        PowerMinute(DEV, "pm1:0", 61, 1.0, 1),
        PowerMinute(DEV, "pm1:0", 10**15 * 60, 1.0, 1),
        PowerMinute(DEV, "pm1:0", 60, float("nan"), 1),
        PowerMinute(DEV, "pm1:0", 60, 1e300, 1),
        PowerMinute(DEV, "pm1:0", 60, 1.0, 0),
        PowerMinute("", "pm1:0", 60, 1.0, 1),
    ],
)
async def test_an_unstorable_power_minute_stores_nothing_of_its_batch(
    store: Store, bad: PowerMinute
) -> None:
    good = slots(DEV, "pm1:0", "2026-01-01T00:00", 1)
    with pytest.raises(UnstorableError):
        await store.commit(Batch(slots=good, power=[PowerMinute(DEV, "pm1:0", 0, 1.0, 1), bad]))
    assert await q(store, "day", "UTC", date(2026, 1, 1), date(2026, 1, 2)) == []
    assert await store.power(DEV, start=0, end=120) == []


async def test_a_day_of_power_of_three_channels_reads_back(store: Store) -> None:
    m0 = minute("2026-05-05T00:00")
    channels = ("em:0/a", "em:0/b", "em:0/c")
    power = [
        PowerMinute(PRO, c, m0 + 60 * i, i + k / 10, 1 + i % 7)
        for k, c in enumerate(channels)
        for i in range(1440)
    ]
    await store.commit(Batch(power=power))
    got = await store.power(PRO, start=m0, end=m0 + 86400)
    assert got == power


# -- audit log -------------------------------------------------------------------------------------


def entry(
    n: int, action: str = "fleet.apply", devices: tuple[str, ...] = (DEV,), **kw: Any
) -> AuditEntry:
    return AuditEntry(
        id=f"id-{n:04d}",
        ts=1_767_225_600.5 + n,
        actor="cli:ana",
        action=action,
        devices=devices,
        result=kw.pop("result", "ok"),
        detail=kw.pop("detail", {"n": n, "changes": [{"key": "sys.name", "to": "Boiler"}]}),
    )


async def test_audit_round_trip_newest_first_and_idempotent(store: Store) -> None:
    assert await store.audit() == []
    a, b, c = entry(1), entry(2, "firmware.update", (DEV, PRO)), entry(3, "settings.change", ())
    await store.audit_append([a, b])
    await store.audit_append([c, a])  # a is stored already: skipped
    await store.audit_append([c])  # a retry after an unknown outcome
    await store.audit_append([])
    assert await store.audit() == [c, b, a]
    assert await store.audit(limit=2) == [c, b]
    assert await store.audit(limit=0) == []
    same_time = [
        AuditEntry(id=x, ts=5.0, actor="service", action="fleet.adopt") for x in ("b", "a", "c")
    ]
    await store.audit_append(same_time)
    assert [e.id for e in await store.audit(before=6.0)] == ["c", "b", "a"]  # ties: by id


async def test_audit_filters(store: Store) -> None:
    await store.audit_append(
        [
            entry(1, "fleet.adopt", (DEV,)),
            entry(2, "fleet.apply", (DEV, PRO)),
            entry(3, "fleetwide.other", (PRO,)),
            entry(4, "fleet", ()),
            entry(5, "firmware.update", (PRO,)),
            entry(6, "fleet.apply.retry", (DEV,)),
        ]
    )

    async def ids(**kw: Any) -> list[int]:
        return [int(e.id[3:]) for e in await store.audit(**kw)]

    assert await ids(action="fleet") == [6, 4, 2, 1]
    assert await ids(action="fleet.apply") == [6, 2]
    assert await ids(device=PRO) == [5, 3, 2]
    assert await ids(device=PRO, action="fleet") == [2]
    assert await ids(device=DEV, before=entry(6).ts) == [2, 1]
    assert await ids(before=entry(3).ts, limit=1) == [2]
    assert await ids(device="nobody") == []


async def test_audit_keeps_the_newest(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "AUDIT_ENTRIES", 4)
    await store.audit_append([entry(n) for n in (5, 1, 3)])
    await store.audit_append([entry(n) for n in (2, 6, 4)])
    assert [e.id for e in await store.audit()] == ["id-0006", "id-0005", "id-0004", "id-0003"]
    assert [e.id for e in await store.audit(device=DEV)] == [
        "id-0006", "id-0005", "id-0004", "id-0003",
    ]  # fmt: skip
    await store.audit_append([entry(1)])  # older than every kept one: in, and out again
    assert len(await store.audit()) == 4


def nested_dict(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "detail",
    [
        {"secret": object()},
        {"deep": nested_dict(300)},
        {"big": "x" * records.AUDIT_DETAIL_MAX_BYTES},
        {1: "not a string key"},
    ],
)
async def test_audit_detail_that_cannot_be_stored_stores_nothing(
    store: Store, detail: dict[Any, Any]
) -> None:
    with pytest.raises(UnstorableError, match="id-0002"):
        await store.audit_append([entry(1), entry(2, detail=detail)])
    assert await store.audit() == []


# -- retention of what is kept by time -------------------------------------------------------------


async def test_retention_drops_power_audit_events_and_logs_older_than_the_cut(store: Store) -> None:
    cut = minute("2026-02-02T10:00")
    old, new = cut - 60, cut
    await store.commit(
        Batch(
            power=[PowerMinute(DEV, "pm1:0", t, 1.0, 1) for t in (cut - 86400, old, new)],
            events=[Event(DEV, float(t), "sys", "tick", {"t": t}) for t in (old, new)],
            logs=[LogLine(DEV, float(t), f"at {t}") for t in (old, new)],
        )
    )
    await store.commit(Batch(events=[Event(PRO, float(old), "sys", "tick")]))
    await store.audit_append(
        [AuditEntry(id=f"a{t}", ts=t + 0.5, actor="service", action="x") for t in (old, new)]
    )
    await store.drop_slots_before(cut + 1800)  # rounded down to the hour: cut
    assert [p.minute for p in await store.power(DEV, start=0, end=new + 60)] == [new]
    assert [e.id for e in await store.audit()] == [f"a{new}"]
    assert [e.ts for e in await store.events(DEV)] == [new]
    assert [e.ts for e in await store.events()] == [new]
    assert await store.events(PRO) == []
    assert [x.ts for x in await store.logs(DEV)] == [new]
    assert [x.ts for x in await store.logs()] == [new]
