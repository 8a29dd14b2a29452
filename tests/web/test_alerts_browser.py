"""The Alerts page in a real headless Chromium (Debian's), real server and SQLite store: an admin
adds a webhook channel and a power rule through the forms, a validation error shows in the form,
a firing state appears without reloading, and a phone's 390 px need no sideways scrolling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browserkit import ServerThread, chromium, submit_login
from webseed import NOW, PLUG

from kilowatch.alerts.config import load_config, new_webhook_secret, parse_config, save_config
from kilowatch.alerts.state import (
    AlertBook,
    AlertRecord,
    AlertState,
    DeliveryResult,
    append_history,
    save_book,
)
from kilowatch.store import Store

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("alerts-browser") / "web.db")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: ServerThread) -> Iterator[Any]:
    with chromium(server.url) as context:
        yield context.new_page()


def open_alerts(server: ServerThread, page: Any) -> None:
    """The Alerts page, logging in as the admin first when the session is not there yet."""
    page.goto(server.url + "/alerts")
    if "/login" in page.url:
        submit_login(page)
        page.wait_for_url("**/alerts")


def overflow(page: Any) -> int:
    value: int = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    return value


def test_an_admin_adds_a_channel_and_a_rule_and_sees_it_fire(
    server: ServerThread, page: Any
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    open_alerts(server, page)

    # A webhook channel: the form offers a fresh signing secret to copy.
    page.click("#add-channel")
    form = page.locator("#channel-form")
    assert form.is_visible()
    assert page.input_value("#channel-form input[name=secret]").startswith("whsec_")
    assert not page.locator("#channel-form input[name=smtp_host]").is_visible(), "email only"
    secret = page.input_value("#channel-form input[name=secret]")
    page.fill("#channel-form input[name=name]", "home-hook")
    page.fill("#channel-form input[name=url]", "not a url")
    page.click("#channel-save")
    error = page.locator("#channel-error")
    error.wait_for(state="visible")
    assert "url" in error.inner_text() and "home-hook" in error.inner_text()
    page.fill("#channel-form input[name=url]", "http://127.0.0.1:9/hook")
    page.click("#channel-save")
    page.wait_for_url("**/alerts?saved=*")
    row = page.locator("#alerts-channels tr[data-channel='home-hook']")
    assert "http://127.0.0.1:9/hook" in row.inner_text()
    assert secret not in page.content(), "the secret is never shown again"

    # A power rule: a missing threshold is named in the form, then it is saved.
    page.click("#add-rule")
    page.fill("#rule-form input[name=id]", "kettle-power")
    page.fill("#rule-form input[name=name]", "Kettle left on")
    page.select_option("#rule-form select[name=kind]", "power_above")
    page.fill("#rule-form input[name=devices]", "shellyplugsg3-*")
    page.fill("#rule-form input[name=for_s]", "120")
    assert page.is_checked("#rule-form input[name=notify][value='home-hook']")
    page.click("#rule-save")
    page.locator("#rule-error").wait_for(state="visible")
    assert "threshold_w" in page.inner_text("#rule-error")
    assert "invalid" in (page.get_attribute("#rule-form input[name=threshold_w]", "class") or "")
    page.fill("#rule-form input[name=threshold_w]", "2000")
    page.click("#rule-save")
    page.wait_for_url("**/alerts?saved=Rule*")
    rule = page.locator("#alerts-rules tr[data-rule='kettle-power']")
    assert "power above 2000 W for 2 min" in rule.inner_text()
    assert "home-hook" in rule.inner_text()
    stored = server.run(load_config)
    assert stored.rule("kettle-power").notify == ("home-hook",)
    assert stored.channel("home-hook").secret == secret

    # Editing the channel keeps its secret (the form holds ***); its name is fixed.
    page.locator("#alerts-channels tr[data-channel='home-hook'] [data-action=edit-channel]").click()
    assert page.input_value("#channel-form input[name=secret]") == "***"
    assert page.locator("#channel-form input[name=name]").get_attribute("readonly") is not None
    page.fill("#channel-form input[name=url]", "http://127.0.0.1:9/other")
    page.click("#channel-save")
    page.wait_for_url("**/alerts?saved=Channel*")
    assert server.run(load_config).channel("home-hook").secret == secret
    assert "/other" in page.inner_text("#alerts-channels tr[data-channel='home-hook']")

    # Disable, from the table.
    rule.locator("button[data-action=toggle-rule]").click()
    page.wait_for_url("**/alerts?saved=*disabled*")
    assert (
        page.get_attribute("#alerts-rules tr[data-rule='kettle-power']", "data-enabled") == "false"
    )

    # The service finds the kettle on: the page shows it within a refresh, firing first.
    async def fire(store: Store) -> None:
        book = AlertBook()
        for s in (
            AlertState("kettle-power", "shellypmminig3-000000000001", "pending", NOW - 10),
            AlertState("kettle-power", PLUG, "firing", NOW - 300, 2400.0, NOW - 180,
                       "power 2400 W above 2000 W for 2 min"),
        ):  # fmt: skip
            book.states[s.key] = s
        await save_book(store, book)

    server.run(fire)
    first = page.locator("#alerts-current tbody tr").first
    page.wait_for_selector("#alerts-current tr[data-status='firing']")
    assert first.get_attribute("data-status") == "firing"
    assert "Kettle left on" in first.inner_text() and "Kettle plug" in first.inner_text()
    assert "2026-03-15 12:25:00" in first.inner_text(), (
        "the site's local time, as the server writes"
    )
    assert page.locator("#alerts-current tbody tr").nth(1).get_attribute("data-status") == "pending"
    assert page.inner_text("#alerts-count").startswith("1 firing, 1 pending")

    # Deleting the channel takes it off the rule, once confirmed (the dialog names the rule).
    dialogs: list[str] = []

    def confirm(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    page.locator(
        "#alerts-channels tr[data-channel='home-hook'] [data-action=delete-channel]"
    ).click()
    page.wait_for_url("**/alerts?saved=*deleted*")
    assert "kettle-power" in dialogs[0]
    after = server.run(load_config)
    assert after.channels == () and after.rule("kettle-power").notify == ()
    assert errors == []


PHONE_CONFIG = {
    "rules": [
        {"id": "kettle-power", "kind": "power_above", "name": "Kettle left on for too long",
         "devices": ["shellyplugsg3-aabbccddeeff", "shellypmminig3-*"], "channel": "switch:0",
         "threshold_w": 2000, "for_s": 300, "repeat_s": 3600, "notify": ["ops-hook", "mail"]},
        {"id": "budget", "kind": "daily_energy_above", "budget_wh": 12000, "enabled": False},
    ],
    "channels": [
        {"name": "ops-hook", "kind": "webhook", "secret": new_webhook_secret(),
         "url": "https://hooks.example.org/kilowatch/a/rather/long/path/to/the/receiver"},
        {"name": "mail", "kind": "email", "smtp_host": "smtp.example.org", "sender": "k@x.org",
         "recipients": ["someone.with.a.long.address@example.org", "other@example.org"]},
    ],
}  # fmt: skip


def test_the_alerts_page_fits_a_phone(server: ServerThread, page: Any) -> None:
    async def seed(store: Store) -> None:
        await save_config(store, parse_config(PHONE_CONFIG))
        firing = AlertState("kettle-power", PLUG, "firing", NOW - 300, 2400.0, None, "2400 W")
        await save_book(store, AlertBook(states={firing.key: firing}))
        await append_history(
            store,
            [AlertRecord("h1", NOW - 60, "kettle-power", PLUG, "firing", "power 2400 W", 2400.0,
                         (DeliveryResult("ops-hook", False, 5, "https://hooks.example.org/"
                                         "kilowatch/a/rather/long/path answered HTTP 503"),))],
        )  # fmt: skip

    server.run(seed)
    page.set_viewport_size({"width": 390, "height": 844})
    open_alerts(server, page)
    page.wait_for_selector("#alerts-history tr[data-id='h1']")
    page.wait_for_selector("#alerts-current tr[data-status='firing']")
    assert overflow(page) <= 1, f"/alerts is {overflow(page)}px wider than a phone"
    # the key cells are on screen, not scrolled away
    for cell in ("#alerts-rules tr[data-rule] td", "#alerts-channels tr[data-channel] td"):
        box = page.locator(cell).first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.click("#add-rule")
    page.click("#add-channel")
    assert overflow(page) <= 1, "the forms fit too"
