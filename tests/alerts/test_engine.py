"""kilowatch.alerts.engine on real stores (SQLite, Redis): restarts neither re-send nor forget, the
outbox is delivered with the same id, the local day's energy (23- and 25-hour days), firmware
events, a configuration saved while running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kilowatch.alerts.channels import RetryPolicy, Sender
from kilowatch.alerts.config import (
    AlertsConfig,
    Channel,
    Rule,
    new_webhook_secret,
    parse_config,
    save_config,
)
from kilowatch.alerts.engine import SITE_KEY, AlertEngine
from kilowatch.alerts.state import (
    AlertBook,
    DeliveryResult,
    Notification,
    current,
    history,
    load_book,
    save_book,
)
from kilowatch.model.messages import Event
from kilowatch.model.slots import SlotEnergy
from kilowatch.service.retention import SITE_KEY as SERVICE_SITE_KEY
from kilowatch.store import Store, open_store
from kilowatch.store.protocol import Batch, DeviceUpdate

from .receivers import WebhookReceiver

FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02)
SECRET = new_webhook_secret()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
    else:
        url = f"sqlite:///{tmp_path / 'alerts.db'}"
    async with open_store(url) as s:
        yield s


def config(url: str, *rules: Rule) -> AlertsConfig:
    return AlertsConfig(rules=rules, channels=(Channel("hook", "webhook", url=url, secret=SECRET),))


async def seen(store: Store, device: str, ts: float, *, online: bool) -> None:
    await store.commit(Batch(devices=[DeviceUpdate(device, last_seen=ts, online=online)]))


async def run_once(store: Store, now: float, *, deliver: bool = True) -> list[str]:
    """A fresh engine (a restart), one tick at ``now``, its deliveries."""
    async with Sender(policy=FAST) as sender:
        engine = AlertEngine(store, sender, clock=lambda: now)
        for n in await engine.start():
            await engine.deliver(n)
        sent = await engine.tick(now)
        if deliver:
            for n in sent:
                await engine.deliver(n)
        return [n.transition for n in sent]


def test_site_key_is_the_services() -> None:
    assert SITE_KEY == SERVICE_SITE_KEY


async def test_a_restart_neither_resends_nor_forgets(store: Store) -> None:
    async with WebhookReceiver(SECRET) as rx:
        await save_config(store, config(rx.url, Rule("off", "offline", for_s=0, notify=("hook",))))
        await seen(store, "plug-1", 1000, online=False)
        assert await run_once(store, 1001) == ["firing"]
        assert await run_once(store, 1002) == []  # restarted: still firing, not sent again
        assert await run_once(store, 1003) == []
        await seen(store, "plug-1", 1004, online=True)
        assert await run_once(store, 1005) == ["resolved"]
        assert await run_once(store, 1006) == []
    assert [a.json()["type"] for a in rx.accepted] == ["alert.firing", "alert.resolved"]
    assert len(rx.ids) == 2
    records = await history(store)
    assert [r.transition for r in records] == ["resolved", "firing"]
    assert all(r.ok and r.deliveries[0].attempts == 1 for r in records)
    (state,) = await current(store)
    assert state.status == "resolved"


async def test_outbox_is_delivered_after_a_restart_with_the_same_id(store: Store) -> None:
    async with WebhookReceiver(SECRET, fail_first=1) as rx:
        await save_config(store, config(rx.url, Rule("off", "offline", for_s=0, notify=("hook",))))
        await seen(store, "plug-1", 1000, online=False)
        # decided and stored, then the process died before delivering
        assert await run_once(store, 1001, deliver=False) == ["firing"]
        assert rx.attempts == []
        assert await run_once(store, 1002) == []  # the restart delivers the outbox
    assert len(rx.ids) == 1 and [a.status for a in rx.attempts] == [500, 200]
    (record,) = await history(store)
    assert record.deliveries[0].attempts == 2 and record.ok


async def test_failed_delivery_is_recorded(store: Store) -> None:
    async with WebhookReceiver(SECRET, fail_first=9, fail_status=400) as rx:
        await save_config(store, config(rx.url, Rule("off", "offline", for_s=0, notify=("hook",))))
        await seen(store, "plug-1", 1000, online=False)
        assert await run_once(store, 1001) == ["firing"]
    (record,) = await history(store)
    assert not record.ok and record.deliveries[0].attempts == 1
    assert "HTTP 400" in (record.deliveries[0].error or "")


def _ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())  # type: ignore[arg-type,misc]


@pytest.mark.parametrize(
    ("day", "first_slot", "last_slot", "next_day"),
    [
        # 29 March 2026 in Berlin: 23 hours, 2026-03-28T23:00Z to 2026-03-29T22:00Z
        ((2026, 3, 29, 12), (2026, 3, 28, 23), (2026, 3, 29, 21, 45), (2026, 3, 29, 22, 30)),
        # 25 October 2026 in Berlin: 25 hours, 2026-10-24T22:00Z to 2026-10-25T23:00Z
        ((2026, 10, 25, 12), (2026, 10, 24, 22), (2026, 10, 25, 22, 45), (2026, 10, 25, 23, 30)),
    ],
)
async def test_daily_energy_of_the_site_day_across_clock_changes(
    store: Store,
    day: tuple[int, ...],
    first_slot: tuple[int, ...],
    last_slot: tuple[int, ...],
    next_day: tuple[int, ...],
) -> None:
    await store.put_meta(SITE_KEY, {"tz": "Europe/Berlin"})
    first, last = _ts(*first_slot), _ts(*last_slot)
    slots = [
        SlotEnergy("heater", "switch:0", first - 900, 900_000, 0),  # the day before
        SlotEnergy("heater", "switch:0", first, 1_000_000, 0),  # the day's first quarter hour
        SlotEnergy("heater", "switch:0", last, 1_500_000, 0),  # its last (after the change)
        SlotEnergy("heater", "switch:0", last + 900, 700_000, 0),  # the next day
    ]
    await store.commit(Batch(slots=slots, devices=[DeviceUpdate("heater", last_seen=first)]))
    rule = Rule("budget", "daily_energy_above", budget_wh=2400)
    async with Sender(policy=FAST) as sender:
        engine = AlertEngine(store, sender, default_tz="UTC")
        await engine.start()
        engine.config = config("http://127.0.91.1:9/", rule)
        engine._raw_config = object()  # keep this configuration, not the store's
        snap = await engine.snapshot(_ts(*day))
        assert snap.energy_today == {"heater": 2500.0}
        assert snap.day == (first, last + 900)
        # the rule counts the day's first and last quarter hours: 2500 Wh > 2400
        engine.reload_config = _unchanged  # type: ignore[method-assign]
        assert [n.transition for n in await engine.tick(_ts(*day))] == ["firing"]
        # the next local day: 700 Wh so far, resolved
        assert [n.transition for n in await engine.tick(_ts(*next_day))] == ["resolved"]


async def _unchanged() -> bool:
    return False


async def test_firmware_failed_from_stored_events(store: Store) -> None:
    async with WebhookReceiver(SECRET) as rx:
        cfg = config(rx.url, Rule("ota", "firmware_failed", notify=("hook",)))
        await save_config(store, cfg)
        old = Event("plug-1", 900, "sys", "ota_error", {"msg": "old"})
        await store.commit(Batch(events=[old], devices=[DeviceUpdate("plug-1", last_seen=900)]))
        assert await run_once(store, 1000) == []  # before alerting began: history
        await store.commit(Batch(events=[Event("plug-1", 1010, "sys", "ota_error", {})]))
        assert await run_once(store, 1011) == ["firing"]
        assert await run_once(store, 1012) == []
        await store.commit(Batch(events=[Event("plug-1", 1020, "sys", "ota_success", {})]))
        assert await run_once(store, 1021) == ["resolved"]
    assert len(rx.ids) == 2


async def test_a_configuration_saved_while_running_takes_effect(store: Store) -> None:
    await seen(store, "plug-1", 1000, online=False)
    async with WebhookReceiver(SECRET) as rx, Sender(policy=FAST) as sender:
        engine = AlertEngine(store, sender)
        await engine.start()
        assert await engine.tick(1001) == []
        data = {
            "rules": [{"id": "off", "kind": "offline", "for_s": 0, "notify": ["hook"]}],
            "channels": [{"name": "hook", "kind": "webhook", "url": rx.url, "secret": SECRET}],
        }
        await save_config(store, parse_config(data))
        (n,) = await engine.tick(1002)
        await engine.deliver(n)
        # an invalid stored value is logged and the one in force stays
        await store.put_meta("alerts.config", {"rules": [{"id": "x", "kind": "nope"}]})
        assert await engine.tick(1003) == []
        assert engine.stats.config_errors == 1 and engine.config.rules[0].id == "off"
    assert len(rx.ids) == 1 and engine.stats.delivered == 1 and engine.stats.firing == 1


async def test_a_stop_after_delivery_but_before_the_history_sends_nothing_again(
    store: Store,
) -> None:
    async with WebhookReceiver(SECRET) as rx:
        await save_config(store, config(rx.url, Rule("off", "offline", for_s=0, notify=("hook",))))
        delivered = Notification(
            id="n1", ts=1001, rule="off", device="plug-1", transition="firing", message="off",
            channels=("hook",), results=(DeliveryResult("hook", True, 1),),
        )  # fmt: skip
        await save_book(store, AlertBook(outbox=[delivered], watermark=1000))
        assert await run_once(store, 1002) == []
        assert await run_once(store, 1003) == []
    assert rx.attempts == []
    (record,) = await history(store)
    assert record.id == "n1" and record.ok
    assert (await load_book(store)).outbox == []
