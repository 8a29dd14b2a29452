"""``/api/v1``: JSON (and CSV, SSE) for scripts and the pages' JavaScript; errors are problems."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal, NotRequired, get_args

import orjson
from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs it for a TypedDict on Python < 3.12

from kilowatch import __version__
from kilowatch.errors import ConfigError, Problem
from kilowatch.model.messages import Reading
from kilowatch.query.energy import Bucket, Grouping
from kilowatch.store.audit import audited
from kilowatch.web import openapi
from kilowatch.web.deps import Admin, State, Viewer
from kilowatch.web.energy import build_query, report
from kilowatch.web.energyview import energy_view
from kilowatch.web.site import MAX_RETENTION_DAYS, change_site
from kilowatch.web.views import (
    device_json,
    devices_table,
    display_name,
    label_changes,
    message_json,
    overview,
)

SSE_KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing an idle stream (nginx's default is 60 s)."""
SSE_POLL_S = 1.0
HEALTH_TIMEOUT_S = 2.0
MAX_DEVICE_ID = 200


class StrictJSONRequest(Request):
    """A request whose JSON body is read as RFC 8259 JSON: ``NaN``, ``Infinity``, numbers beyond a
    double (``1e999``) and lone surrogates (``"\\ud800"``) do not parse (a 422 problem), so they
    never reach a setting, a label or the store. (Python's ``json`` reads all of them.)"""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI makes it a 422
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route that reads JSON bodies with :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


router = APIRouter(prefix="/api/v1", route_class=StrictJSONRoute)

DeviceId = Annotated[
    str, Path(min_length=1, max_length=MAX_DEVICE_ID, examples=["shellyplugsg3-aabbccddeeff"])
]

# The query parameters /energy and /energy.csv share (docs/api.md).
ByParam = Annotated[
    str, Query(description="bucket size", json_schema_extra={"enum": list(get_args(Bucket))})
]
TzParam = Annotated[
    str | None, Query(description="IANA zone; default: the site's", examples=["Europe/Berlin"])
]
FromParam = Annotated[
    str | None,
    Query(alias="from", description="date or ISO datetime, inclusive", examples=["2026-03"]),
]
ToParam = Annotated[
    str | None, Query(description="date or ISO datetime, exclusive", examples=["2026-03-16T06:00"])
]
DevicesParam = Annotated[
    list[str],
    Query(
        description="device id(s); repeat or comma-separate",
        examples=[["shellyplugsg3-aabbccddeeff"]],
    ),
]
ChannelsParam = Annotated[
    list[str], Query(description="channel name(s), e.g. em:0/a", examples=[["switch:0"]])
]


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@router.get(
    "/health",
    tags=["health"],
    summary="Liveness and store reachability (no login needed)",
    responses=openapi.PUBLIC,
    openapi_extra={"security": []},
)
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


@router.get("/me", tags=["auth"], summary="Who you are logged in as", responses=openapi.READ)
async def me(principal: Viewer) -> Response:
    return JSONResponse(
        {
            "user": principal.user,
            "role": principal.role.value,
            "via": principal.via,
            "csrf": principal.csrf,
        }
    )


@router.get(
    "/devices",
    tags=["devices"],
    summary="Every device, with power now and energy today",
    responses=openapi.READ,
)
async def list_devices(state: State, _: Viewer) -> Response:
    rows = await devices_table(state.store, state.site, state.clock())
    return JSONResponse({"devices": rows})


@router.get(
    "/devices/{device}",
    tags=["devices"],
    summary="One device, its latest readings",
    responses=openapi.DEVICE_READ,
)
async def get_device(device: DeviceId, state: State, _: Viewer) -> Response:
    rec = await state.store.device(device)
    if rec is None:
        raise Problem(404, f"no device {device!r}; GET /api/v1/devices lists them")
    latest = await state.store.latest(device)
    out = device_json(rec, latest, None, state.clock())
    out["latest"] = [message_json(r) for r in latest]
    return JSONResponse(out)


class DevicePatch(BaseModel):
    """Rename a device or put it in a room; ``""`` clears, absent leaves as is."""

    model_config = {"extra": "forbid"}
    label: str | None = Field(default=None, max_length=100)
    room: str | None = Field(default=None, max_length=100)


@router.patch(
    "/devices/{device}",
    tags=["devices"],
    summary="Rename a device / set its room (admin)",
    responses=openapi.DEVICE_WRITE,
)
async def patch_device(
    request: Request, device: DeviceId, patch: DevicePatch, state: State, principal: Admin
) -> Response:
    rec = await state.store.device(device)
    if rec is None:
        raise Problem(404, f"no device {device!r}")
    label = patch.label.strip() if patch.label is not None else None
    room = patch.room.strip() if patch.room is not None else None
    changed = label_changes(rec, label, room)
    if changed:
        actor = principal.actor
        async with audited(
            state.store, actor, "device.rename", devices=[device], detail=changed
        ) as act:
            await state.store.set_device_label(device, label=label, room=room)
            act.detail.update(changed)
    updated = await state.store.device(device)
    assert updated is not None
    return JSONResponse(device_json(updated, await state.store.latest(device), None, state.clock()))


# A device's power, events and logs: kilowatch.web.devicedata.


@router.get(
    "/latest",
    tags=["live"],
    summary="Last reading of each channel",
    responses=openapi.FILTERED_READ,
)
async def latest(
    state: State, _: Viewer, device: Annotated[str | None, Query(max_length=MAX_DEVICE_ID)] = None
) -> Response:
    readings = await state.store.latest(device)
    return JSONResponse({"readings": [message_json(r) for r in readings]})


@router.get(
    "/energy",
    tags=["energy"],
    summary="Energy per local-time bucket (JSON, or CSV with format=csv)",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}},
        **openapi.QUESTION,
    },
)
async def energy(
    state: State,
    _: Viewer,
    by: ByParam = "hour",
    tz: TzParam = None,
    from_: FromParam = None,
    to: ToParam = None,
    device: DevicesParam = [],  # noqa: B006 - FastAPI copies defaults
    channel: ChannelsParam = [],  # noqa: B006
    group: Annotated[
        str,
        Query(description="rows per", json_schema_extra={"enum": list(get_args(Grouping))}),
    ] = "channel",
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
    "/energy.csv",
    tags=["energy"],
    summary="The Energy page's view as CSV: buckets, series, untracked, cost",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, **openapi.QUESTION},
)
async def energy_csv(
    state: State,
    _: Viewer,
    by: ByParam = "hour",
    tz: TzParam = None,
    from_: FromParam = None,
    to: ToParam = None,
    device: DevicesParam = [],  # noqa: B006 - FastAPI copies defaults
    channel: ChannelsParam = [],  # noqa: B006
    group: Annotated[
        str,
        Query(
            description="the page's view: one series (total), stacked by device, or by channel",
            json_schema_extra={"enum": list(get_args(Grouping))},
        ),
    ] = "channel",
) -> Response:
    """One row per bucket of the period (local times with their offset): the totals, the
    estimated flag, the cost with a tariff set, the untracked energy with grid meters set, then
    each series' Wh (docs/api.md)."""
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
    names = {r.device: display_name(r) for r in await state.store.devices()}
    view = await energy_view(state.store, state.site, query, names)
    return Response(
        view.to_csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{view.filename()}"'},
    )


@router.get(
    "/overview",
    tags=["energy"],
    summary="Today / this month / last month, live power, top consumers",
    responses=openapi.READ,
)
async def get_overview(state: State, _: Viewer) -> Response:
    return JSONResponse(await overview(state.store, state.site, state.clock()))


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get(
    "/live",
    tags=["live"],
    summary="Server-sent events: `reading` for each fresh reading (the latest ones first)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"itemSchema": openapi.READING_EVENT}}},
        **openapi.FILTERED_READ,
    },
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
                yield _sse("reading", message_json(r))
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
                        yield _sse("reading", message_json(r))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/settings",
    tags=["settings"],
    summary="Site time zone, tariff and retention",
    responses=openapi.READ,
)
async def get_settings(state: State, _: Viewer) -> Response:
    return JSONResponse(state.site.to_json())


_BODY = ConfigDict(extra="forbid", allow_inf_nan=False)
Price = Annotated[float, Field(strict=True, examples=[0.3])]
"""Per kWh; a number (not ``true``, not ``"0.3"``); its range is the tariff's to check (400)."""


@with_config(_BODY)
class PeriodPatch(TypedDict):
    """A time-of-use price: local ``start``–``end`` in 15-minute steps, on ``days`` (all)."""

    start: Annotated[str, Field(max_length=5, examples=["22:00"])]
    end: Annotated[str, Field(max_length=5, examples=["06:00"])]
    price: Price
    days: NotRequired[Annotated[list[Annotated[str, Field(max_length=16)]], Field(max_length=7)]]


@with_config(_BODY)
class TariffPatch(TypedDict, total=False):
    """The tariff; the checks of :meth:`kilowatch.query.tariff.Tariff.from_json` apply (400)."""

    currency: Annotated[str, Field(max_length=8)]
    price: Price
    export_price: Price
    periods: list[PeriodPatch]


@with_config(_BODY)
class SettingsPatch(TypedDict, total=False):
    """The settings to change; those absent stay as they are."""

    tz: Annotated[str, Field(max_length=64, examples=["Europe/Berlin"])]
    tariff: TariffPatch
    retention_days: Annotated[int, Field(strict=True, ge=1, le=MAX_RETENTION_DAYS)] | None
    grid_meters: list[Annotated[str, Field(max_length=MAX_DEVICE_ID)]] | None


@router.patch(
    "/settings",
    tags=["settings"],
    summary="Change site settings (admin); fields absent stay",
    responses=openapi.SETTINGS_WRITE,
)
async def patch_settings(
    request: Request,
    state: State,
    principal: Admin,
    body: Annotated[
        SettingsPatch,
        Body(examples=[{"tz": "Europe/Berlin", "tariff": {"currency": "EUR", "price": 0.3}}]),
    ],
) -> Response:
    try:
        site = state.site.updated(body)
    except ConfigError as err:
        raise Problem(400, str(err), slug="invalid-parameter") from None
    await change_site(state.store, principal.actor, state.site, site)
    state.site = site
    return JSONResponse(site.to_json())


__all__ = ["router"]
