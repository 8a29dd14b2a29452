"""The Fleet page in a real headless Chromium (Debian's), on the real service: ``kilowatch serve``
with its managed mosquitto and the web app, simulated meters registered in its store, run in a
thread with its own event loop. An admin plans and applies a profile and follows the job live;
the audit log shows the apply; at 390 px the key columns fit without sideways scrolling."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browserkit import LoopThread, chromium, log_in
from webseed import ADMIN, LAB_PROFILE, users_meta

from kilowatch.accounts.users import USERS_KEY
from kilowatch.broker.mosquitto import find_mosquitto
from kilowatch.service.server import Running
from kilowatch.store import open_store
from kilowatch.store.protocol import Registration
from kilowatch.testing.service import running_service, service_settings
from kilowatch.web.app import start_web

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto 2.x is not installed"),
]

TIMEOUT_MS = 30_000
HOST = "127.0.93.2"
DEVICES = 3


class ServiceThread(LoopThread):
    """kilowatch serve (SQLite, managed mosquitto, the web app on a free port) and a simulated
    fleet registered in its store, in a thread with its own event loop."""

    WHAT = "the service"
    START_S = 60.0

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.tmp = tmp
        self.devices: list[Any] = []
        self._stop: asyncio.Event | None = None

    async def main(self) -> None:
        from shellysim import Fleet

        self._stop = asyncio.Event()
        settings = service_settings(self.tmp, http_host="127.0.0.1", http_port=0)
        profiles = Path(settings.data_dir) / "profiles"
        profiles.mkdir(parents=True)
        (profiles / "lab.toml").write_text(LAB_PROFILE)
        async with open_store(settings.store_url) as store:  # users before the app's first start
            await store.put_meta(USERS_KEY, users_meta())

        async def web(tg: asyncio.TaskGroup, running: Running, stop: asyncio.Event) -> None:
            self.port = await start_web(tg, running, stop)

        async with (
            running_service(settings, web=web) as running,
            Fleet(devices=DEVICES, models=["pm1", "switch"], http_host=HOST, tick_s=0.05) as fleet,
        ):
            self.devices = list(fleet.devices)
            await running.store.register([
                Registration(device=d.id, mac=d.mac, model=d.spec.model, gen=d.spec.gen,
                             fw_ver=d.ver, transport="lan", address=f"{HOST}:{fleet.port(d)}",
                             name=f"Lab meter {i}", room="lab")
                for i, d in enumerate(fleet.devices)
            ])  # fmt: skip
            self.ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.join(30)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    srv = ServiceThread(tmp_path_factory.mktemp("fleet-browser"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(service: ServiceThread) -> Iterator[Any]:
    with chromium(service.url, TIMEOUT_MS) as context:
        pg = context.new_page()
        log_in(pg, service.url)
        yield pg


WATCH_STATES = """() => {
  window.seenStates = [];
  const el = document.getElementById('job-state');
  new MutationObserver(() => window.seenStates.push(el.dataset.state + ': ' + el.textContent))
    .observe(el, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


JOB_ENDED = """(before) => {
  const job = document.getElementById('job').dataset.job;
  const state = document.getElementById('job-state').dataset.state;
  return job && job !== before && (state === 'done' || state === 'failed');
}"""


def compliance_states(page: Any) -> dict[str, str]:
    cells = page.locator("#fleet-table tbody tr")
    return {
        cells.nth(i).get_attribute("data-device"): cells.nth(i)
        .locator("[data-field=compliance]")
        .get_attribute("data-state")
        for i in range(cells.count())
    }


def run_job(page: Any, button: str) -> list[str]:
    """Click ``button`` and wait for its job to end; the states the page showed on the way."""
    before = page.locator("#job").get_attribute("data-job")
    page.evaluate(WATCH_STATES)
    page.click(button)
    page.wait_for_function(JOB_ENDED, arg=before or "")
    seen: list[str] = page.evaluate("window.seenStates")
    return seen


def test_an_admin_plans_and_applies_a_profile_and_the_audit_shows_it(
    service: ServiceThread, page: Any
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    ids = sorted(d.id for d in service.devices)

    page.goto(service.url + "/fleet")
    rows = page.locator("#fleet-table tbody tr")
    assert sorted(rows.nth(i).get_attribute("data-device") for i in range(rows.count())) == ids
    pm1 = next(d for d in service.devices if d.spec.key == "pm1")
    row = page.locator(f"#fleet-table tr[data-device='{pm1.id}']")
    assert row.locator("[data-field=model]").inner_text().startswith("S3PM-001PCEU16")
    assert row.locator("[data-field=firmware]").inner_text().startswith(pm1.ver)
    assert "Lab meter" in row.locator("td.name").inner_text()
    assert row.locator("[data-field=online]").inner_text() == "no data"  # registered, never heard
    assert set(compliance_states(page).values()) == {"never"}
    assert page.locator("#profile-select option").all_inner_texts() == ["lab.toml"]

    seen = run_job(page, "#plan-button")
    assert any(s.startswith("running: ") for s in seen), seen
    report = page.locator("#job-report tbody tr")
    assert report.count() == DEVICES
    assert {report.nth(i).get_attribute("data-status") for i in range(DEVICES)} == {"drifted"}
    page.wait_for_function(
        "[...document.querySelectorAll('#fleet-table [data-field=compliance]')]"
        ".every(c => c.dataset.state === 'drifted')"
    )
    # the drift is there to expand: the changes of the first device
    first = page.locator("#fleet-table tbody tr").first.locator("details.drift")
    first.locator("summary").click()
    assert "Europe/Vienna" in first.inner_text()

    seen = run_job(page, "#apply-button")
    assert any(s.startswith("running: ") and f"of {DEVICES} devices" in s for s in seen), seen
    assert page.locator("#job-state").get_attribute("data-state") == "done"
    assert page.locator("#job-progress").evaluate("p => p.value === p.max")
    assert page.locator("#job-result").inner_text().startswith("ok")
    statuses = page.locator("#job-report tbody tr")
    assert {statuses.nth(i).get_attribute("data-status") for i in range(DEVICES)} == {"ok"}
    page.wait_for_function(
        "[...document.querySelectorAll('#fleet-table [data-field=compliance]')]"
        ".every(c => c.dataset.state === 'in-sync')"
    )
    assert all(d.config["sys"]["location"]["tz"] == "Europe/Vienna" for d in service.devices)

    page.click(".fleet-audit-link")
    page.wait_for_url("**/fleet/audit")
    newest = page.locator("#audit-table tbody tr").first
    assert newest.get_attribute("data-action") == "fleet.apply"
    assert newest.get_attribute("data-result") == "ok"
    assert f"web:{ADMIN[0]}" in newest.inner_text()
    assert page.locator("#audit-table tr[data-action='fleet.apply']").count() == 2  # start, end
    assert errors == []


def test_phone_width_keeps_the_key_columns_without_sideways_scrolling(
    service: ServiceThread, page: Any
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for path, table, keys in (
            ("/fleet", "#fleet-table", ("Name", "Status", "Firmware")),
            ("/fleet/audit", "#audit-table", ("Time", "Action", "Result")),
        ):
            page.goto(service.url + path)
            width = page.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide"
            wrap = page.locator(table).evaluate("t => t.parentElement.scrollWidth")
            assert wrap <= 390, f"{path}'s table is {wrap} px wide"
            headers = page.locator(f"{table} thead th")
            for i in range(headers.count()):
                th = headers.nth(i)
                if th.inner_text() in keys:
                    box = th.bounding_box()
                    assert box is not None and box["x"] + box["width"] <= 390, th.inner_text()
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
