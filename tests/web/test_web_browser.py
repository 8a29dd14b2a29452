"""The dashboard in a real headless Chromium (Debian's, never a downloaded one), real server.

The server (uvicorn + the app + a SQLite store) runs in its own thread and event loop, on a free
port; the test publishes live readings into its LiveHub through that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webseed import ADMIN, EM, NOW, PLUG, TZ, known_batch, users_meta

from kilowatch.accounts.users import USERS_KEY
from kilowatch.intake.live import LiveHub
from kilowatch.model.messages import Reading
from kilowatch.store import open_store
from kilowatch.web import create_app, serve_web

pytestmark = pytest.mark.browser

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


class ServerThread:
    """The web app on a free port, in a thread with its own event loop."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.hub = LiveHub()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as err:  # reported to the test thread
            self.error = err
            self.ready.set()

    async def _main(self) -> None:
        async with open_store(f"sqlite:///{self.db}") as store:
            await store.commit(known_batch())
            await store.put_meta(USERS_KEY, users_meta())
            app = create_app(store, live=self.hub, site_tz=TZ, clock=lambda: NOW)
            started = asyncio.Event()
            self._task = asyncio.ensure_future(serve_web(app, "127.0.0.1", 0, started=started))
            await started.wait()
            self.port = app.state.port
            self.ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(30), "the web server did not start"
        if self.error:
            raise self.error

    def publish(self, readings: list[Reading]) -> None:
        self.loop.call_soon_threadsafe(self.hub.publish, readings)

    def stop(self) -> None:
        if self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("browser") / "web.db")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: ServerThread) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # Playwright's wait_for_function polls by evaluating its predicate text in the page, which
        # the app's CSP (script-src 'self', no unsafe-eval) refuses whenever polling is needed; the
        # CSP header itself is checked by the API tests.
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        # Fail on any request that leaves the machine: the dashboard must work offline.
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith(server.url) else route.abort()
            ),
        )
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        yield pg
        browser.close()


def bars(page: Any) -> dict[str, list[Any]]:
    canvas = page.locator("#energy-chart")
    page.wait_for_function("document.getElementById('energy-chart').dataset.drawn !== undefined")
    return {
        key: json.loads(canvas.get_attribute(f"data-{key}") or "null")
        for key in ("labels", "import", "export", "estimated")
    }


def test_dashboard_end_to_end(server: ServerThread, page: Any) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # Not logged in: every page leads to the login form, which leads back.
    page.goto(server.url + "/energy")
    assert "/login" in page.url
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("button[type=submit]")
    page.wait_for_url("**/energy")

    # Today by hour (the injected clock: 15 March 2026, Europe/Berlin).
    day = bars(page)
    assert len(day["labels"]) == 24
    assert day["import"] == [160.0 + 10 * h if h < 12 else 0.0 for h in range(24)]
    assert day["export"] == [7.0 if h < 12 else 0.0 for h in range(24)]
    assert day["estimated"] == [h == 5 for h in range(24)]
    assert page.locator("#energy-chart").get_attribute("data-drawn") == "24", "Chart.js drew it"
    assert "15 March 2026" in page.inner_text("#period-title")
    # Hovering a bar shows its exact value (Chart.js' tooltip).
    tooltip = hover_bar(page, 3)
    assert any("190.0 Wh" in line for line in tooltip), tooltip

    page.click("#by-day")
    page.wait_for_url("**by=day**")
    month = bars(page)
    assert len(month["labels"]) == 31
    assert month["import"][13] == 240.0 and month["import"][14] == 2580.0
    assert sum(month["import"]) == 2820.0

    page.click("#by-month")
    page.wait_for_url("**by=month**")
    year = bars(page)
    assert year["labels"][:3] == ["Jan", "Feb", "Mar"]
    assert year["import"][:4] == [0.0, 1000.0, 2820.0, 0.0]
    page.click("#prev")
    page.wait_for_url("**date=2025-01-01**")
    assert sum(bars(page)["import"]) == 0.0

    # Devices: search, then open the three-phase meter.
    page.goto(server.url + "/devices")
    page.fill("#device-search", "main panel")
    assert page.locator("#devices-table tbody tr:visible").count() == 1
    page.click(f"a[href='/devices/{EM}']")
    page.wait_for_url(f"**/devices/{EM}")
    phase_a = page.locator("#live-table tr[data-channel='em:0/a'] [data-field='power_w']")
    assert phase_a.inner_text() == "100.0"
    page.wait_for_selector("#live-state[data-state='live']")
    server.publish([Reading(EM, "em:0/a", NOW + 1, power_w=4321.5, voltage_v=228.4)])
    page.wait_for_function(
        "document.querySelector(\"#live-table tr[data-channel='em:0/a'] [data-field='power_w']\")"
        ".textContent === '4321.5'"
    )
    assert (
        page.locator("#live-table tr[data-channel='em:0/a'] [data-field='voltage_v']").inner_text()
        == "228.4"
    )
    server.publish([Reading(EM, "em:0", NOW + 1, power_w=4921.5)])
    page.wait_for_function("document.getElementById('device-power').dataset.powerW === '4921.5'")
    device_chart = bars(page)
    assert device_chart["import"][:12] == [60.0] * 12

    # Log out: the session is gone.
    page.click("#logout")
    page.wait_for_url("**/login")
    page.goto(server.url + "/")
    assert "/login" in page.url
    assert errors == []


def hover_bar(page: Any, index: int) -> list[str]:
    box = page.evaluate(
        """(i) => { const c = Chart.getChart('energy-chart');
                    const el = c.getDatasetMeta(0).data[i];
                    const r = c.canvas.getBoundingClientRect();
                    return {x: r.left + el.x, y: r.top + (el.y + el.base) / 2}; }""",
        index,
    )
    page.mouse.move(box["x"], box["y"])
    page.wait_for_function("Chart.getChart('energy-chart').tooltip.opacity > 0")
    lines: list[str] = page.evaluate(
        """() => { const t = Chart.getChart('energy-chart').tooltip;
                   return t.body.flatMap(b => b.lines).concat(t.footer); }"""
    )
    return lines


def test_phone_layout_has_no_horizontal_scroll(server: ServerThread, page: Any) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server.url + "/login")
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")
    for path in ("/", "/energy", f"/devices/{PLUG}", "/settings"):
        page.goto(server.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} is {overflow}px wider than a phone screen"
