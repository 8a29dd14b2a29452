"""Server-rendered pages (Jinja2). Charts are drawn by static/app.js from JSON embedded in the page,
and the same numbers are in a table (readable without JavaScript, and by tests)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from kilowatch.accounts.users import verify_password
from kilowatch.errors import ConfigError, Problem
from kilowatch.fleet.logs import LOG_LEVELS
from kilowatch.query.energy import Bucket, EnergyQuery
from kilowatch.query.tariff import parse_periods_text, periods_text
from kilowatch.store.audit import audited
from kilowatch.web.deps import (
    SESSION_COOKIE,
    Admin,
    State,
    Viewer,
    cookie_is_secure,
    current_principal,
    require_writer,
)
from kilowatch.web.energy import parse_instant, parse_tz, period_start, shift_period
from kilowatch.web.energyview import chart_data, energy_view
from kilowatch.web.site import change_site
from kilowatch.web.views import (
    device_json,
    devices_table,
    display_name,
    instant,
    label_changes,
    overview,
    top_level,
)

router = APIRouter(include_in_schema=False)

VIEW_GROUP = {"total": "total", "device": "device", "channel": "channel"}
STEP_OF = {"hour": "hour", "day": "day", "month": "month"}


def _render(request: Request, name: str, principal: Any, **context: Any) -> HTMLResponse:
    templates = request.app.state.templates
    response: HTMLResponse = templates.TemplateResponse(
        request, name, {"principal": principal, "site": request.app.state.web.site, **context}
    )
    return response


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would make the login an open redirect.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_form(
    request: Request, *, next: str, error: str | None, username: str = "", status: int = 200
) -> HTMLResponse:
    """The login page; ``username`` stays filled in after a failed attempt. The hint names the
    demo's login only when ``kilowatch demo`` serves the app (``app.state.login_hint``)."""
    hint = getattr(request.app.state, "login_hint", None)
    response = _render(
        request,
        "login.html",
        None,
        next=_safe_next(next),
        error=error,
        username=username,
        demo_login=hint,
    )
    response.status_code = status
    return response


@router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    if await current_principal(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_form(request, next=next, error=None)


@router.post("/login")
async def login(
    request: Request,
    state: State,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    origin = request.headers.get("origin")
    if (
        origin
        and origin != "null"
        and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}"
    ):
        raise Problem(403, f"cross-site login from {origin} refused", slug="csrf")
    client = request.client.host if request.client else "unknown"
    keys = (f"ip:{client}", f"user:{username}")
    wait = state.limiter.retry_after(*keys)
    if wait > 0:
        response = _login_form(
            request,
            next=next,
            error=f"Too many failed logins. Try again in {int(wait) + 1} seconds.",
            username=username,
            status=429,
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    role = await verify_password(state.store, username, password)
    if role is None:
        state.limiter.failed(*keys)
        return _login_form(
            request,
            next=next,
            error="Wrong user name or password.",
            username=username,
            status=401,
        )
    state.limiter.succeeded(f"user:{username}")
    session_id = await state.sessions.create(username)
    redirect = RedirectResponse(_safe_next(next), status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        secure=cookie_is_secure(request, state),
        samesite="strict",
        path="/",
        max_age=14 * 24 * 3600,
    )
    return redirect


@router.post("/logout")
async def logout(request: Request, state: State) -> Response:
    await require_writer(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await state.sessions.end(cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
async def overview_page(request: Request, state: State, principal: Viewer) -> Response:
    data = await overview(state.store, state.site, state.clock())
    return _render(request, "overview.html", principal, nav="overview", data=data)


def _nav_links(by: Bucket, start: datetime, params: dict[str, str]) -> dict[str, str]:
    def link(when: datetime, **over: str) -> str:
        return "/energy?" + urlencode({**params, "date": when.date().isoformat(), **over})

    return {
        "prev": link(shift_period(by, start, -1)),
        "next": link(shift_period(by, start, 1)),
        "hour": link(start, by="hour"),
        "day": link(start, by="day"),
        "month": link(start, by="month"),
    }


def csv_link(query: EnergyQuery) -> str:
    """``/api/v1/energy.csv`` with the parameters of what the page shows."""
    tz = parse_tz(query.tz)
    params: list[tuple[str, str]] = [
        ("by", query.by),
        ("tz", query.tz),
        ("from", query.start.astimezone(tz).date().isoformat()),
        ("to", query.end.astimezone(tz).date().isoformat()),
        ("group", query.group),
    ]
    params += [("device", d) for d in query.devices]
    params += [("channel", c) for c in query.channels]
    return "/api/v1/energy.csv?" + urlencode(params)


async def _energy_view(
    state: Any, *, by: str, day: str | None, devices: list[str], channels: list[str], view: str
) -> dict[str, Any]:
    if by not in STEP_OF:
        raise Problem(400, f"by={by!r}: choose hour, day or month", slug="invalid-parameter")
    if view not in VIEW_GROUP:
        raise Problem(
            400, f"view={view!r}: choose total, device or channel", slug="invalid-parameter"
        )
    bucket: Bucket = by  # type: ignore[assignment]
    tz = state.site.zone
    now_local = datetime.fromtimestamp(state.clock(), UTC).astimezone(tz)
    anchor = parse_instant("date", day, tz) if day else now_local
    start = period_start(bucket, anchor.astimezone(tz))
    end = shift_period(bucket, start, 1)
    query = EnergyQuery(
        by=bucket,
        tz=state.site.tz,
        start=start,
        end=end,
        devices=tuple(d for d in devices if d),
        channels=tuple(c for c in channels if c),
        group=VIEW_GROUP[view],  # type: ignore[arg-type]
    )
    records = await state.store.devices()
    names = {r.device: display_name(r) for r in records}
    shown = await energy_view(state.store, state.site, query, names)
    params = {"by": by, "view": view}
    if devices:
        params["device"] = ",".join(devices)
    if channels:
        params["channel"] = ",".join(channels)
    if by == "hour":
        title = f"{start.strftime('%A')} {start.day} {start.strftime('%B %Y')}"
    elif by == "day":
        title = start.strftime("%B %Y")
    else:
        title = start.strftime("%Y")
    return {
        "view_data": shown,
        "chart": shown.chart_json(),
        "title": title,
        "by": by,
        "view": view,
        "date": start.date().isoformat(),
        "links": _nav_links(bucket, start, params),
        "csv_url": csv_link(query),
        "records": records,
        "device_filter": ",".join(devices),
        "channel_filter": ",".join(channels),
        "currency": shown.currency,
        "has_tariff": state.site.has_tariff,
    }


@router.get("/energy")
async def energy_page(
    request: Request,
    state: State,
    principal: Viewer,
    by: str = "hour",
    date_: Annotated[str | None, Query(alias="date")] = None,
    device: str = "",
    channel: str = "",
    view: str = "total",
) -> Response:
    devices = [d.strip() for d in device.split(",") if d.strip()]
    channels = [c.strip() for c in channel.split(",") if c.strip()]
    ctx = await _energy_view(state, by=by, day=date_, devices=devices, channels=channels, view=view)
    return _render(request, "energy.html", principal, nav="energy", **ctx)


@router.get("/devices")
async def devices_page(request: Request, state: State, principal: Viewer) -> Response:
    rows = await devices_table(state.store, state.site, state.clock())
    return _render(request, "devices.html", principal, nav="devices", devices=rows)


DEVICE_PAGE_ITEMS = 50
"""Events and log lines the device page shows (the newest; the API has more)."""


@router.get("/devices/{device}")
async def device_page(
    request: Request,
    state: State,
    principal: Viewer,
    device: str,
    by: str = "hour",
    date_: Annotated[str | None, Query(alias="date")] = None,
) -> Response:
    rec = await state.store.device(device)
    if rec is None:
        raise Problem(404, f"no device {device!r}")
    latest = await state.store.latest(device)
    # The newest first; static/device.js then keeps both lists and the power chart current.
    events = await state.store.events(device, limit=DEVICE_PAGE_ITEMS)
    logs = await state.store.logs(device, limit=DEVICE_PAGE_ITEMS)
    ctx = await _energy_view(state, by=by, day=date_, devices=[device], channels=[], view="channel")
    ctx["links"] = {
        k: v.replace("/energy?", f"/devices/{device}?") for k, v in ctx["links"].items()
    }
    parents = {r.channel for r in top_level(latest)}
    return _render(
        request,
        "device.html",
        principal,
        nav="devices",
        device=device_json(rec, latest, None, state.clock()),
        rec=rec,
        latest=sorted(latest, key=lambda r: r.channel),
        parents=parents,
        events=events,
        logs=logs,
        log_levels=LOG_LEVELS,
        **ctx,
    )


@router.post("/devices/{device}")
async def device_rename(
    request: Request,
    state: State,
    principal: Admin,
    device: str,
    label: Annotated[str, Form(max_length=100)] = "",
    room: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    rec = await state.store.device(device)
    if rec is None:
        raise Problem(404, f"no device {device!r}")
    changed = label_changes(rec, label.strip(), room.strip())
    if changed:
        actor = principal.actor
        async with audited(
            state.store, actor, "device.rename", devices=[device], detail=changed
        ) as act:
            await state.store.set_device_label(device, label=label.strip(), room=room.strip())
            act.detail.update(changed)
    return RedirectResponse(f"/devices/{device}", status_code=303)


@router.get("/settings")
async def settings_page(request: Request, state: State, principal: Viewer) -> Response:
    return _render(
        request,
        "settings.html",
        principal,
        nav="settings",
        periods=periods_text(state.site.tariff),
        error=None,
        saved=request.query_params.get("saved") == "1",
    )


@router.post("/settings")
async def settings_save(
    request: Request,
    state: State,
    principal: Admin,
    tz: Annotated[str, Form(max_length=64)],
    currency: Annotated[str, Form(max_length=8)] = "EUR",
    price: Annotated[str, Form(max_length=32)] = "0",
    export_price: Annotated[str, Form(max_length=32)] = "0",
    periods: Annotated[str, Form(max_length=10_000)] = "",
    retention_days: Annotated[str, Form(max_length=16)] = "",
    grid_meters: Annotated[str, Form(max_length=5_000)] = "",
) -> Response:
    try:
        site = state.site.updated(
            {
                "tz": tz,
                "tariff": {
                    "currency": currency,
                    "price": price or "0",
                    "export_price": export_price or "0",
                    "periods": parse_periods_text(periods),
                },
                "retention_days": retention_days.strip() or None,
                "grid_meters": grid_meters,
            }
        )
    except ConfigError as err:
        response = _render(
            request,
            "settings.html",
            principal,
            nav="settings",
            periods=periods,
            error=str(err),
            saved=False,
        )
        response.status_code = 400
        return response
    await change_site(state.store, principal.actor, state.site, site)
    state.site = site
    return RedirectResponse("/settings?saved=1", status_code=303)


def _fmt_age(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    age = max(0.0, now - ts)
    if age < 90:
        return f"{int(age)} s ago"
    if age < 5400:
        return f"{int(age // 60)} min ago"
    if age < 172800:
        return f"{int(age // 3600)} h ago"
    return f"{int(age // 86400)} days ago"


def jinja_filters(clock: Any) -> dict[str, Any]:
    """Filters the templates use: energy with a sensible unit, power, money, age."""

    def energy(wh: float | None) -> str:
        if wh is None:
            return "–"
        if abs(wh) >= 10_000:
            return f"{wh / 1000:,.1f} kWh"
        if abs(wh) >= 1000:
            return f"{wh / 1000:,.2f} kWh"
        return f"{wh:,.0f} Wh"

    def power(w: float | None) -> str:
        if w is None:
            return "–"
        return f"{w / 1000:,.2f} kW" if abs(w) >= 10_000 else f"{w:,.1f} W"

    def money(value: float | None, currency: str = "") -> str:
        return "–" if value is None else f"{value:,.2f} {currency}".strip()

    def age(ts: float | None) -> str:
        return _fmt_age(instant(ts), clock())

    def when(ts: float | None, tz: str | None = None) -> str:
        """``ts`` as ``YYYY-MM-DD HH:MM:SS`` in the zone ``tz`` (its abbreviation after it), or
        in UTC; unknown (``–``) for what no datetime holds."""
        # stored times come from devices' clocks: render what no datetime holds as unknown
        at = instant(ts)
        if at is None:
            return "–"
        moment = datetime.fromtimestamp(at, UTC)
        if tz is not None:
            with contextlib.suppress(OverflowError, ValueError):  # the years 1 and 9999: UTC
                local = moment.astimezone(ZoneInfo(tz))
                return f"{local.isoformat(' ', 'seconds')[:19]} {local.tzname()}"
        # isoformat: strftime's %Y writes the year 1 as "1" (glibc)
        return moment.isoformat(" ", "seconds")[:19] + " UTC"

    def num(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    return {"energy": energy, "power": power, "money": money, "age": age, "when": when, "num": num}


__all__ = ["chart_data", "jinja_filters", "router"]
