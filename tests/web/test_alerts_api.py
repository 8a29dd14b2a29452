"""The alerts API and page: who may read and write, CSRF, validation that stores nothing, secrets
that never leave the server, the audit log, and a test notification to a real local webhook
receiver. Against real stores (SQLite file and redis-server), through the app's conftest."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from webseed import ADMIN, NOW, PLUG

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import Role
from kilowatch.alerts.channels import verify
from kilowatch.alerts.config import CONFIG_KEY, load_config, new_webhook_secret
from kilowatch.alerts.state import (
    AlertBook,
    AlertRecord,
    AlertState,
    DeliveryResult,
    append_history,
    save_book,
)
from kilowatch.store import Store
from kilowatch.testing.servers import free_port

HOST = "127.0.124.1"
"""This file's loopback address (the alerts page's tests)."""
SECRET = new_webhook_secret()
CONFIG: dict[str, Any] = {
    "rules": [
        {
            "id": "kettle-power",
            "kind": "power_above",
            "name": "Kettle left on",
            "devices": ["shellyplugsg3-*"],
            "threshold_w": 2000,
            "for_s": 300,
            "notify": ["ops-hook"],
        },
        {"id": "offline", "kind": "offline", "notify": ["ops-hook"]},
    ],
    "channels": [
        {"name": "ops-hook", "kind": "webhook", "url": "http://127.0.0.1:9/x", "secret": SECRET},
        {
            "name": "mail",
            "kind": "email",
            "smtp_host": "127.0.0.1",
            "sender": "kw@example.org",
            "recipients": ["me@example.org"],
            "username": "kw",
            "password": "smtp-password-1",
        },
    ],
}
URLS = ["/api/v1/alerts", "/api/v1/alerts/history", "/api/v1/alerts/config"]
Client = tuple[httpx.AsyncClient, str]


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    return body


async def put(c: httpx.AsyncClient, csrf: str, body: Any, **headers: str) -> httpx.Response:
    return await c.put(
        "/api/v1/alerts/config", json=body, headers={"x-csrf-token": csrf, **headers}
    )


async def audit_of(store: Store, action: str = "alerts") -> list[Any]:
    return await store.audit(action=action)


async def test_reads_need_login_and_writes_need_an_admin(
    anon: httpx.AsyncClient, viewer: Client
) -> None:
    for url in [*URLS, "/api/v1/alerts/channels/ops-hook/test"]:
        method = "POST" if url.endswith("/test") else "GET"
        assert (await anon.request(method, url)).status_code == 401
    problem(await anon.put("/api/v1/alerts/config", json=CONFIG), 401)
    c, csrf = viewer
    for url in URLS:
        assert (await c.get(url)).status_code == 200, url
    assert (await c.get("/api/v1/alerts/config")).json() == {"rules": [], "channels": []}
    assert problem(await put(c, csrf, CONFIG), 403)["type"].endswith("/forbidden")
    r = await c.post("/api/v1/alerts/channels/ops-hook/test", headers={"x-csrf-token": csrf})
    problem(r, 403)


async def test_admin_writes_with_csrf_and_secrets_stay_on_the_server(
    admin: Client, store: Store
) -> None:
    c, csrf = admin
    assert problem(await put(c, "", CONFIG), 403)["type"].endswith("/csrf")
    assert problem(await put(c, "wrong", CONFIG), 403)["type"].endswith("/csrf")
    assert await store.get_meta(CONFIG_KEY) is None, "refused writes store nothing"

    r = await put(c, csrf, CONFIG)
    assert r.status_code == 200, r.text
    shown = r.json()
    hook, mail = shown["channels"]
    assert hook["secret"] == "***" and mail["password"] == "***"
    assert SECRET not in r.text and "smtp-password-1" not in r.text
    assert shown["rules"][0]["threshold_w"] == 2000
    stored = await load_config(store)
    assert stored.channel("ops-hook").secret == SECRET  # type: ignore[union-attr]
    assert stored.channel("mail").password == "smtp-password-1"  # type: ignore[union-attr]

    # What the page sends back, edited: *** keeps the stored secrets.
    got = await c.get("/api/v1/alerts/config")
    assert got.json() == shown and got.headers["etag"] == r.headers["etag"]
    edited = copy.deepcopy(got.json())
    edited["rules"][0]["threshold_w"] = 2500
    r2 = await put(c, csrf, edited, **{"if-match": got.headers["etag"]})
    assert r2.status_code == 200, r2.text
    assert r2.headers["etag"] != got.headers["etag"]
    again = await load_config(store)
    assert again.rule("kettle-power").threshold_w == 2500  # type: ignore[union-attr]
    assert again.channel("ops-hook").secret == SECRET  # type: ignore[union-attr]
    assert again.channel("mail").password == "smtp-password-1"  # type: ignore[union-attr]

    # The page shows the redacted configuration only.
    page = await c.get("/alerts")
    assert page.status_code == 200
    assert SECRET not in page.text and "smtp-password-1" not in page.text
    assert "Kettle left on" in page.text and "power above 2500 W for 5 min" in page.text


async def test_the_audit_log_names_who_changed_what_without_secrets(
    admin: Client, store: Store
) -> None:
    c, csrf = admin
    assert (await put(c, csrf, CONFIG)).status_code == 200
    entries = await audit_of(store, "alerts.rules")
    assert [e.result for e in entries] == ["ok", "started"]
    end = entries[0]
    assert end.actor == f"web:{ADMIN[0]}"
    assert end.detail["rules"]["added"] == ["kettle-power", "offline"]
    assert end.detail["channels"]["added"] == ["mail", "ops-hook"]
    # The same write again changes nothing and logs nothing (safe to repeat).
    assert (await put(c, csrf, CONFIG)).status_code == 200
    assert len(await audit_of(store, "alerts.rules")) == 2
    # A token writes as api:<token name>.
    token = await create_token(store, ADMIN[0], role=Role.ADMIN, name="ansible", now=NOW)
    body = copy.deepcopy(CONFIG)
    del body["rules"][1]
    r = await c.put(
        "/api/v1/alerts/config", json=body, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    latest = (await audit_of(store, "alerts.rules"))[0]
    assert latest.actor == "api:ansible"
    assert latest.detail["rules"] == {"added": [], "removed": ["offline"], "changed": []}
    everything = json.dumps([e.detail for e in await audit_of(store)])
    assert SECRET not in everything and "smtp-password-1" not in everything


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda cfg: cfg["rules"][0].pop("threshold_w"), ("kettle-power", "threshold_w")),
        (lambda cfg: cfg["rules"][0].update(for_s=-5), ("kettle-power", "for_s")),
        (lambda cfg: cfg["rules"][1].update(notify=["nowhere"]), ("offline", "nowhere")),
        (lambda cfg: cfg["channels"][0].update(url="ftp://x"), ("ops-hook", "url")),
        (lambda cfg: cfg["channels"][0].update(secret="hunter2"), ("ops-hook", "secret")),
        (lambda cfg: cfg["channels"][1].update(colour="red"), ("mail", "colour")),
        (lambda cfg: cfg.update(rules="all"), ("rules",)),
    ],
)
async def test_invalid_configurations_are_422_and_keep_the_stored_one(
    admin: Client, store: Store, change: Any, names: tuple[str, ...]
) -> None:
    c, csrf = admin
    assert (await put(c, csrf, CONFIG)).status_code == 200
    stored = await store.get_meta(CONFIG_KEY)
    audit = await audit_of(store)
    bad = copy.deepcopy(CONFIG)
    change(bad)
    body = problem(await put(c, csrf, bad), 422)
    for name in names:
        assert name in body["detail"], body
    assert body["invalid-params"][0]["reason"]
    shown = json.dumps(body)
    assert SECRET not in shown and "hunter2" not in shown and "smtp-password-1" not in shown
    assert await store.get_meta(CONFIG_KEY) == stored
    assert len(await audit_of(store)) == len(audit)


async def test_bodies_that_are_not_json_or_not_objects_are_422(admin: Client) -> None:
    c, csrf = admin
    headers = {"x-csrf-token": csrf, "content-type": "application/json"}
    for raw in (b"{", b"[]", b'"x"', b'{"rules": [{"id": "a", "kind": "offline", "for_s": NaN}]}'):
        r = await c.put("/api/v1/alerts/config", content=raw, headers=headers)
        problem(r, 422)


async def test_a_stale_if_match_is_refused(admin: Client, store: Store) -> None:
    c, csrf = admin
    first = await put(c, csrf, CONFIG)
    edited = copy.deepcopy(CONFIG)
    edited["rules"][0]["enabled"] = False
    assert (await put(c, csrf, edited)).status_code == 200  # someone else's change
    stale = copy.deepcopy(CONFIG)
    stale["rules"][0]["threshold_w"] = 1
    r = await put(c, csrf, stale, **{"if-match": first.headers["etag"]})
    assert problem(r, 412)["type"].endswith("/precondition-failed")
    rule = (await load_config(store)).rule("kettle-power")
    assert rule is not None and rule.threshold_w == 2000 and not rule.enabled
    # The other writer's retry (its answer lost) finds its change there: 200, not 412.
    retry = await put(c, csrf, edited, **{"if-match": first.headers["etag"]})
    assert retry.status_code == 200, retry.text


async def test_current_states_firing_first_and_history_newest_first(
    viewer: Client, store: Store
) -> None:
    await store.put_meta(CONFIG_KEY, CONFIG)
    book = AlertBook()
    for s in (
        AlertState("offline", "shellypmminig3-000000000001", "pending", NOW - 60),
        AlertState("kettle-power", PLUG, "firing", NOW - 600, 2400.0, NOW - 300, "2400 W"),
        AlertState("offline", PLUG, "resolved", NOW - 30),
    ):
        book.states[s.key] = s
    await save_book(store, book)
    await append_history(
        store,
        [
            AlertRecord("a", NOW - 300, "kettle-power", PLUG, "firing", "2400 W", 2400.0,
                        (DeliveryResult("ops-hook", True, 1),)),
            AlertRecord("b", NOW - 30, "offline", PLUG, "resolved", "back",
                        None, (DeliveryResult("ops-hook", False, 5, "HTTP 500"),)),
        ],
    )  # fmt: skip
    c, _ = viewer
    alerts = (await c.get("/api/v1/alerts")).json()["alerts"]
    assert [a["status"] for a in alerts] == ["firing", "pending", "resolved"]
    assert alerts[0]["rule_name"] == "Kettle left on" and alerts[0]["value"] == 2400.0
    hist = (await c.get("/api/v1/alerts/history")).json()["history"]
    assert [h["id"] for h in hist] == ["b", "a"]
    assert hist[0]["ok"] is False and hist[0]["deliveries"][0]["error"] == "HTTP 500"
    assert [h["id"] for h in (await c.get("/api/v1/alerts/history?limit=1")).json()["history"]] == [
        "b"
    ]
    problem(await c.get("/api/v1/alerts/history?limit=0"), 422)
    page = (await c.get("/alerts")).text
    assert page.index('data-status="firing"') < page.index('data-status="pending"')
    assert "HTTP 500" in page and "Kettle plug" in page
    assert "2026-03-15 12:20:00" in page, "the firing state's start, in the site's time zone"
    assert 'data-action="edit-rule"' not in page and 'id="rule-form"' not in page, "read-only"


@dataclass
class Receiver:
    """A local webhook receiver: records each request; answers ``status``."""

    url: str = ""
    status: int = 204
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()

    async def hook(request: web.Request) -> web.Response:
        got.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=got.status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port(HOST)
    await web.TCPSite(runner, HOST, port).start()
    got.url = f"http://{HOST}:{port}/hook"
    yield got
    await runner.cleanup()


async def test_a_test_notification_reaches_the_webhook_signed(
    admin: Client, store: Store, receiver: Receiver
) -> None:
    c, csrf = admin
    cfg = copy.deepcopy(CONFIG)
    cfg["channels"][0]["url"] = receiver.url
    assert (await put(c, csrf, cfg)).status_code == 200
    test = "/api/v1/alerts/channels/ops-hook/test"
    assert problem(await c.post(test), 403)["type"].endswith("/csrf")
    assert receiver.requests == []
    r = await c.post(test, headers={"x-csrf-token": csrf})
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and r.json()["error"] is None
    [(headers, body)] = receiver.requests
    headers = {k.lower(): v for k, v in headers.items()}
    assert verify(SECRET, headers, body, now=time.time())
    sent = json.loads(body)
    assert sent["type"] == "alert.test" and sent["id"] == r.json()["id"]
    [end, _] = await audit_of(store, "alerts.test")
    assert end.result == "ok" and end.detail["channel"] == "ops-hook"

    receiver.status = 500
    r = await c.post(test, headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and r.json()["ok"] is False
    assert "HTTP 500" in r.json()["error"]
    assert len(receiver.requests) == 2, "a test is one attempt, not retried"
    assert (await audit_of(store, "alerts.test"))[0].result == "failed"
    assert problem(
        await c.post("/api/v1/alerts/channels/nope/test", headers={"x-csrf-token": csrf}), 404
    )


async def test_the_admin_page_has_the_forms(admin: Client, store: Store) -> None:
    c, csrf = admin
    assert (await put(c, csrf, CONFIG)).status_code == 200
    page = await c.get("/alerts")
    assert page.status_code == 200
    for marker in ('id="rule-form"', 'id="channel-form"', 'data-action="test-channel"'):
        assert marker in page.text
    assert "<script>" not in page.text and "style=" not in page.text, "the CSP allows neither"
    assert "script-src 'self'" in page.headers["content-security-policy"]
