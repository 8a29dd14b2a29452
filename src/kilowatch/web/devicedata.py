"""A device's power over time, events and debug-log lines (``/api/v1/devices/{id}/power``,
``/events``, ``/logs``) and a server-sent stream of the new events and lines (``/stream``), which
the device page draws and keeps up to date (static/device.js)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from kilowatch.errors import Problem, StoreError
from kilowatch.fleet.logs import FOLLOW_INTERVAL_S, Fresh, event_tail, log_tail
from kilowatch.model.messages import LogLine
from kilowatch.store.protocol import PowerMinute, Store
from kilowatch.web import openapi
from kilowatch.web.api import SSE_KEEPALIVE_S, DeviceId, JSONResponse
from kilowatch.web.deps import State, Viewer
from kilowatch.web.views import instant, message_json

log = logging.getLogger(__name__)

MINUTE = 60
POWER_HOURS_MAX = 48
"""The longest stretch of minute means asked for (Store.power keeps at least two days)."""
LIST_MAX = 1000
"""At most this many events or lines per answer (what the store keeps of a device)."""
Limit = Annotated[int, Query(ge=1, le=LIST_MAX)]
"""How many of a device's newest events or log lines to answer with."""
STREAM_FIRST = 50
"""Events and lines a stream starts with, by default."""

JOURNAL_EVENT: dict[str, Any] = {
    "description": "One server-sent event: `retry` first, then a `logs` and an `events` event "
    "with the newest (`reset`: true, replace what you show), then one of them whenever new "
    "ones are stored (`reset`: false, put them on top; `gap`: true when more arrived than one "
    "read holds, so some were skipped). `data` is JSON: `{reset, gap, items}`, items newest "
    "first, each the shape of GET …/logs or …/events.",
    "type": "object",
    "properties": {
        "event": {"enum": ["logs", "events"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer", "minimum": 0},
    },
}

router = APIRouter(prefix="/api/v1")


async def known_device(store: Store, device: str) -> None:
    """A 404 problem unless the store knows ``device``."""
    if await store.device(device) is None:
        raise Problem(404, f"no device {device!r}; GET /api/v1/devices lists them")


def log_json(line: LogLine) -> dict[str, Any]:
    """The public JSON of a stored log line (``kind``, ``device``, ``ts``, ``message``, and
    ``level``, ``seq``, ``source`` when the line had them); a ``ts`` no clock can show is left
    out."""
    out = line.to_json()
    if instant(line.ts) is None:
        del out["ts"]
    return out


def power_json(device: str, minutes: Sequence[PowerMinute], start: int, end: int) -> dict[str, Any]:
    """Dense minute series from ``start`` to ``end`` (one value per minute, ``null`` where none):
    each channel's mean power, and the device's total, the sum of the channels that have a
    value in that minute, a part (``em:0/a``) left out when its whole (``em:0``) is there."""
    n = (end - start) // MINUTE
    channels: dict[str, list[float | None]] = {}
    for m in minutes:
        i = (m.minute - start) // MINUTE
        if 0 <= i < n:
            channels.setdefault(m.channel, [None] * n)[i] = m.power_w
    wholes = [
        values
        for name, values in sorted(channels.items())
        if "/" not in name or name.split("/", 1)[0] not in channels
    ]
    total: list[float | None] = [None] * n
    for values in wholes:
        for i, w in enumerate(values):
            if w is not None:
                total[i] = w + (total[i] or 0.0)
    return {
        "device": device,
        "start": start,
        "end": end,
        "step_s": MINUTE,
        "channels": dict(sorted(channels.items())),
        "total_w": total,
    }


async def device_power(store: Store, device: str, *, hours: int, now: float) -> dict[str, Any]:
    """The last ``hours`` hours of minute means up to and including the current minute."""
    end = (int(now) // MINUTE + 1) * MINUTE
    start = end - hours * 3600
    minutes = await store.power(device, start=start, end=end)
    return power_json(device, minutes, start, end)


@router.get(
    "/devices/{device}/power",
    tags=["devices"],
    summary="A device's mean power per minute: each channel's and its total",
    responses=openapi.DEVICE_READ,
)
async def get_power(
    device: DeviceId,
    state: State,
    _: Viewer,
    hours: Annotated[
        int, Query(ge=1, le=POWER_HOURS_MAX, description="how far back from now")
    ] = 24,
) -> Response:
    await known_device(state.store, device)
    return JSONResponse(await device_power(state.store, device, hours=hours, now=state.clock()))


@router.get(
    "/devices/{device}/events",
    tags=["devices"],
    summary="A device's recent events, newest first",
    responses=openapi.DEVICE_READ,
)
async def get_events(
    device: DeviceId,
    state: State,
    _: Viewer,
    limit: Limit = 100,
) -> Response:
    await known_device(state.store, device)
    events = await state.store.events(device, limit=limit)
    return JSONResponse({"events": [message_json(e) for e in events]})


@router.get(
    "/devices/{device}/logs",
    tags=["devices"],
    summary="A device's recent debug-log lines, newest first",
    responses=openapi.DEVICE_READ,
)
async def get_logs(
    device: DeviceId,
    state: State,
    _: Viewer,
    limit: Limit = 100,
) -> Response:
    await known_device(state.store, device)
    lines = await state.store.logs(device, limit=limit)
    return JSONResponse({"logs": [log_json(x) for x in lines]})


def _sse(event: str, fresh: Fresh[Any], *, reset: bool = False) -> bytes:
    render = log_json if event == "logs" else message_json
    data = {"reset": reset, "gap": fresh.gap, "items": [render(x) for x in fresh.items]}
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get(
    "/devices/{device}/stream",
    tags=["devices"],
    summary="Server-sent events: a device's newest log lines and events, then each new one",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"itemSchema": JOURNAL_EVENT}}},
        **openapi.DEVICE_READ,
    },
)
async def stream(
    request: Request,
    device: DeviceId,
    state: State,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=LIST_MAX, description="how many to start with")] = (
        STREAM_FIRST
    ),
) -> StreamingResponse:
    await known_device(state.store, device)
    stopping: asyncio.Event = request.app.state.stopping
    logs, events = log_tail(state.store, device), event_tail(state.store, device)

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 3000\n\n"
        yield _sse("logs", Fresh(await logs.start(limit)), reset=True)
        yield _sse("events", Fresh(await events.start(limit)), reset=True)
        idle = 0.0
        while not stopping.is_set():
            # Wake up every second so a server shutdown ends the stream promptly.
            try:
                async with asyncio.timeout(FOLLOW_INTERVAL_S):
                    await stopping.wait()
            except TimeoutError:
                pass
            sent = False
            for name, tail in (("logs", logs), ("events", events)):
                try:
                    fresh = await tail.poll()
                except StoreError as err:
                    # End the stream: the browser reconnects (retry: 3 s) and starts afresh.
                    log.warning("device stream of %s ends: %s", device, err)
                    return
                if fresh.items:
                    sent = True
                    yield _sse(name, fresh)
            idle = 0.0 if sent else idle + FOLLOW_INTERVAL_S
            if idle >= SSE_KEEPALIVE_S:
                idle = 0.0
                yield b": keepalive\n\n"

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


__all__ = ["device_power", "log_json", "power_json", "router"]
