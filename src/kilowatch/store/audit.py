"""The audit log's entries, made the same way everywhere (CLI, dashboard, API, service).

An action is recorded twice: when it starts (``result="started"``) and when it ends (its outcome,
``detail["started"]`` = the first entry's id), so an action that died half-way still shows. Both
writes are :meth:`Store.audit_append` of entries with fresh ids: retrying one stores it once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from kilowatch.store.protocol import AuditEntry, Store

RESULTS = ("started", "ok", "failed", "partial", "halted", "refused")
SHOWN_DEVICES = 3
"""Devices :func:`devices_text` names; more are counted (``a, b, c +97``)."""


def audit_entry(
    actor: str,
    action: str,
    *,
    devices: Sequence[str] = (),
    result: str = "ok",
    detail: Mapping[str, Any] | None = None,
    started: AuditEntry | None = None,
    now: float | None = None,
) -> AuditEntry:
    """A new entry (fresh id). ``started``: the entry of the same action's start, linked from
    this one's detail."""
    if result not in RESULTS:
        raise ValueError(f"audit result {result!r} is not one of {', '.join(RESULTS)}")
    body = dict(detail or {})
    if started is not None:
        body["started"] = started.id
    return AuditEntry(
        id=uuid.uuid4().hex,
        ts=time.time() if now is None else now,
        actor=actor,
        action=action,
        devices=tuple(devices),
        result=result,
        detail=body,
    )


@dataclass
class AuditedAction:
    """What an ``async with audited(...)`` body tells the log about its outcome."""

    started: AuditEntry
    result: str = "ok"
    devices: Sequence[str] | None = None
    """The devices the action touched, when known only at the end (default: those at start)."""
    detail: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def audited(
    store: Store,
    actor: str,
    action: str,
    *,
    devices: Sequence[str] = (),
    detail: Mapping[str, Any] | None = None,
) -> AsyncIterator[AuditedAction]:
    """Record ``action``'s start, run the body, record its end: ``act.result`` (default ``ok``)
    and ``act.detail``, or ``failed`` with the error's text when the body raises (re-raised)."""
    started = audit_entry(actor, action, devices=devices, result="started", detail=detail)
    await store.audit_append([started])
    act = AuditedAction(started=started)
    try:
        yield act
    except BaseException as err:
        end = audit_entry(
            actor,
            action,
            devices=act.devices if act.devices is not None else devices,
            result="failed",
            detail={**act.detail, "error": str(err) or type(err).__name__},
            started=started,
        )
        await store.audit_append([end])
        raise
    end = audit_entry(
        actor,
        action,
        devices=act.devices if act.devices is not None else devices,
        result=act.result,
        detail=act.detail,
        started=started,
    )
    await store.audit_append([end])


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry's JSON (``kilowatch fleet audit --json``, ``/api/v1/audit``, the audit page)."""
    return {
        "id": entry.id,
        "ts": entry.ts,
        "actor": entry.actor,
        "action": entry.action,
        "devices": list(entry.devices),
        "result": entry.result,
        "detail": dict(entry.detail),
    }


def devices_text(devices: Sequence[str], shown: int = SHOWN_DEVICES) -> str:
    """``a, b, c +97``: the first ``shown`` devices and how many more."""
    if len(devices) <= shown:
        return ", ".join(devices)
    return ", ".join(devices[:shown]) + f" +{len(devices) - shown}"


__all__ = [
    "RESULTS",
    "SHOWN_DEVICES",
    "AuditedAction",
    "audit_entry",
    "audited",
    "devices_text",
    "entry_json",
]
