"""The evaluation of alert rules: pure, with time injected.

A :class:`Snapshot` is what the store says at one instant (devices, latest readings, the local
day's energy, the newest OTA events); :func:`evaluate` turns the rules, the previous states and a
snapshot into the next states and the notifications to send. No I/O, no clock: the caller
(:mod:`kilowatch.alerts.engine`) reads the store and passes ``now``.

Each rule gives, per matching device, an *observation*: is the condition true now, since when,
the value that matters and a message. One state machine serves every kind:

- condition true, no state (or a resolved one): *pending* since the condition began;
- pending for ``for_s`` seconds: *firing*, a ``firing`` notification;
- firing still: a ``repeat`` notification every ``repeat_s`` (if set);
- condition false while pending: the state is dropped, nothing is sent;
- condition false while firing: *resolved* once it has stayed false for the rule's hold time
  (:func:`hold_s`: ``min(for_s, 60)`` for power, 0 for the others), a ``resolved``
  notification.

A rule that is removed, disabled, or no longer matches a device drops its states silently.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from kilowatch.alerts.config import AlertsConfig, Rule
from kilowatch.alerts.state import RESOLVED_KEEP_S, AlertState, Notification
from kilowatch.model.messages import Reading
from kilowatch.store.protocol import DeviceRecord

POWER_HOLD_MAX_S = 60
"""A firing power rule resolves once power has stayed at or below the threshold for
``min(for_s, POWER_HOLD_MAX_S)`` seconds: a load that dips for one reading does not resolve and
re-fire (a notification pair per dip)."""
SILENT_MIN_S = 120
"""A device counts as silent (offline without saying so) once its last message is older than
``max(for_s, SILENT_MIN_S)``: a Shelly reports its meters at least every minute (``aenergy``'s
``by_minute``), so a short grace period for a device that *said* it is offline (LWT) does not
make every quiet minute an alert."""
POWER_STALE_S = 600.0
"""A reading older than this says nothing about power now (the device stopped reporting: the
offline rule's business)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the store says at ``now``.

    ``latest``: the latest readings per device; ``energy_today``: Wh per device in the site's
    local day ``day`` (``[start, end)``, unix seconds); ``ota``: per device the time of its
    newest ``ota_error`` and of its newest ``ota_success`` event (``None``: none seen)."""

    now: float
    devices: Mapping[str, DeviceRecord] = field(default_factory=dict)
    latest: Mapping[str, Sequence[Reading]] = field(default_factory=dict)
    energy_today: Mapping[str, float] = field(default_factory=dict)
    day: tuple[float, float] | None = None
    ota: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observation:
    active: bool
    value: float | None = None
    message: str = ""
    since: float | None = None
    """When the condition began, if known (else the first evaluation that saw it)."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    states: dict[tuple[str, str], AlertState]
    notifications: list[Notification]


def local_day(now: float, tz: str) -> tuple[datetime, datetime]:
    """The local day of ``tz`` that holds ``now``: its start and the next day's start (aware
    datetimes; 23 or 25 hours apart on the days clocks change)."""
    zone = ZoneInfo(tz)
    today: date = datetime.fromtimestamp(now, zone).date()
    start = datetime.combine(today, time(0), tzinfo=zone)
    end = datetime.combine(today + timedelta(days=1), time(0), tzinfo=zone)
    # a zone whose clocks jump over midnight: datetime.combine gives a time that does not exist;
    # the round trip through UTC lands on the first instant that does
    return _normal(start, zone), _normal(end, zone)


def _normal(moment: datetime, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(moment.timestamp(), zone)


def matches(rule: Rule, device: str) -> bool:
    """Whether ``rule`` watches ``device`` (its glob patterns; none: every device)."""
    return not rule.devices or any(fnmatch.fnmatchcase(device, p) for p in rule.devices)


def hold_s(rule: Rule) -> float:
    """How long a firing rule's condition must stay false before it resolves."""
    return float(min(rule.for_s, POWER_HOLD_MAX_S)) if rule.kind == "power_above" else 0.0


def device_power(readings: Sequence[Reading], channel: str | None, now: float) -> float | None:
    """The power of ``channel`` (``None``: the device's total: its channels' sum, where a part
    ``p/q`` counts only when the device has no channel ``p``), from readings no older than
    :data:`POWER_STALE_S`; ``None`` when none says."""
    fresh = {
        r.channel: r.power_w
        for r in readings
        if r.power_w is not None and now - r.ts <= POWER_STALE_S
    }
    if channel is not None:
        return fresh.get(channel)
    known = {r.channel for r in readings}
    parts = [w for ch, w in fresh.items() if "/" not in ch or ch.partition("/")[0] not in known]
    return sum(parts) if parts else None


def _whole(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def observe(rule: Rule, device: str, snap: Snapshot, prior: AlertState | None) -> Observation:
    """Whether ``rule``'s condition holds for ``device`` in ``snap``."""
    record = snap.devices.get(device)
    if rule.kind == "offline":
        return _offline(rule, device, record, snap.now)
    if rule.kind == "power_above":
        return _power(rule, device, record, snap)
    if rule.kind == "daily_energy_above":
        return _energy(rule, device, snap)
    return _firmware(device, snap, prior)


def _offline(rule: Rule, device: str, record: DeviceRecord | None, now: float) -> Observation:
    if record is None or record.last_seen is None:
        return Observation(False, message=f"{device} is online")
    silent = now - record.last_seen
    if record.online is False:
        return Observation(
            True, silent, f"{device} is offline (last seen {_ago(silent)} ago)", record.last_seen
        )
    if silent > max(rule.for_s, SILENT_MIN_S):
        return Observation(True, silent, f"{device} is silent for {_ago(silent)}", record.last_seen)
    return Observation(False, silent, f"{device} is back online")


def _power(rule: Rule, device: str, record: DeviceRecord | None, snap: Snapshot) -> Observation:
    where = f"{device} {rule.channel}" if rule.channel else device
    threshold = rule.threshold_w or 0.0
    if record is not None and record.online is False:
        return Observation(False, None, f"{where}: offline, no power reading")
    watts = device_power(snap.latest.get(device, ()), rule.channel, snap.now)
    if watts is None:
        return Observation(False, None, f"{where}: no recent power reading")
    if watts > threshold:
        return Observation(
            True, watts, f"{where} draws {_whole(watts)} W, above {_whole(threshold)} W"
        )
    return Observation(
        False, watts, f"{where} draws {_whole(watts)} W, at or below {_whole(threshold)} W"
    )


def _energy(rule: Rule, device: str, snap: Snapshot) -> Observation:
    budget = rule.budget_wh or 0.0
    wh = snap.energy_today.get(device, 0.0)
    if wh > budget:
        return Observation(
            True, wh, f"{device} used {_whole(wh)} Wh today, budget {_whole(budget)}"
        )
    return Observation(False, wh, f"{device} used {_whole(wh)} Wh today, within {_whole(budget)}")


def _firmware(device: str, snap: Snapshot, prior: AlertState | None) -> Observation:
    error, success = snap.ota.get(device, (None, None))
    firing = prior is not None and prior.status == "firing"
    # the newest of the two decides: an error after the last success (the engine leaves out
    # errors from before alerting began)
    if error is not None and (success is None or success < error):
        return Observation(True, None, f"{device}: firmware update failed", error)
    if firing and error is None and success is None:  # its events fell out of what was read
        return Observation(True, None, prior.message if prior else "", None)
    return Observation(False, None, f"{device}: firmware updated")


def _notify(
    rule: Rule, cfg: AlertsConfig, state: AlertState, transition: str, new_id: Callable[[], str]
) -> Notification:
    return Notification(
        id=new_id(),
        ts=state.last_notified or state.since,
        rule=rule.id,
        device=state.device,
        transition=transition,
        message=state.message,
        value=state.value,
        rule_name=rule.title,
        channels=tuple(c for c in rule.notify if cfg.channel(c) is not None),
    )


def step(
    rule: Rule, prior: AlertState | None, obs: Observation, now: float, device: str
) -> tuple[AlertState | None, str | None]:
    """One state machine step: the next state (``None``: none) and the transition to notify."""
    if obs.active:
        state = prior
        if state is None or state.status == "resolved":
            since = obs.since if obs.since is not None else now
            state = AlertState(
                rule.id, device, "pending", min(since, now), obs.value, None, obs.message
            )
        state = replace(
            state, value=obs.value, message=obs.message or state.message, clear_since=None
        )
        if state.status == "pending":
            if now - state.since >= rule.for_s:
                return replace(state, status="firing", since=now, last_notified=now), "firing"
            return state, None
        last = state.last_notified if state.last_notified is not None else state.since
        if rule.repeat_s is not None and now - last >= rule.repeat_s:
            return replace(state, last_notified=now), "repeat"
        return state, None
    if prior is None or prior.status == "resolved":
        return prior, None
    if prior.status == "pending":
        return None, None
    clear_since = prior.clear_since if prior.clear_since is not None else now
    if now - clear_since >= hold_s(rule):
        resolved = AlertState(
            rule.id, device, "resolved", now, obs.value, now, obs.message or prior.message
        )
        return resolved, "resolved"
    return replace(prior, clear_since=clear_since), None


def evaluate(
    cfg: AlertsConfig,
    states: Mapping[tuple[str, str], AlertState],
    snap: Snapshot,
    *,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> Evaluation:
    """The next states and the notifications to send (see the module's docstring).

    Devices are those of ``snap.devices`` matching a rule, plus those a rule holds a state for
    (so a device that disappeared still resolves). Resolved states older than
    :data:`~kilowatch.alerts.state.RESOLVED_KEEP_S` are forgotten."""
    now = snap.now
    out: dict[tuple[str, str], AlertState] = {}
    sent: list[Notification] = []
    for rule in cfg.rules:
        if not rule.enabled:
            continue
        devices = {d for d in snap.devices if matches(rule, d)}
        devices |= {d for (r, d) in states if r == rule.id and matches(rule, d)}
        for device in sorted(devices):
            prior = states.get((rule.id, device))
            state, transition = step(rule, prior, observe(rule, device, snap, prior), now, device)
            if state is None:
                continue
            if state.status == "resolved" and now - state.since > RESOLVED_KEEP_S:
                continue
            out[state.key] = state
            if transition is not None:
                sent.append(_notify(rule, cfg, state, transition, new_id))
    return Evaluation(out, sent)


__all__ = [
    "POWER_HOLD_MAX_S",
    "POWER_STALE_S",
    "SILENT_MIN_S",
    "Evaluation",
    "Observation",
    "Snapshot",
    "device_power",
    "evaluate",
    "hold_s",
    "local_day",
    "matches",
    "observe",
    "step",
]
