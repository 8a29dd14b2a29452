"""The device page in a real headless Chromium (Debian's), real server and SQLite store: the
24-hour power chart of minute means, the events and debug log newest first, a line stored after
the page loaded appearing without a reload, and a phone-sized screen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from browserkit import ServerThread, chromium, log_in
from webseed import EM, NOW, PLUG

from kilowatch.model.messages import Event, LogLine
from kilowatch.store import Batch, open_store
from kilowatch.store.protocol import PowerMinute

pytestmark = pytest.mark.browser

END = (int(NOW) // 60 + 1) * 60
START = END - 24 * 3600
DAY = 24 * 60
LONG = "x" * 400
"""A log line without a space to break at: it must wrap, not widen the page."""


def watts(i: int) -> float:
    return round(50.0 + (i % 120) * 2.5, 1)


def seed_batch() -> Batch:
    power = [PowerMinute(PLUG, "switch:0", START + 60 * i, watts(i), 6) for i in range(DAY)]
    logs = [
        LogLine(PLUG, NOW - 60 + i, f"line {i}", level=2, seq=i, source="mg_rpc.c:314")
        for i in range(30)
    ]
    logs.insert(10, LogLine(PLUG, NOW - 55, f"long {LONG}", level=1, seq=99))
    for i in range(DAY - 5, DAY):  # the 3-phase meter: its whole and its phases
        minute = START + 60 * i
        power.append(PowerMinute(EM, "em:0", minute, 600.0))
        power += [PowerMinute(EM, f"em:0/{p}", minute, w) for p, w in (("a", 100.0),
                  ("b", 200.0), ("c", 300.0))]  # fmt: skip
    events = [Event(PLUG, NOW - 20, "sys", "ota_progress", {"progress_percent": 40})]
    return Batch(power=power, logs=logs, events=events)


async def _commit(db: Path, batch: Batch) -> None:
    async with open_store(f"sqlite:///{db}") as store:
        await store.commit(batch)


def commit(db: Path, batch: Batch) -> None:
    """Store ``batch`` as the intake would, from a connection of its own (in a thread: this one
    runs Playwright's event loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _commit(db, batch)).result()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("device-page") / "web.db")
    srv.start()
    # after the known data, so the page's newest event is this one
    commit(srv.db, seed_batch())
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def context(server: ServerThread) -> Iterator[Any]:
    with chromium(server.url) as ctx:
        pg = ctx.new_page()
        log_in(pg, server.url)
        pg.close()
        yield ctx


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    pg.close()
    assert errors == []


def texts(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def test_power_chart_has_24_hours_of_minutes(server: ServerThread, page: Any) -> None:
    page.goto(f"{server.url}/devices/{PLUG}")
    page.wait_for_selector("#power-chart[data-drawn]")
    canvas = page.locator("#power-chart")
    assert canvas.get_attribute("data-minutes") == str(DAY)
    assert canvas.get_attribute("data-start") == str(START)
    assert canvas.get_attribute("data-step") == "60"
    assert json.loads(canvas.get_attribute("data-total") or "null") == [
        watts(i) for i in range(DAY)
    ]
    drawn = page.evaluate(
        """() => { const c = Chart.getChart('power-chart');
                   return {labels: c.data.labels.length, type: c.config.type,
                           sets: c.data.datasets.map(d => [d.label, d.data.length]),
                           last: c.data.datasets[0].data[c.data.datasets[0].data.length - 1]}; }"""
    )
    assert drawn == {
        "labels": DAY,
        "type": "line",
        "sets": [["Total", DAY]],
        "last": watts(DAY - 1),
    }
    assert page.inner_text("#fw-version") == "1.4.4"
    assert "1.5.0 available" in page.inner_text("#fw-update")

    # a meter's total and its phases, not its whole again (the total is that line)
    page.goto(f"{server.url}/devices/{EM}")
    page.wait_for_selector("#power-chart[data-drawn]")
    lines = page.evaluate(
        """() => Chart.getChart('power-chart').data.datasets.map(
                   d => [d.label, d.data.filter(v => v !== null)])"""
    )
    assert lines == [["Total", [600.0] * 5], ["em:0/a", [100.0] * 5], ["em:0/b", [200.0] * 5],
                     ["em:0/c", [300.0] * 5]]  # fmt: skip
    assert page.inner_text("#fw-update") == "none offered"


def test_logs_and_events_newest_first_and_live(server: ServerThread, page: Any) -> None:
    page.goto(f"{server.url}/devices/{PLUG}")
    page.wait_for_selector("#journal-state[data-state='live']")
    page.wait_for_selector("#log-list[data-count]")  # the stream's first lines replaced the page's
    messages = texts(page, "#log-list li .msg")
    assert messages[:3] == ["line 29", "line 28", "line 27"] and len(messages) == 31
    assert texts(page, "#log-list li .lvl")[0] == "info"
    assert texts(page, "#log-list li .src")[0] == "mg_rpc.c:314"
    events = texts(page, "#event-list li .ev")
    assert events == ["ota_progress", "config_changed"]

    # stored after the page loaded: on top without a reload, each once
    commit(
        server.db,
        Batch(
            logs=[LogLine(PLUG, NOW + 1, "line 29", level=2), LogLine(PLUG, NOW + 2, "fresh")],
            events=[Event(PLUG, NOW + 2, "sys", "ota_success")],
        ),
    )
    page.wait_for_function(
        "document.querySelector('#log-list li .msg').textContent === 'fresh'"
        " && document.querySelector('#event-list li .ev').textContent === 'ota_success'"
    )
    messages = texts(page, "#log-list li .msg")
    assert messages[:4] == ["fresh", "line 29", "line 29", "line 28"] and len(messages) == 33
    assert texts(page, "#event-list li .ev") == ["ota_success", "ota_progress", "config_changed"]
    assert page.locator("#log-empty").is_hidden()


def test_phone_screen_no_sideways_scroll_and_long_lines_wrap(
    server: ServerThread, page: Any
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/devices/{PLUG}")
    page.wait_for_selector("#power-chart[data-drawn]")
    page.wait_for_selector("#log-list[data-count]")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the device page is {overflow}px wider than a phone screen"
    long = page.locator("#log-list li", has_text="long xxx").first
    box = long.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert box["height"] > 40, "the long line wraps onto several lines"
    chart = page.locator("#power-chart").bounding_box()
    assert chart is not None and chart["width"] <= 390
