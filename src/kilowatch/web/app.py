"""The web application: ``create_app`` builds it; ``serve_web`` runs it in a TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from kilowatch import __version__
from kilowatch.accounts.sessions import LoginLimiter, SessionManager
from kilowatch.accounts.users import ensure_admin
from kilowatch.errors import ConfigError
from kilowatch.intake.live import LiveHub
from kilowatch.intake.stats import IngestHealth
from kilowatch.service.server import Running, ingest_metrics
from kilowatch.store.protocol import Store
from kilowatch.web import alertpages, api, devicedata, fleetpages, openapi, pages, problems
from kilowatch.web.deps import WebState, require_viewer
from kilowatch.web.metrics import CONTENT_TYPE, render
from kilowatch.web.site import load_site, zone
from kilowatch.web.views import is_online

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SHUTDOWN_GRACE_S = 3
"""Seconds uvicorn waits for open requests (live streams end within a second) at shutdown."""

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _print_admin_password(password: str) -> None:
    # Printed once, on purpose to the terminal and not only to a log file that may be shared.
    print(
        "kilowatch: created user 'admin' with password "
        f"{password}  (shown once; change it with: kilowatch user add admin)",
        file=sys.stderr,
        flush=True,
    )


def create_app(
    store: Store,
    *,
    live: LiveHub,
    site_tz: str = "UTC",
    cookie_secure: bool | None = None,
    ingest_stats: Callable[[], Mapping[str, float]] | None = None,
    ingest_health: Callable[[], IngestHealth] | None = None,
    clock: Callable[[], float] = time.time,
    on_admin_created: Callable[[str], None] = _print_admin_password,
    running: Running | None = None,
) -> FastAPI:
    """The dashboard and ``/api/v1`` over an open ``store``.

    ``site_tz`` is the default site time zone until a user changes it in Settings; ``cookie_secure``
    forces the session cookie's Secure flag (default: on for HTTPS and loopback); ``ingest_stats``
    returns counters for ``/metrics``; ``ingest_health`` the ingest's health for ``/metrics`` and
    ``/api/v1/health``; ``on_admin_created`` receives the first admin's password; ``running``:
    the service it runs in (fleet actions and alerts need it).
    """
    zone(site_tz)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(pages.jinja_filters(clock))
    templates.env.globals["version"] = __version__
    state = WebState(
        store=store,
        live=live,
        sessions=SessionManager(store, clock=clock),
        limiter=LoginLimiter(),
        templates=templates,
        default_tz=site_tz,
        clock=clock,
        cookie_secure=cookie_secure,
        ingest_stats=ingest_stats,
        ingest_health=ingest_health,
        running=running,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.site = await load_site(store, default_tz=site_tz)
        await store.use_local_zone(state.site.tz)  # see save_site
        password = await ensure_admin(store, now=clock())
        if password is not None:
            on_admin_created(password)
        # Everything alive now (modules, the app, the store) lives as long as the process: keep
        # it out of the cyclic collector's full passes, which otherwise walk all of it every few
        # big responses (a year of hours allocates ~40 000 objects) and added 50-70 ms to about
        # one request in six of bench/query.py.
        gc.freeze()
        try:
            yield
        finally:
            app.state.stopping.set()
            gc.unfreeze()  # back to the collector: another app may start in this process (tests)

    app = FastAPI(
        title="kilowatch",
        version=__version__,
        summary="Energy per local hour, day and month; devices; live readings; settings.",
        openapi_url=None,  # served below, behind the login like everything but health
        docs_url=None,  # Swagger UI would load from a CDN: the page must work offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.web = state
    app.state.templates = templates
    app.state.stopping = asyncio.Event()
    problems.install(app)
    openapi.install(app)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(devicedata.router)
    app.include_router(fleetpages.router)
    app.include_router(alertpages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get(
        "/metrics",
        include_in_schema=True,
        tags=["metrics"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **openapi.READ,
        },
    )
    async def metrics(request: Request) -> Response:
        await require_viewer(request)
        readings = await store.latest()
        devices = await store.devices()
        now = clock()
        text = render(
            readings=readings,
            devices=devices,
            online={d.device: is_online(d, now) for d in devices},
            dead_letters=await store.dead_letter_counts(),
            ingest=ingest_stats() if ingest_stats else {},
            live_subscribers=live.subscribers,
            health=ingest_health() if ingest_health else None,
        )
        return Response(text, media_type=CONTENT_TYPE)

    @app.get("/api/v1/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request) -> Response:
        await require_viewer(request)
        return api.JSONResponse(app.openapi())

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], object]
    ) -> Response:
        response: Response = await call_next(request)  # type: ignore[misc]
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; bound here rather than in uvicorn, which calls
    ``sys.exit()`` when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"the web app cannot listen on {host}:{port} ({err.strerror}); "
            "pass another --http-port, or stop what is using it"
        ) from err
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: ``kilowatch serve`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_web(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    started: asyncio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``app`` until cancelled, then shut down cleanly (open requests get a short grace).

    Run it as a task of the caller's TaskGroup. ``port=0`` picks a free port; once listening,
    ``app.state.port`` holds the real one and ``started`` (if given) is set. A port in use raises
    :class:`~kilowatch.errors.ConfigError` at once. ``sock``: an already bound, listening socket
    (``host``/``port`` are then only used in the log line).
    """
    if sock is None:
        sock = bind(host, port)
    app.state.port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,  # the process owner configures logging
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        proxy_headers=False,
        server_header=False,
    )
    server = _Server(config)

    async def watch_started() -> None:
        while not server.started:
            if serving.done():
                return
            await asyncio.sleep(0.01)
        log.info("web app listening on http://%s:%s", host, app.state.port)
        if started is not None:
            started.set()

    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    watcher = asyncio.ensure_future(watch_started())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        app.state.stopping.set()
        server.should_exit = True
        await serving
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        sock.close()
    if not server.started:
        raise ConfigError("the web app did not start (see the log above: its startup failed)")


async def start_web(
    tg: asyncio.TaskGroup,
    running: Running,
    stop: asyncio.Event,
    *,
    login_hint: tuple[str, str] | None = None,
) -> int:
    """Serve ``kilowatch.web`` on ``http_host:http_port`` as a task of ``tg``: the web starter that
    ``kilowatch serve`` hands to :func:`kilowatch.service.server.serve`.

    The web app gets the open store, the LiveHub, the site time zone and the ingest counters; it is
    cancelled when ``stop`` is set, before the store closes. A port in use raises ``ConfigError``.
    ``login_hint``: a user and password the login page tells (the demo's). Returns the port it
    listens on.
    """
    settings = running.settings
    sock = bind(settings.http_host, settings.http_port)
    stats = running.stats
    app = create_app(
        running.store,
        live=running.hub,
        site_tz=settings.tz,
        ingest_stats=lambda: ingest_metrics(
            stats, running.poll, running.repair, alerts=running.alerts
        ),
        ingest_health=running.health,
        running=running,
    )
    app.state.login_hint = login_hint
    web = tg.create_task(
        serve_web(app, settings.http_host, settings.http_port, sock=sock), name="web"
    )

    async def stop_web() -> None:
        await stop.wait()
        web.cancel()

    tg.create_task(stop_web(), name="web-stop")
    port: int = sock.getsockname()[1]
    log.info("web app listening url=http://%s:%d", settings.http_host, port)
    return port


__all__ = ["bind", "create_app", "serve_web", "start_web"]
