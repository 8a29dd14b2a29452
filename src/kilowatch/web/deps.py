"""Request dependencies: the app's shared state, who is asking, and what they may do."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from kilowatch.accounts.sessions import LoginLimiter, SessionManager
from kilowatch.accounts.tokens import verify_token
from kilowatch.accounts.users import Principal
from kilowatch.errors import Problem
from kilowatch.intake.live import LiveHub
from kilowatch.intake.stats import IngestHealth
from kilowatch.service.server import Running
from kilowatch.store.protocol import Store
from kilowatch.web.site import SiteSettings

SESSION_COOKIE = "kilowatch_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class WebState:
    """Everything the routes share, held on ``app.state.web``."""

    store: Store
    live: LiveHub
    sessions: SessionManager
    limiter: LoginLimiter
    templates: Jinja2Templates
    default_tz: str
    clock: Callable[[], float]
    cookie_secure: bool | None
    """``None``: Secure when the request came over HTTPS or to a loopback address (browsers accept
    Secure cookies on http://localhost), so plain-HTTP access from the LAN still works."""
    ingest_stats: Callable[[], Mapping[str, float]] | None
    site: SiteSettings = field(default_factory=SiteSettings)
    ingest_health: Callable[[], IngestHealth] | None = None
    """The service's ingest health (``/api/v1/health``, ``/metrics``); ``None``: no ingest runs."""
    running: Running | None = None
    """The running service (settings, data dir, broker, alerts) when the app runs inside
    ``kilowatch serve``; ``None`` in tests of the web app alone (fleet actions then refuse)."""


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def cookie_is_secure(request: Request, state: WebState) -> bool:
    if state.cookie_secure is not None:
        return state.cookie_secure
    if request.url.scheme == "https":
        return True
    host = request.url.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def current_principal(request: Request) -> Principal | None:
    """The caller: a Bearer token, else the session cookie, else ``None``."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    state = web_state(request)
    principal: Principal | None = None
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            raise Problem(
                401,
                "Authorization must be 'Bearer <token>' (create one with kilowatch token create)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = await verify_token(state.store, credentials.strip())
        if principal is None:
            raise Problem(
                401, "the API token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
            )
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = await state.sessions.resolve(cookie)
    request.state.principal = principal
    return principal


async def require_viewer(request: Request) -> Principal:
    principal = await current_principal(request)
    if principal is None:
        raise Problem(
            401,
            "log in at /login, or send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


async def check_csrf(request: Request, principal: Principal) -> None:
    """Writes made with a session cookie must echo the session's CSRF token (header or form field)
    and, when the browser sends an Origin, come from this site. Bearer tokens are never sent by a
    browser on its own, so they need neither."""
    if principal.via != "session" or request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin and origin != "null":
        expected = f"{request.url.scheme}://{request.url.netloc}"
        if origin.rstrip("/") != expected:
            raise Problem(403, f"cross-site request from {origin} refused", slug="csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or principal.csrf is None or not hmac.compare_digest(sent, principal.csrf):
        raise Problem(
            403, "missing or wrong CSRF token; reload the page and try again", slug="csrf"
        )


async def require_admin(request: Request) -> Principal:
    principal = await require_viewer(request)
    if not principal.is_admin:
        raise Problem(
            403, f"user {principal.user!r} is a viewer; this needs the admin role", slug="forbidden"
        )
    await check_csrf(request, principal)
    return principal


async def require_writer(request: Request) -> Principal:
    """Any logged-in user writing something of their own (e.g. logging out): CSRF only."""
    principal = await require_viewer(request)
    await check_csrf(request, principal)
    return principal


Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]
State = Annotated[WebState, Depends(web_state)]

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Admin",
    "State",
    "Viewer",
    "WebState",
    "cookie_is_secure",
    "current_principal",
    "require_admin",
    "require_viewer",
    "require_writer",
    "web_state",
]
