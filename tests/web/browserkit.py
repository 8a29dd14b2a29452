"""What the browser tests share: Debian's headless Chromium (never a downloaded one) kept to the
server under test, the web app served from a thread of its own, and the admin's login.

Imported by the ``test_*_browser.py`` files (conftest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from webseed import ADMIN, NOW, TZ, known_batch, users_meta

from kilowatch.accounts.users import USERS_KEY
from kilowatch.intake.live import LiveHub
from kilowatch.model.messages import Reading
from kilowatch.store import Store, open_store
from kilowatch.web import create_app, serve_web

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


class LoopThread:
    """:meth:`main` run in a thread with its own event loop; :meth:`start` returns once it set
    ``ready`` (having set ``port``), or raises what it raised."""

    WHAT = "the web server"
    START_S = 30.0

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def main(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.main())
        except BaseException as err:  # reported to the test thread
            self.error = err
            self.ready.set()

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(self.START_S), f"{self.WHAT} did not start"
        if self.error:
            raise self.error

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ServerThread(LoopThread):
    """The web app (a SQLite store at ``db`` holding the known data and users) on a free port, in
    a thread with its own event loop. :meth:`publish` feeds its LiveHub and :meth:`run` runs a
    coroutine on its store, both from the test's thread."""

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db
        self.hub = LiveHub()
        self.store: Store | None = None
        self._task: asyncio.Task[None] | None = None

    async def main(self) -> None:
        async with open_store(f"sqlite:///{self.db}") as store:
            await store.commit(known_batch())
            await store.put_meta(USERS_KEY, users_meta())
            self.store = store
            app = create_app(store, live=self.hub, site_tz=TZ, clock=lambda: NOW)
            started = asyncio.Event()
            self._task = asyncio.ensure_future(serve_web(app, "127.0.0.1", 0, started=started))
            await started.wait()
            self.port = app.state.port
            self.ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def publish(self, readings: list[Reading]) -> None:
        self.loop.call_soon_threadsafe(self.hub.publish, readings)

    def run(self, work: Callable[[Store], Awaitable[Any]]) -> Any:
        assert self.store is not None
        return asyncio.run_coroutine_threadsafe(work(self.store), self.loop).result(15)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        self.join(15)


@contextlib.contextmanager
def chromium(base_url: str, timeout_ms: int = TIMEOUT_MS) -> Iterator[Any]:
    """A Playwright browser context of Debian's headless Chromium, 1280×900, whose pages wait
    ``timeout_ms`` at most and reach nothing but ``base_url``; skips the test when Chromium is
    not installed."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # Playwright's wait_for_function polls by evaluating its predicate text in the page, which
        # the app's CSP (script-src 'self', no unsafe-eval) refuses whenever polling is needed; the
        # CSP header itself, and that the pages' scripts are static files, the API tests check.
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        context.set_default_timeout(timeout_ms)
        # Fail on any request that leaves the machine: the pages must work offline.
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith(base_url) else route.abort()
            ),
        )
        try:
            yield context
        finally:
            with contextlib.suppress(Exception):  # a page still busy must not fail the teardown
                browser.close()


def submit_login(page: Any) -> None:
    """Fill the login form the page shows with the admin's name and password and send it."""
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("button[type=submit]")


def log_in(page: Any, base_url: str) -> None:
    """Log in as the admin, landing on the dashboard, unless the page's context already is."""
    page.goto(base_url + "/login")
    if "/login" not in page.url:
        return
    submit_login(page)
    page.wait_for_url(base_url + "/")
