"""The dashboard in a real headless Chromium (Debian's, never a downloaded one), real server.

The server (uvicorn + the app + a SQLite store) runs in its own thread and event loop, on a free
port; the test publishes live readings into its LiveHub through that loop.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browserkit import ServerThread, chromium, log_in, submit_login
from webseed import ADMIN, EM, NOW, PLUG

from kilowatch.model.messages import Reading

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("browser") / "web.db")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: ServerThread) -> Iterator[Any]:
    with chromium(server.url) as context:
        yield context.new_page()


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
    submit_login(page)
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
    log_in(page, server.url)
    for path in ("/", "/energy", f"/devices/{PLUG}", "/settings"):
        page.goto(server.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} is {overflow}px wider than a phone screen"


def downloaded_csv(page: Any) -> tuple[str, list[dict[str, str]]]:
    """Click the page's "Download CSV"; the file's name and rows."""
    with page.expect_download() as info:
        page.click("#csv-download")
    download = info.value
    text = Path(download.path()).read_text(encoding="utf-8")
    return download.suggested_filename, list(csv.DictReader(io.StringIO(text)))


def table_rows(page: Any) -> list[dict[str, str]]:
    """The data attributes of the Energy table's rows: what the page shows per bucket."""
    rows: list[dict[str, str]] = page.evaluate(
        """() => Array.from(document.querySelectorAll('#energy-table tbody tr'))
                  .map(tr => ({...tr.dataset}))"""
    )
    return rows


def test_csv_download_is_what_the_page_shows(server: ServerThread, page: Any) -> None:
    log_in(page, server.url)
    page.goto(server.url + "/energy?by=hour&date=2026-03-15&view=device")
    name, rows = downloaded_csv(page)
    assert name == "kilowatch-energy-2026-03-15-hour-device.csv"
    shown = table_rows(page)
    assert len(rows) == len(shown) == 24
    for row, tr in zip(rows, shown, strict=True):
        assert row["start"] == tr["start"]  # local time with its offset: 2026-03-15T03:00:00+01:00
        assert float(row["import_wh"]) == float(tr["importWh"])
        assert float(row["export_wh"]) == float(tr["exportWh"])
        assert row["estimated"] == tr["estimated"]
    assert rows[3]["Kettle plug import_wh"] == "130.000"
    assert "cost" not in ",".join(rows[0])  # no tariff: no cost column
    # the JSON route, asked the same question, has the same totals
    body = page.request.get(
        server.url + "/api/v1/energy?by=hour&from=2026-03-15&to=2026-03-16&group=total"
    ).json()
    json_rows = {r["start"]: r["energy_wh"] for r in body["rows"]}
    assert [float(r["import_wh"]) for r in rows] == [json_rows.get(r["start"], 0.0) for r in rows]

    # the month: its tooltips name the day, not just its number
    page.goto(server.url + "/energy?by=day&date=2026-03-15&view=total")
    title = hover_title(page, 13)
    assert title == "Sat 14 Mar", title
    name, rows = downloaded_csv(page)
    assert name == "kilowatch-energy-2026-03-01-day-total.csv"
    assert len(rows) == 31 and rows[13]["start"] == "2026-03-14T00:00:00+01:00"
    assert float(rows[13]["import_wh"]) == 240.0


def hover_title(page: Any, index: int) -> str:
    hover_bar(page, index)
    title: list[str] = page.evaluate("() => Chart.getChart('energy-chart').tooltip.title")
    return " ".join(title)


def test_grid_meter_shows_untracked_energy(server: ServerThread, page: Any) -> None:
    log_in(page, server.url)

    def set_grid_meters(value: str) -> None:
        page.goto(server.url + "/settings")
        page.fill("input[name=grid_meters]", value)
        page.click("#settings-form button[type=submit]")
        page.wait_for_url("**/settings?saved=1")

    set_grid_meters(EM)
    try:
        page.goto(server.url + "/energy?by=hour&date=2026-03-15&view=device")
        canvas = page.locator("#energy-chart")
        bars(page)
        assert json.loads(canvas.get_attribute("data-series") or "[]") == [
            "Kettle plug", "Untracked"
        ]  # fmt: skip
        untracked = json.loads(canvas.get_attribute("data-untracked") or "null")
        # the grid meter's 60 - 7 Wh net, minus the plug's 100 + 10 h (not behind it in the seed)
        assert untracked[:12] == [53.0 - (100 + 10 * h) for h in range(12)]
        assert page.locator("#grid-note").is_visible()
        assert "Untracked" in page.inner_text("#untracked-total")
        _, rows = downloaded_csv(page)
        assert [float(r["untracked_wh"]) for r in rows] == untracked
        assert [float(r["import_wh"]) for r in rows[:12]] == [60.0] * 12  # the grid meter's
    finally:
        set_grid_meters("")


def test_phone_tables_show_their_key_columns(server: ServerThread, page: Any) -> None:
    log_in(page, server.url)
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        checks = {
            "/": ["#no-tariff"],
            "/energy?by=hour&date=2026-03-15&view=device": ["#energy-table th:text('Import')",
                                                            "#energy-table th:text('Export')"],
            "/devices": ["#devices-table th:text('Name')", "#devices-table th:text('State')",
                         "#devices-table th:text('Power now')", "#devices-table th:text('Today')"],
        }  # fmt: skip
        for path, selectors in checks.items():
            page.goto(server.url + path)
            if page.locator("details.data").count():
                page.click("details.data summary")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than a phone screen"
            for selector in selectors:
                box = page.locator(selector).first.bounding_box()
                assert box is not None and box["width"] > 0, (path, selector)
                assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (path, selector, box)
            # nothing inside a table needs sideways scrolling either
            wide = page.evaluate(
                """() => Array.from(document.querySelectorAll('table'))
                      .filter(t => t.scrollWidth > t.parentElement.clientWidth + 1).length"""
            )
            assert wide == 0, path
        # the overview says nothing about cost without a tariff (no "cost 0.00 EUR")
        page.goto(server.url + "/")
        assert "cost" not in page.inner_text(".tiles").lower()
        assert "0.00" not in page.inner_text(".tiles")
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_wrong_password_keeps_the_user_name(server: ServerThread, page: Any) -> None:
    page.context.clear_cookies()
    page.goto(server.url + "/login")
    assert "demo" not in page.inner_text("#login-hint").lower()
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    page.wait_for_selector(".error")
    assert page.input_value("input[name=username]") == ADMIN[0]
    assert page.input_value("input[name=password]") == ""
    # the password field has the focus: type it and go
    page.keyboard.type(ADMIN[1])
    page.keyboard.press("Enter")
    page.wait_for_url(server.url + "/")
