"""kilowatch.alerts.evaluate: the state machine of every rule kind, time injected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import count

from kilowatch.alerts.config import AlertsConfig, Channel, Rule
from kilowatch.alerts.evaluate import Snapshot, device_power, evaluate, local_day
from kilowatch.alerts.state import AlertState, Notification
from kilowatch.model.messages import Reading
from kilowatch.store.protocol import DeviceRecord

HOOK = Channel("hook", "webhook", url="http://127.0.0.1:9/", secret="whsec_x")


class Run:
    """Evaluates one rule tick by tick, keeping the states between ticks."""

    def __init__(self, rule: Rule) -> None:
        self.cfg = AlertsConfig(rules=(rule,), channels=(HOOK,))
        self.states: dict[tuple[str, str], AlertState] = {}
        self.sent: list[Notification] = []
        self._ids = count(1)

    def tick(self, now: float, **snap: object) -> list[str]:
        result = evaluate(
            self.cfg, self.states, Snapshot(now, **snap),  # type: ignore[arg-type]
            new_id=lambda: f"n{next(self._ids)}",
        )  # fmt: skip
        self.states = result.states
        self.sent += result.notifications
        return [n.transition for n in result.notifications]

    def status(self, device: str = "d1") -> str | None:
        state = self.states.get((self.cfg.rules[0].id, device))
        return None if state is None else state.status


def dev(
    device: str = "d1", *, online: bool | None = True, seen: float | None = 0.0
) -> dict[str, DeviceRecord]:
    return {device: DeviceRecord(device, last_seen=seen, online=online)}


def power(ts: float, **watts: float) -> dict[str, Sequence[Reading]]:
    return {"d1": [Reading("d1", ch.replace("_", ":"), ts, power_w=w) for ch, w in watts.items()]}


def test_offline_lwt_pending_for_grace_then_firing_then_resolved() -> None:
    run = Run(Rule("off", "offline", for_s=30, notify=("hook",)))
    assert run.tick(100, devices=dev(online=True, seen=99)) == []
    assert run.status() is None
    # LWT at 110: the pipeline stamps last_seen with its receipt
    assert run.tick(112, devices=dev(online=False, seen=110)) == []
    assert run.status() == "pending" and run.states[("off", "d1")].since == 110
    assert run.tick(139, devices=dev(online=False, seen=110)) == []
    assert run.tick(140, devices=dev(online=False, seen=110)) == ["firing"]
    assert run.tick(145, devices=dev(online=False, seen=110)) == []  # de-duplicated
    assert run.tick(150, devices=dev(online=True, seen=149)) == ["resolved"]
    assert run.tick(155, devices=dev(online=True, seen=154)) == []
    assert [n.channels for n in run.sent] == [("hook",), ("hook",)]
    assert "offline" in run.sent[0].message and "back online" in run.sent[1].message


def test_offline_back_within_grace_sends_nothing() -> None:
    run = Run(Rule("off", "offline", for_s=30))
    run.tick(100, devices=dev(online=False, seen=100))
    assert run.status() == "pending"
    assert run.tick(120, devices=dev(online=True, seen=119)) == []
    assert run.status() is None and run.sent == []


def test_silent_device_fires_once_silence_exceeds_grace() -> None:
    run = Run(Rule("off", "offline", for_s=300))
    assert run.tick(350, devices=dev(online=True, seen=100)) == []
    assert run.tick(401, devices=dev(online=True, seen=100)) == ["firing"]
    assert run.sent[0].value == 301.0
    assert run.tick(410, devices=dev(online=True, seen=409)) == ["resolved"]


def test_silence_needs_two_minutes_even_with_a_short_grace() -> None:
    run = Run(Rule("off", "offline", for_s=5))
    assert run.tick(200, devices=dev(online=True, seen=100)) == []
    assert run.tick(221, devices=dev(online=True, seen=100)) == ["firing"]


def test_repeat_while_firing() -> None:
    run = Run(Rule("off", "offline", for_s=0, repeat_s=60))
    down = dev(online=False, seen=0)
    assert run.tick(10, devices=down) == ["firing"]
    assert run.tick(69, devices=down) == []
    assert run.tick(70, devices=down) == ["repeat"]
    assert run.tick(100, devices=down) == []
    assert run.tick(130, devices=down) == ["repeat"]
    assert run.sent[1].event_type == "alert.firing"


def test_power_above_for_n_seconds_with_hold_before_resolving() -> None:
    run = Run(Rule("oven", "power_above", threshold_w=1000, for_s=10, channel="switch:0"))
    d = dev(seen=0)
    assert run.tick(100, devices=d, latest=power(100, switch_0=1500)) == []
    assert run.status() == "pending"
    # a dip below before for_s: back to nothing, the next rise starts over
    assert run.tick(105, devices=d, latest=power(105, switch_0=900)) == []
    assert run.status() is None
    assert run.tick(106, devices=d, latest=power(106, switch_0=1500)) == []
    assert run.tick(115, devices=d, latest=power(106, switch_0=1500)) == []
    assert run.tick(116, devices=d, latest=power(116, switch_0=1600)) == ["firing"]
    assert run.sent[0].value == 1600
    # one reading at the threshold does not resolve: it must stay there min(for_s, 60) = 10 s
    assert run.tick(120, devices=d, latest=power(120, switch_0=1000)) == []
    assert run.tick(125, devices=d, latest=power(125, switch_0=1200)) == []
    assert run.tick(130, devices=d, latest=power(130, switch_0=100)) == []
    assert run.tick(139, devices=d, latest=power(139, switch_0=100)) == []
    assert run.tick(140, devices=d, latest=power(140, switch_0=100)) == ["resolved"]
    assert [n.transition for n in run.sent] == ["firing", "resolved"]


def test_power_of_the_device_total_and_stale_readings() -> None:
    run = Run(Rule("total", "power_above", threshold_w=1000, for_s=0))
    d = dev(seen=0)
    assert run.tick(10, devices=d, latest=power(10, switch_0=600, switch_1=500)) == ["firing"]
    # readings older than 10 minutes say nothing about now
    assert run.tick(700, devices=d, latest=power(10, switch_0=600, switch_1=500)) == ["resolved"]


def test_device_power_counts_parts_only_without_their_whole() -> None:
    three = [
        Reading("d", "em:0", 0, power_w=300),
        Reading("d", "em:0/a", 0, power_w=100),
        Reading("d", "em:0/b", 0, power_w=200),
    ]
    assert device_power(three, None, 1) == 300
    assert device_power(three[1:], None, 1) == 300
    assert device_power(three, "em:0/b", 1) == 200
    assert device_power(three, "switch:0", 1) is None


def test_devices_glob_and_disabled_rules() -> None:
    devices = {**dev("plug-1", online=False), **dev("meter-1", online=False)}
    run = Run(Rule("off", "offline", devices=("plug-*",), for_s=0))
    assert run.tick(10, devices=devices) == ["firing"]
    assert run.sent[0].device == "plug-1"
    run.cfg = AlertsConfig(rules=(Rule("off", "offline", enabled=False),), channels=(HOOK,))
    assert run.tick(20, devices=devices) == [] and run.states == {}


def test_daily_energy_fires_and_resolves_at_the_next_local_day() -> None:
    run = Run(Rule("day", "daily_energy_above", budget_wh=5000))
    d = dev(seen=0)
    assert run.tick(100, devices=d, energy_today={"d1": 4000.0}) == []
    assert run.tick(200, devices=d, energy_today={"d1": 5200.0}) == ["firing"]
    assert run.tick(300, devices=d, energy_today={"d1": 6000.0}) == []
    assert run.tick(400, devices=d, energy_today={"d1": 10.0}) == ["resolved"]


def _hours(day: tuple[datetime, datetime]) -> float:
    # timestamps: subtracting aware datetimes of one zone gives their wall-clock difference
    return (day[1].timestamp() - day[0].timestamp()) / 3600


def test_local_day_is_23_or_25_hours_when_clocks_change() -> None:
    spring = datetime(2026, 3, 29, 12, tzinfo=UTC).timestamp()
    autumn = datetime(2026, 10, 25, 12, tzinfo=UTC).timestamp()
    assert _hours(local_day(spring, "Europe/Berlin")) == 23
    assert _hours(local_day(autumn, "Europe/Berlin")) == 25
    start, end = local_day(autumn, "Europe/Berlin")
    assert start.isoformat() == "2026-10-25T00:00:00+02:00"
    assert end.isoformat() == "2026-10-26T00:00:00+01:00"
    # the last second of the 25-hour day still belongs to it; the next is the next day
    assert local_day(end.timestamp() - 1, "Europe/Berlin")[0] == start
    assert local_day(end.timestamp(), "Europe/Berlin")[0] == end
    assert _hours(local_day(autumn, "UTC")) == 24


def test_firmware_failed_until_ota_success() -> None:
    run = Run(Rule("ota", "firmware_failed", repeat_s=3600))
    d = dev(seen=0)
    ota: Mapping[str, tuple[float | None, float | None]] = {"d1": (50.0, None)}
    assert run.tick(60, devices=d, ota=ota) == ["firing"]
    assert run.tick(70, devices=d, ota=ota) == []
    assert run.tick(80, devices=d, ota={"d1": (50.0, 75.0)}) == ["resolved"]
    assert run.tick(90, devices=d, ota={"d1": (50.0, 75.0)}) == []
    # a new failure after the success fires again
    assert run.tick(100, devices=d, ota={"d1": (95.0, 75.0)}) == ["firing"]
    # its events fell out of what the engine reads: still firing, not forgotten
    assert run.tick(110, devices=d, ota={}) == []
    assert run.status() == "firing"


def test_unknown_notify_channel_is_left_out_and_ids_are_fresh() -> None:
    cfg = AlertsConfig(
        rules=(Rule("off", "offline", for_s=0, notify=("hook", "gone")),), channels=(HOOK,)
    )
    result = evaluate(cfg, {}, Snapshot(10, devices=dev(online=False)))
    assert [n.channels for n in result.notifications] == [("hook",)]
    again = evaluate(cfg, {}, Snapshot(10, devices=dev(online=False)))
    assert again.notifications[0].id != result.notifications[0].id
