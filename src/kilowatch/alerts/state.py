"""Alert states, notifications waiting for delivery, and the history of what was sent, as kept
in the store's meta.

Two keys:

- :data:`STATE_KEY` holds the *book*: one :class:`AlertState` per (rule, device) that is pending,
  firing or recently resolved, the *outbox* (notifications decided but not yet delivered to
  every channel) and the firmware rule's event watermark. The evaluator writes it whole, in
  one value write, *before* anything is delivered: a restart then neither re-sends a firing
  alert (its state says it was notified) nor forgets one (the outbox is delivered again, with
  the same notification id, so a webhook receiver sees the same ``webhook-id``).
- :data:`HISTORY_KEY` holds the newest :data:`HISTORY_LIMIT` :class:`AlertRecord` s, newest
  first: every notification with its delivery result per channel.

Only the service writes these keys (one writer); the web page and the CLI read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kilowatch.store.protocol import Store

STATE_KEY = "alerts.state"
HISTORY_KEY = "alerts.history"
HISTORY_LIMIT = 1000
"""History entries kept (newest)."""
RESOLVED_KEEP_S = 24 * 3600.0
"""A resolved state stays visible in :func:`current` this long, then is forgotten."""
STATUSES = ("pending", "firing", "resolved")
TRANSITIONS = ("firing", "resolved", "repeat", "test")


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one rule stands for one device.

    ``since`` is when the current ``status`` began (for ``pending``: when the condition began,
    so the rule fires at ``since + for_s``); ``value`` the measured value that matters (watts,
    Wh today, seconds offline); ``last_notified`` when a notification was last decided (firing,
    repeat or resolved); ``clear_since`` when a firing power rule's power went back to or under
    the threshold (it resolves once it stays there long enough)."""

    rule: str
    device: str
    status: str
    since: float
    value: float | None = None
    last_notified: float | None = None
    message: str = ""
    clear_since: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.device)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one notification on one channel."""

    channel: str
    ok: bool
    attempts: int
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Notification:
    """A notification decided by the evaluator. ``id`` names it everywhere and on every retry
    (the webhook's ``webhook-id``, the e-mail's ``Message-ID``). ``transition``: ``firing``,
    ``resolved``, ``repeat`` (firing still), ``test`` (``kilowatch alerts test``).
    ``channels``: where it goes; ``results``: the channels done so far (outbox)."""

    id: str
    ts: float
    rule: str
    device: str
    transition: str
    message: str
    value: float | None = None
    rule_name: str = ""
    channels: tuple[str, ...] = ()
    results: tuple[DeliveryResult, ...] = ()

    @property
    def event_type(self) -> str:
        """The webhook ``type``: ``alert.firing`` (firing and repeat), ``alert.resolved``,
        ``alert.test``."""
        return {"resolved": "alert.resolved", "test": "alert.test"}.get(
            self.transition, "alert.firing"
        )

    @property
    def pending(self) -> tuple[str, ...]:
        done = {r.channel for r in self.results}
        return tuple(c for c in self.channels if c not in done)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["results"] = [r.to_json() for r in self.results]
        return out


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One history entry: a notification and its delivery result per channel."""

    id: str
    ts: float
    rule: str
    device: str
    transition: str
    message: str
    value: float | None = None
    deliveries: tuple[DeliveryResult, ...] = ()

    @property
    def ok(self) -> bool:
        """Delivered on every channel (true when there was no channel)."""
        return all(d.ok for d in self.deliveries)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["deliveries"] = [d.to_json() for d in self.deliveries]
        return out

    @classmethod
    def of(cls, n: Notification) -> AlertRecord:
        return cls(n.id, n.ts, n.rule, n.device, n.transition, n.message, n.value, n.results)


@dataclass
class AlertBook:
    """The evaluator's memory (mutable; owned by one service). ``watermark``: firmware events up
    to this time were looked at already."""

    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    outbox: list[Notification] = field(default_factory=list)
    watermark: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "states": [s.to_json() for s in self.states.values()],
            "outbox": [n.to_json() for n in self.outbox],
            "watermark": self.watermark,
        }

    @classmethod
    def from_json(cls, data: Any) -> AlertBook:
        """The book of a stored value; entries that do not read are dropped (never raises)."""
        book = cls()
        if not isinstance(data, Mapping):
            return book
        for raw in _items(data.get("states")):
            state = _state(raw)
            if state is not None:
                book.states[state.key] = state
        book.outbox = [n for n in map(_notification, _items(data.get("outbox"))) if n is not None]
        book.watermark = _float(data.get("watermark"))
        return book


# -- reading stored values (never trusting them) -------------------------------------------------


def _items(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, Mapping))


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _state(raw: Mapping[str, Any]) -> AlertState | None:
    since = _float(raw.get("since"))
    if raw.get("status") not in STATUSES or since is None or not _str(raw.get("rule")):
        return None
    return AlertState(
        rule=_str(raw.get("rule")),
        device=_str(raw.get("device")),
        status=raw["status"],
        since=since,
        value=_float(raw.get("value")),
        last_notified=_float(raw.get("last_notified")),
        message=_str(raw.get("message")),
        clear_since=_float(raw.get("clear_since")),
    )


def _result(raw: Mapping[str, Any]) -> DeliveryResult:
    attempts = raw.get("attempts")
    return DeliveryResult(
        channel=_str(raw.get("channel")),
        ok=raw.get("ok") is True,
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
        error=raw.get("error") if isinstance(raw.get("error"), str) else None,
    )


def _notification(raw: Mapping[str, Any]) -> Notification | None:
    ts = _float(raw.get("ts"))
    if ts is None or not _str(raw.get("id")) or raw.get("transition") not in TRANSITIONS:
        return None
    channels = raw.get("channels")
    return Notification(
        id=_str(raw.get("id")),
        ts=ts,
        rule=_str(raw.get("rule")),
        device=_str(raw.get("device")),
        transition=raw["transition"],
        message=_str(raw.get("message")),
        value=_float(raw.get("value")),
        rule_name=_str(raw.get("rule_name")),
        channels=tuple(c for c in channels if isinstance(c, str))
        if isinstance(channels, list)
        else (),
        results=tuple(_result(r) for r in _items(raw.get("results"))),
    )


def _record(raw: Mapping[str, Any]) -> AlertRecord | None:
    ts = _float(raw.get("ts"))
    if ts is None or raw.get("transition") not in TRANSITIONS:
        return None
    return AlertRecord(
        id=_str(raw.get("id")),
        ts=ts,
        rule=_str(raw.get("rule")),
        device=_str(raw.get("device")),
        transition=raw["transition"],
        message=_str(raw.get("message")),
        value=_float(raw.get("value")),
        deliveries=tuple(_result(d) for d in _items(raw.get("deliveries"))),
    )


# -- the store -------------------------------------------------------------------------------------


async def load_book(store: Store) -> AlertBook:
    return AlertBook.from_json(await store.get_meta(STATE_KEY))


async def save_book(store: Store, book: AlertBook) -> None:
    """Write the book whole (a value write: safe to repeat)."""
    await store.put_meta(STATE_KEY, book.to_json())


_STATUS_ORDER = {"firing": 0, "pending": 1, "resolved": 2}


async def current(store: Store) -> list[AlertState]:
    """Every pending, firing and recently resolved (:data:`RESOLVED_KEEP_S`) state: firing
    first, then pending, then resolved; newest first within each."""
    book = await load_book(store)
    return sorted(book.states.values(), key=lambda s: (_STATUS_ORDER[s.status], -s.since))


async def history(store: Store, limit: int = 100) -> list[AlertRecord]:
    """The newest ``limit`` notifications (at most :data:`HISTORY_LIMIT` are kept), newest
    first, each with its delivery result per channel."""
    data = await store.get_meta(HISTORY_KEY)
    records = [r for r in map(_record, _items(data)) if r is not None]
    return records[: max(0, limit)]


async def append_history(store: Store, records: Iterable[AlertRecord]) -> None:
    """Add records (newest first, bounded). A record whose id is there already replaces it, so
    recording a notification again after a restart keeps one entry."""
    new = list(records)
    if not new:
        return
    ids = {r.id for r in new}
    data = await store.get_meta(HISTORY_KEY)
    kept = [r for r in _items(data) if r.get("id") not in ids]
    rows = sorted((r.to_json() for r in new), key=lambda r: -r["ts"]) + kept
    rows.sort(key=lambda r: -(_float(r.get("ts")) or 0.0))
    await store.put_meta(HISTORY_KEY, rows[:HISTORY_LIMIT])


__all__ = [
    "HISTORY_KEY",
    "HISTORY_LIMIT",
    "RESOLVED_KEEP_S",
    "STATE_KEY",
    "STATUSES",
    "TRANSITIONS",
    "AlertBook",
    "AlertRecord",
    "AlertState",
    "DeliveryResult",
    "Notification",
    "append_history",
    "current",
    "history",
    "load_book",
    "save_book",
]
