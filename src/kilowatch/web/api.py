"""``/api/v1``: JSON (and CSV, SSE) for scripts and the pages' JavaScript; errors are problems."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from kilowatch import __version__
from kilowatch.errors import ConfigError, Problem
from kilowatch.model.messages import Reading
from kilowatch.web.deps import Admin, State, Viewer
from kilowatch.web.energy import build_query, report
from kilowatch.web.problems import bad_param
from kilowatch.web.site import save_site
from kilowatch.web.views import device_json, devices_table, overview

SSE_KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing an idle stream (nginx's default is 60 s)."""
SSE_POLL_S = 1.0
HEALTH_TIMEOUT_S = 2.0
MAX_DEVICE_ID = 200

router = APIRouter(prefix="/api/v1")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _check_device_id(device: str) -> str:
    if not device or len(device) > MAX_DEVICE_ID:
        raise bad_param("device", f"a device id has 1–{MAX_DEVICE_ID} characters")
    return device


@router.get("/health", tags=["health"], summary="Liveness and store reachability (no login needed)")
async def health(state: State) -> Response:
    ingest = state.ingest_health() if state.ingest_health is not None else None
    extra: dict[str, Any] = {} if ingest is None else {"ingest": ingest.status}
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await state.store.get_meta("settings.site")
    except Exception as err:
        return JSONResponse(
            {
                "status": "error",
                "store": "unreachable",
                "detail": type(err).__name__,
                "version": __version__,
                **extra,
            },
            status_code=503,
        )
    if ingest is not None and not ingest.ok:
        # Readable, yet not storing what arrives (failing or stuck commits): not healthy.
        return JSONResponse(
            {
                "status": "degraded",
                "store": "ok",
                "version": __version__,
                **extra,
                "reasons": list(ingest.reasons),
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok", "store": "ok", "version": __version__, **extra})


@router.get("/me", tags=["auth"], summary="Who you are logged in as")
async def me(principal: Viewer) -> Response:
    return JSONResponse(
        {
            "user": principal.user,
            "role": principal.role.value,
            "via": principal.via,
            "csrf": principal.csrf,
        }
    )


@router.get("/devices", tags=["devices"], summary="Every device, with power now and energy today")
async def list_devices(state: State, _: Viewer) -> Response:
    rows = await devices_table(state.store, state.site, state.clock())
    return JSONResponse({"devices": rows})


@router.get("/devices/{device}", tags=["devices"], summary="One device, its latest readings")
async def get_device(device: str, state: State, _: Viewer) -> Response:
    rec = await state.store.device(_check_device_id(device))
    if rec is None:
        raise Problem(404, f"no device {device!r}; GET /api/v1/devices lists them")
    latest = await state.store.latest(device)
    out = device_json(rec, latest, None, state.clock())
    out["latest"] = [r.to_json() for r in latest]
    return JSONResponse(out)


class DevicePatch(BaseModel):
    """Rename a device or put it in a room; ``""`` clears, absent leaves as is."""

    model_config = {"extra": "forbid"}
    label: str | None = Field(default=None, max_length=100)
    room: str | None = Field(default=None, max_length=100)


@router.patch(
    "/devices/{device}", tags=["devices"], summary="Rename a device / set its room (admin)"
)
async def patch_device(device: str, patch: DevicePatch, state: State, _: Admin) -> Response:
    rec = await state.store.device(_check_device_id(device))
    if rec is None:
        raise Problem(404, f"no device {device!r}")
    label = patch.label.strip() if patch.label is not None else None
    room = patch.room.strip() if patch.room is not None else None
    await state.store.set_device_label(device, label=label, room=room)
    updated = await state.store.device(device)
    assert updated is not None
    return JSONResponse(device_json(updated, await state.store.latest(device), None, state.clock()))


@router.get("/devices/{device}/events", tags=["devices"], summary="A device's recent events")
async def device_events(
    device: str, state: State, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Response:
    events = await state.store.events(_check_device_id(device), limit=limit)
    return JSONResponse({"events": [e.to_json() for e in events]})


@router.get("/latest", tags=["live"], summary="Last reading of each channel")
async def latest(
    state: State, _: Viewer, device: Annotated[str | None, Query(max_length=MAX_DEVICE_ID)] = None
) -> Response:
    readings = await state.store.latest(device)
    return JSONResponse({"readings": [r.to_json() for r in readings]})


@router.get(
    "/energy",
    tags=["energy"],
    summary="Energy per local-time bucket (JSON, or CSV with format=csv)",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def energy(
    state: State,
    _: Viewer,
    by: Annotated[str, Query(description="15min, hour, day or month")] = "hour",
    tz: Annotated[str | None, Query(description="IANA zone; default: the site's")] = None,
    from_: Annotated[
        str | None, Query(alias="from", description="date or ISO datetime, inclusive")
    ] = None,
    to: Annotated[str | None, Query(description="date or ISO datetime, exclusive")] = None,
    device: Annotated[list[str], Query(description="device id(s); repeat or comma-separate")] = [],  # noqa: B006 - FastAPI copies defaults
    channel: Annotated[list[str], Query(description="channel name(s), e.g. em:0/a")] = [],  # noqa: B006
    group: Annotated[str, Query(description="channel, device or total")] = "channel",
    cost: Annotated[
        bool, Query(description="add the cost of each row with the site's tariff")
    ] = False,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response:
    query = build_query(
        by=by,
        tz=tz or state.site.tz,
        start=from_,
        end=to,
        devices=device,
        channels=channel,
        group=group,
        now=state.clock(),
    )
    result = await report(state.store, query, tariff=state.site.tariff if cost else None)
    if format == "csv":
        return Response(
            result.to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="energy-{query.by}.csv"'},
        )
    return JSONResponse(result.to_json())


@router.get(
    "/overview",
    tags=["energy"],
    summary="Today / this month / last month, live power, top consumers",
)
async def get_overview(state: State, _: Viewer) -> Response:
    return JSONResponse(await overview(state.store, state.site, state.clock()))


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get(
    "/live",
    tags=["live"],
    summary="Server-sent events: `reading` for each fresh reading (the latest ones first)",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def live(
    request: Request,
    state: State,
    _: Viewer,
    device: Annotated[str | None, Query(max_length=MAX_DEVICE_ID)] = None,
) -> StreamingResponse:
    stopping: asyncio.Event = request.app.state.stopping

    def wanted(r: Reading) -> bool:
        return device is None or r.device == device

    async def stream() -> AsyncIterator[bytes]:
        async with state.live.subscribe() as queue:
            yield b"retry: 3000\n\n"
            for r in await state.store.latest(device):
                yield _sse("reading", r.to_json())
            idle = 0.0
            while not stopping.is_set():
                # Wake up every second so a server shutdown ends the stream promptly.
                try:
                    async with asyncio.timeout(SSE_POLL_S):
                        batch = await queue.get()
                except TimeoutError:
                    idle += SSE_POLL_S
                    if idle >= SSE_KEEPALIVE_S:
                        idle = 0.0
                        yield b": keepalive\n\n"
                    continue
                idle = 0.0
                for r in batch:
                    if wanted(r):
                        yield _sse("reading", r.to_json())

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/settings", tags=["settings"], summary="Site time zone, tariff and retention")
async def get_settings(state: State, _: Viewer) -> Response:
    return JSONResponse(state.site.to_json())


@router.patch(
    "/settings", tags=["settings"], summary="Change site settings (admin); fields absent stay"
)
async def patch_settings(
    state: State,
    _: Admin,
    body: Annotated[
        dict[str, Any],
        Body(examples=[{"tz": "Europe/Berlin", "tariff": {"currency": "EUR", "price": 0.3}}]),
    ],
) -> Response:
    try:
        site = state.site.updated(body)
    except ConfigError as err:
        raise Problem(400, str(err), slug="invalid-parameter") from None
    await save_site(state.store, site)
    state.site = site
    return JSONResponse(site.to_json())


__all__ = ["router"]
