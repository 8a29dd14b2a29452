"""The whole loop in one process: real mosquitto → kilowatch intake → decoders → ledger → store.

Each source publishes real-shaped messages; the store must then hold the right energy in the right
hours. Stores: a real SQLite file and a real redis-server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from svchelpers import Publisher, forget_session, poll, running_service, unique

from kilowatch.errors import ConfigError
from kilowatch.model.slots import slot_of
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.service.config import Settings
from kilowatch.store import Store
from kilowatch.testing import MosquittoServer

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z, the start of an hour
HOUR = 3600


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def hourly(store: Store, device: str, *, around: float = T0) -> dict[tuple[str, int], float]:
    """{(channel, hour start): energy_wh} of ``device``, over a day either side of ``around``."""
    rows: list[EnergyRow] = await store.energy(
        EnergyQuery(
            by="hour",
            tz="UTC",
            start=at(around) - timedelta(days=1),
            end=at(around) + timedelta(days=1),
            devices=(device,),
            group="channel",
        )
    )
    return {(r.channel or "", int(r.start.timestamp())): round(r.energy_wh, 3) for r in rows}


def notify(device: str, ts: float, **components: Any) -> tuple[str, dict[str, Any]]:
    frame = {
        "src": device,
        "dst": f"{device}/events",
        "method": "NotifyStatus",
        "params": {"ts": ts, **components},
    }
    return f"{device}/events/rpc", frame


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ingest.db"
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_every_source_lands_in_the_right_hours(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], store_url: str
) -> None:
    settings = settings_for(mosquitto.url, store_url)
    sfx = unique("")[:8]
    pm, sw, em3, em1 = (
        f"{m}-{sfx}" for m in ("shellypmminig3", "shellyplus1pm", "shellypro3em", "shellyproem50")
    )
    hourly_dev, gen1, tasmota, z2m, sw_status = (
        f"shellypmminig3-h{sfx}",
        f"shellyplug-s-{sfx}",
        f"pow-{sfx}",
        f"plug-{sfx}",
        f"shellyplus1pm-s{sfx}",
    )
    pub = Publisher(mosquitto.port)
    try:
        async with running_service(settings) as running:
            timed: list[tuple[str, Any]] = [
                # Gen2 pm1 (import and export), switch, em + emdata per phase, em1 + em1data:
                # a baseline in one hour, then counters that rose by the hour's end.
                notify(
                    pm,
                    T0 + 60,
                    **{
                        "pm1:0": {
                            "id": 0,
                            "apower": 100.0,
                            "aenergy": {"total": 1000.0},
                            "ret_aenergy": {"total": 5.0},
                        }
                    },
                ),
                notify(pm, T0 + 120, **{"pm1:0": {"apower": 110.0}}),  # a partial delta, merged
                notify(
                    pm,
                    T0 + 840,
                    **{"pm1:0": {"aenergy": {"total": 1012.5}, "ret_aenergy": {"total": 5.25}}},
                ),
                notify(
                    sw,
                    T0 + 60,
                    **{
                        "switch:0": {
                            "id": 0,
                            "output": True,
                            "apower": 50.0,
                            "aenergy": {"total": 300.0},
                        }
                    },
                ),
                notify(sw, T0 + 600, **{"switch:0": {"aenergy": {"total": 307.5}}}),
                notify(
                    em3,
                    T0 + 2 * HOUR + 60,
                    **{
                        "emdata:0": {
                            "id": 0,
                            "a_total_act_energy": 100.0,
                            "a_total_act_ret_energy": 0.0,
                            "b_total_act_energy": 200.0,
                            "b_total_act_ret_energy": 0.0,
                            "c_total_act_energy": 300.0,
                            "c_total_act_ret_energy": 0.0,
                            "total_act": 600.0,
                            "total_act_ret": 0.0,
                        }
                    },
                ),
                notify(
                    em3,
                    T0 + 2 * HOUR + 660,
                    **{
                        "emdata:0": {
                            "a_total_act_energy": 101.0,
                            "b_total_act_energy": 202.0,
                            "c_total_act_energy": 303.0,
                            "total_act": 606.0,
                        }
                    },
                ),
                notify(
                    em1,
                    T0 + 60,
                    **{
                        "em1data:0": {
                            "id": 0,
                            "total_act_energy": 40.0,
                            "total_act_ret_energy": 10.0,
                        }
                    },
                ),
                notify(
                    em1,
                    T0 + 300,
                    **{"em1data:0": {"total_act_energy": 41.0, "total_act_ret_energy": 12.0}},
                ),
                # the hourly metering script of the proof of concept
                (
                    f"/system/{hourly_dev}/status",
                    {
                        "fw_ver": "1.4.0-beta1",
                        "hourly_energy_usage": 564.559,
                        "hourly_ret_energy_usage": 0,
                        "id": hourly_dev,
                        "mac": "ECDA3BC4DDB0",
                        "operational": True,
                        "timestamp": T0 + HOUR,
                    },
                ),
                # a redelivered/duplicated hour counts once
                (
                    f"/system/{hourly_dev}/status",
                    {
                        "fw_ver": "1.4.0-beta1",
                        "hourly_energy_usage": 564.559,
                        "hourly_ret_energy_usage": 0,
                        "id": hourly_dev,
                        "mac": "ECDA3BC4DDB0",
                        "operational": True,
                        "timestamp": T0 + HOUR,
                    },
                ),
            ]
            pub.publish_many(timed)
            # Sources without their own clock are stamped with the time of receipt: a first
            # reading, committed, then a rise small enough to be plausible over a few ms.
            t_start = time.time()
            untimed_first = [
                (
                    f"{sw_status}/status/switch:0",
                    {
                        "id": 0,
                        "output": True,
                        "apower": 5.0,
                        "aenergy": {"total": 50.0, "by_minute": [0, 0, 0], "minute_ts": T0},
                    },
                ),
                (f"shellies/{gen1}/relay/0/energy", b"6000"),  # Watt-minutes
                (
                    f"tele/{tasmota}/SENSOR",
                    {
                        "Time": "2026-01-01T10:00:00",
                        "ENERGY": {"Total": 14.834, "Power": 5, "Voltage": 230, "Current": 0.1},
                    },
                ),
                (
                    f"zigbee2mqtt/{z2m}",
                    {"state": "ON", "power": 12.5, "energy": 1.23, "voltage": 230.1},
                ),
            ]
            expected_msgs = len(timed) + len(untimed_first)
            pub.publish_many(untimed_first)
            await poll(lambda: running.stats.committed >= expected_msgs, what="first readings")
            untimed_second = [
                (
                    f"{sw_status}/status/switch:0",
                    {
                        "id": 0,
                        "output": True,
                        "apower": 5.0,
                        "aenergy": {"total": 50.5, "by_minute": [0, 0, 0], "minute_ts": T0},
                    },
                ),
                (f"shellies/{gen1}/relay/0/energy", b"6030"),  # +30 Wmin = 0.5 Wh
                (
                    f"tele/{tasmota}/SENSOR",
                    {"Time": "2026-01-01T10:00:01", "ENERGY": {"Total": 14.835, "Power": 5}},
                ),
                (f"zigbee2mqtt/{z2m}", {"state": "ON", "power": 12.5, "energy": 1.231}),
            ]
            pub.publish_many(untimed_second)
            expected_msgs += len(untimed_second)
            await poll(lambda: running.stats.committed >= expected_msgs, what="all messages")
            t_end = time.time()
            store = running.store

            assert await hourly(store, pm) == {("pm1:0", T0): 12.5}
            rows = await store.energy(
                EnergyQuery(by="hour", tz="UTC", start=at(T0), end=at(T0 + HOUR), devices=(pm,))
            )
            assert [r.returned_energy_wh for r in rows] == [0.25]
            assert await hourly(store, sw) == {("switch:0", T0): 7.5}
            assert await hourly(store, em3) == {
                ("em:0", T0 + 2 * HOUR): 6.0,
                ("em:0/a", T0 + 2 * HOUR): 1.0,
                ("em:0/b", T0 + 2 * HOUR): 2.0,
                ("em:0/c", T0 + 2 * HOUR): 3.0,
            }
            em1_rows = await store.energy(
                EnergyQuery(
                    by="day", tz="UTC", start=at(T0 - HOUR), end=at(T0 + 23 * HOUR), devices=(em1,)
                )
            )
            assert [(r.energy_wh, r.returned_energy_wh) for r in em1_rows] == [(1.0, 2.0)]
            assert await hourly(store, hourly_dev) == {("hourly", T0 + HOUR): 564.559}

            for device, channel, wh in [
                (sw_status, "switch:0", 0.5),
                (gen1, "relay/0", 0.5),
                (tasmota, "ENERGY", 1.0),
                (z2m, "default", 1.0),
            ]:
                got = await hourly(store, device, around=t_end)
                assert sum(got.values()) == pytest.approx(wh, abs=1e-3), (device, got)
                if slot_of(t_start) == slot_of(t_end):  # not straddling a slot: the hour is known
                    assert got == {(channel, int(t_start // HOUR * HOUR)): wh}

            devices = {d.device: d for d in await store.devices()}
            assert devices[pm].online is True and devices[pm].last_seen is not None
            assert devices[hourly_dev].mac == "ECDA3BC4DDB0"
            assert devices[hourly_dev].fw_ver == "1.4.0-beta1"

            async def latest_pm() -> Any:
                rows = [r for r in await store.latest(pm) if r.energy_wh == 1012.5]
                return rows[0] if rows else None

            # latest readings are written at most once a second per channel
            assert (await poll(latest_pm, what="the latest reading")).power_w == 110.0
            assert running.stats.dead_letters == {}
    finally:
        pub.close()
        forget_session(mosquitto.port, settings.mqtt_client_id)


def counter_stream(
    device: str, n: int, *, start: int = T0, period: int = 60, wh: float = 1.0
) -> list[tuple[str, Any]]:
    """A PM Mini G3 reporting every ``period`` s at constant power: ``wh`` per period."""
    return [
        notify(
            device,
            start + k * period,
            **{
                "pm1:0": {
                    "id": 0,
                    "apower": wh * 3600 / period,
                    "aenergy": {"total": round(500.0 + k * wh, 3)},
                }
            },
        )
        for k in range(n)
    ]


async def test_a_dropped_message_costs_resolution_never_energy(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], tmp_path: Any
) -> None:
    """Two meters on the same load over 6 hours; one loses a third of its messages and a 50-minute
    burst (a gap the ledger spreads and marks estimated). Daily totals are identical."""
    settings = settings_for(mosquitto.url, f"sqlite:///{tmp_path}/drop.db")
    full, lossy = unique("shellypmminig3-full"), unique("shellypmminig3-lossy")
    n = 6 * 60 + 1
    complete = counter_stream(full, n)
    dropped = [
        m
        for k, m in enumerate(counter_stream(lossy, n))
        if k in (0, n - 1) or (k % 3 != 1 and not 100 <= k < 150)
    ]
    assert len(dropped) < n * 0.62
    pub = Publisher(mosquitto.port)
    try:
        async with running_service(settings) as running:
            pub.publish_many(complete + dropped)
            await poll(lambda: running.stats.committed >= len(complete) + len(dropped))
            day = EnergyQuery(by="day", tz="UTC", start=at(T0 - 9 * HOUR), end=at(T0 + 15 * HOUR))
            totals = {r.device: r for r in await running.store.energy(day)}
            assert totals[full].energy_wh == totals[lossy].energy_wh == n - 1
            assert totals[lossy].estimated and not totals[full].estimated
            hours_full = await hourly(running.store, full)
            hours_lossy = await hourly(running.store, lossy)
            assert set(hours_full.values()) == {60.0}  # exact hours with every message
            assert sum(hours_lossy.values()) == sum(hours_full.values())
    finally:
        pub.close()
        forget_session(mosquitto.port, settings.mqtt_client_id)


async def test_bad_messages_become_dead_letters_and_ingestion_goes_on(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], tmp_path: Any
) -> None:
    settings = settings_for(mosquitto.url, f"sqlite:///{tmp_path}/dead.db")
    device = unique("shellypmminig3-dl")
    pub = Publisher(mosquitto.port)
    try:
        async with running_service(settings) as running:
            good = counter_stream(device, 3)
            bad: list[tuple[str, Any]] = [
                (f"{device}/events/rpc", b"{not json"),
                (f"tele/{device}/SENSOR", b"\xff\xfe"),
                (f"{device}/events/rpc", b"{not json either"),
            ]
            pub.publish_many([good[0], *bad, good[1], good[2]])
            await poll(lambda: running.stats.committed >= 6)
            letters = await running.store.dead_letters(10)
            assert {d.topic for d in letters} == {f"{device}/events/rpc", f"tele/{device}/SENSOR"}
            assert all(d.reason and d.detail for d in letters)
            counts = await running.store.dead_letter_counts()
            assert sum(counts.values()) == 3 and counts.get("invalid_json", 0) >= 2
            assert sum(running.stats.dead_letters.values()) == 3
            assert sum((await hourly(running.store, device)).values()) == 2.0
    finally:
        pub.close()
        forget_session(mosquitto.port, settings.mqtt_client_id)


async def test_authenticated_external_broker(
    settings_for: Callable[..., Settings], tmp_path: Any
) -> None:
    with MosquittoServer(users={"meter": "s3cret"}) as broker:
        settings = settings_for(
            f"mqtt://meter:s3cret@127.0.0.1:{broker.port}", f"sqlite:///{tmp_path}/auth.db"
        )
        device = unique("shellypmminig3-auth")
        pub = Publisher(broker.port, user="meter", password="s3cret")
        try:
            async with running_service(settings) as running:
                pub.publish_many(counter_stream(device, 2))
                await poll(lambda: running.stats.committed >= 2)
                assert sum((await hourly(running.store, device)).values()) == 1.0
        finally:
            pub.close()


async def test_reconnects_after_the_broker_restarts(
    settings_for: Callable[..., Settings], tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker goes away mid-run: kilowatch retries (jittered backoff, each attempt logged),
    subscribes again on the new connection and ingests what is published after."""
    caplog.set_level("INFO", logger="kilowatch.mqtt")
    device = unique("shellypmminig3-rc")
    messages = counter_stream(device, 4)
    with MosquittoServer() as broker:
        settings = settings_for(broker.url, f"sqlite:///{tmp_path}/reconnect.db")
        async with running_service(settings) as running:
            pub = Publisher(broker.port)
            pub.publish_many(messages[:2])
            pub.close()
            await poll(lambda: running.stats.committed >= 2)
            broker.stop()
            await poll(lambda: "mqtt connect failed attempt=" in caplog.text, what="a retry")
            broker.start()  # same port, no persistence: a new session, so we subscribe again
            await poll(lambda: caplog.text.count("mqtt subscribed") >= 2, what="resubscribed")
            pub = Publisher(broker.port)
            pub.publish_many(messages[2:])
            pub.close()
            await poll(lambda: running.stats.committed >= 4)
            assert sum((await hourly(running.store, device)).values()) == 3.0


def test_backoff_is_jittered_capped_and_exponential() -> None:
    import random

    from kilowatch.intake.client import backoff_delays

    delays = backoff_delays(minimum=0.5, maximum=8.0, rng=random.Random(7))
    got = [next(delays) for _ in range(10)]
    nominal = [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8]
    assert all(0.5 * n <= g <= 1.5 * n for g, n in zip(got, nominal, strict=True))
    assert len(set(got)) == len(got)  # jittered: no two equal


async def test_a_configured_route_reads_a_custom_topic_layout(
    mosquitto: MosquittoServer, settings_for: Callable[..., Settings], tmp_path: Any
) -> None:
    """Issue 9: a configured source (``topic_sources``) decodes its custom topic layout: a Tasmota
    whose FullTopic is ``site7/%topic%/%prefix%/`` is stored under the other levels joined."""
    site = unique("site")[:12]
    settings = settings_for(
        mosquitto.url, f"sqlite:///{tmp_path}/routes.db", topic_sources=f"{site}/+/tele/+=tasmota"
    )
    assert settings.topic_routes == ((f"{site}/+/tele/+", "tasmota"),)
    pub = Publisher(mosquitto.port)
    try:
        async with running_service(settings) as running:
            for total in (10.0, 10.0005):  # +0.5 Wh a few ms later: plausible, taken at once
                pub.publish(
                    f"{site}/boiler/tele/SENSOR",
                    {"Time": "2026-01-01T10:00:01", "ENERGY": {"Total": total, "Power": 5}},
                )
            await poll(lambda: running.stats.committed >= 2, what="both messages")
            assert running.stats.dead_letters == {}
            devices = {d.device for d in await running.store.devices()}
            assert f"{site}/boiler" in devices
            rows = await running.store.energy(
                EnergyQuery(by="month", tz="UTC", start=at(0), end=at(4_000_000_000),
                            devices=(f"{site}/boiler",), group="total")
            )  # fmt: skip
            assert sum(r.energy_wh for r in rows) == pytest.approx(0.5, abs=1e-3)
    finally:
        pub.close()


def test_a_route_that_is_not_filter_equals_source_is_refused(
    settings_for: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigError, match="FILTER=SOURCE"):
        settings_for("mqtt://127.0.0.1:1", topic_sources="tele/+/SENSOR")
