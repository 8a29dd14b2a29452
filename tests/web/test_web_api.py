"""The REST API and its security, against real stores (SQLite file and redis-server)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from webseed import (
    ADMIN,
    EM,
    ESTIMATED_HOUR,
    NOW,
    PLUG,
    TZ,
    VIEWER,
    client_for,
)

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import Role
from kilowatch.intake.live import LiveHub
from kilowatch.model.messages import Reading
from kilowatch.store import Store
from kilowatch.web import create_app, serve_web

PROTECTED_GETS = [
    "/api/v1/me",
    "/api/v1/devices",
    f"/api/v1/devices/{PLUG}",
    f"/api/v1/devices/{PLUG}/events",
    "/api/v1/latest",
    "/api/v1/energy",
    "/api/v1/overview",
    "/api/v1/live",
    "/api/v1/settings",
    "/metrics",
    "/api/v1/openapi.json",
]


def assert_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    return body


async def test_health_is_public(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


@pytest.mark.parametrize("path", PROTECTED_GETS)
async def test_everything_else_needs_login(anon: httpx.AsyncClient, path: str) -> None:
    r = await anon.get(path)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"


async def test_writes_need_login(anon: httpx.AsyncClient) -> None:
    assert_problem(await anon.patch(f"/api/v1/devices/{PLUG}", json={"label": "x"}), 401)
    assert_problem(await anon.patch("/api/v1/settings", json={"tz": "UTC"}), 401)


async def test_pages_redirect_to_login(anon: httpx.AsyncClient) -> None:
    for path in ("/", "/energy", "/devices", f"/devices/{PLUG}", "/settings"):
        r = await anon.get(path, headers={"accept": "text/html"})
        assert r.status_code == 303
        assert r.headers["location"] == f"/login?next={path}"


async def test_login_sets_a_locked_down_cookie(anon: httpx.AsyncClient) -> None:
    r = await anon.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    for flag in ("httponly", "secure", "samesite=strict", "path=/"):
        assert flag in cookie
    me = await anon.get("/api/v1/me")
    assert me.json()["user"] == ADMIN[0]
    assert me.json()["role"] == "admin"


async def test_wrong_password_then_rate_limited(anon: httpx.AsyncClient) -> None:
    for _ in range(5):
        r = await anon.post("/login", data={"username": ADMIN[0], "password": "wrong-password"})
        assert r.status_code == 401
    r = await anon.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 429, "the right password must not help once the limit is reached"
    assert int(r.headers["retry-after"]) > 0


async def test_login_does_not_redirect_off_site(anon: httpx.AsyncClient) -> None:
    r = await anon.post(
        "/login", data={"username": ADMIN[0], "password": ADMIN[1], "next": "//evil.example/"}
    )
    assert r.headers["location"] == "/"


async def test_logout_ends_the_session(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = admin
    assert (await c.get("/api/v1/me")).status_code == 200
    assert (await c.post("/logout", data={})).status_code == 403, "logout needs the CSRF token"
    r = await c.post("/logout", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert_problem(await c.get("/api/v1/me"), 401)


async def test_viewer_reads_but_cannot_write(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = viewer
    assert (await c.get("/api/v1/devices")).status_code == 200
    r = await c.patch(
        f"/api/v1/devices/{PLUG}", json={"label": "x"}, headers={"x-csrf-token": csrf}
    )
    assert_problem(r, 403)
    r = await c.patch("/api/v1/settings", json={"tz": "UTC"}, headers={"x-csrf-token": csrf})
    assert_problem(r, 403)


async def test_admin_writes_need_csrf(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = admin
    body = assert_problem(await c.patch(f"/api/v1/devices/{PLUG}", json={"label": "Kettle"}), 403)
    assert "CSRF" in str(body["detail"])
    r = await c.patch(
        f"/api/v1/devices/{PLUG}", json={"label": "x"}, headers={"x-csrf-token": csrf + "tampered"}
    )
    assert_problem(r, 403)
    r = await c.patch(
        f"/api/v1/devices/{PLUG}",
        json={"label": "x"},
        headers={"x-csrf-token": csrf, "origin": "https://evil.example"},
    )
    assert_problem(r, 403)
    r = await c.patch(
        f"/api/v1/devices/{PLUG}",
        json={"label": " Kettle ", "room": "Kitchen"},
        headers={"x-csrf-token": csrf, "origin": "https://testserver"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["display_name"] == "Kettle"
    assert r.json()["room"] == "Kitchen"
    got = (await c.get(f"/api/v1/devices/{PLUG}")).json()
    assert (got["label"], got["room"]) == ("Kettle", "Kitchen")


async def test_tokens(store: Store, anon: httpx.AsyncClient) -> None:
    admin_token = await create_token(store, ADMIN[0], role=Role.ADMIN, name="script", now=NOW)
    viewer_token = await create_token(store, ADMIN[0], role=Role.VIEWER, name="grafana", now=NOW)
    bearer = {"authorization": f"Bearer {admin_token}"}
    assert (await anon.get("/api/v1/devices", headers=bearer)).status_code == 200
    # No CSRF for tokens: a browser never sends them by itself.
    r = await anon.patch(f"/api/v1/devices/{EM}", json={"room": "Hall"}, headers=bearer)
    assert r.status_code == 200, r.text
    r = await anon.patch(
        f"/api/v1/devices/{EM}",
        json={"room": "x"},
        headers={"authorization": f"Bearer {viewer_token}"},
    )
    assert_problem(r, 403)
    assert_problem(
        await anon.get("/api/v1/devices", headers={"authorization": "Bearer kw_x_y"}), 401
    )
    tampered = admin_token[:-2] + ("AA" if not admin_token.endswith("AA") else "BB")
    assert_problem(
        await anon.get("/api/v1/devices", headers={"authorization": f"Bearer {tampered}"}), 401
    )
    assert_problem(await anon.get("/api/v1/devices", headers={"authorization": "Basic abc"}), 401)
    with pytest.raises(Exception, match="viewer"):
        await create_token(store, VIEWER[0], role=Role.ADMIN, name="x", now=NOW)


async def test_energy_by_hour_is_exact(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.get("/api/v1/energy", params={"by": "hour", "from": "2026-03-15", "device": PLUG})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tz"] == TZ
    assert body["from"] == "2026-03-15T00:00:00+01:00"
    assert body["to"] == "2026-03-16T00:00:00+01:00"
    rows = body["rows"]
    assert [row["energy_wh"] for row in rows] == [100.0 + 10 * h for h in range(12)]
    assert [row["estimated"] for row in rows] == [h == ESTIMATED_HOUR for h in range(12)]
    assert body["totals"]["energy_wh"] == sum(100.0 + 10 * h for h in range(12))


async def test_energy_groups_and_tz(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.get("/api/v1/energy", params={"by": "day", "group": "total", "from": "2026-03-14"})
    days = {row["start"][:10]: row for row in r.json()["rows"]}
    assert days["2026-03-14"]["energy_wh"] == 240.0
    # em:0 counts once (its phases are its parts), export is kept apart.
    assert days["2026-03-15"]["energy_wh"] == 1860.0 + 720.0
    assert days["2026-03-15"]["returned_energy_wh"] == 84.0
    r = await c.get(
        "/api/v1/energy",
        params={
            "by": "hour",
            "tz": "UTC",
            "from": "2026-03-14T23:00:00",
            "to": "2026-03-15T01:00:00",
            "device": PLUG,
        },
    )
    assert [row["energy_wh"] for row in r.json()["rows"]] == [100.0, 110.0]
    r = await c.get("/api/v1/energy", params={"by": "hour", "channel": "em:0/b,em:0/c"})
    channels = {row["channel"] for row in r.json()["rows"]}
    assert channels == {"em:0/b", "em:0/c"}


async def test_energy_defaults_follow_the_site_clock(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    body = (await c.get("/api/v1/energy", params={"by": "month", "group": "total"})).json()
    assert body["from"] == "2026-01-01T00:00:00+01:00"
    months = [(row["start"][:7], row["energy_wh"]) for row in body["rows"]]
    assert months == [("2026-02", 1000.0), ("2026-03", 240.0 + 2580.0)]


async def test_energy_csv(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.get(
        "/api/v1/energy",
        params={"by": "hour", "from": "2026-03-15", "device": PLUG, "format": "csv"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == 12
    assert table[3]["start"] == "2026-03-15T03:00:00+01:00"
    assert float(table[3]["energy_wh"]) == 130.0
    assert table[ESTIMATED_HOUR]["estimated"] == "true"


async def test_cost_flat_and_time_of_use(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = admin
    h = {"x-csrf-token": csrf}
    tariff = {"currency": "EUR", "price": 0.30, "export_price": 0.10}
    r = await c.patch("/api/v1/settings", json={"tariff": tariff}, headers=h)
    assert r.status_code == 200, r.text
    params = {
        "by": "day",
        "from": "2026-03-15",
        "to": "2026-03-16",
        "group": "total",
        "cost": "true",
    }
    body = (await c.get("/api/v1/energy", params=params)).json()
    assert body["currency"] == "EUR"
    assert body["rows"][0]["cost"] == pytest.approx(2.58 * 0.30 - 0.084 * 0.10)
    # Cheap night until 06:00, then the base price.
    tariff["periods"] = [{"start": "22:00", "end": "06:00", "price": 0.10}]
    assert (
        await c.patch("/api/v1/settings", json={"tariff": tariff}, headers=h)
    ).status_code == 200
    body = (await c.get("/api/v1/energy", params=params)).json()
    night = sum(100 + 10 * hh for hh in range(6)) + 60 * 6
    day = sum(100 + 10 * hh for hh in range(6, 12)) + 60 * 6
    expected = night / 1000 * 0.10 + day / 1000 * 0.30 - 0.084 * 0.10
    assert body["totals"]["cost"] == pytest.approx(expected)


async def test_settings_change_the_site_time_zone(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = admin
    r = await c.patch(
        "/api/v1/settings",
        json={"tz": "UTC", "retention_days": 400},
        headers={"x-csrf-token": csrf},
    )
    assert r.json()["tz"] == "UTC"
    assert r.json()["retention_days"] == 400
    assert (await c.get("/api/v1/settings")).json()["tz"] == "UTC"
    body = (await c.get("/api/v1/energy", params={"by": "hour", "from": "2026-03-14T23:00"})).json()
    assert body["tz"] == "UTC"
    assert body["from"] == "2026-03-14T23:00:00+00:00"


async def test_the_site_zone_is_the_stores_local_zone(
    admin: tuple[httpx.AsyncClient, str], store: Store
) -> None:
    """The web app keeps the store's local days in the site's zone (day and month answers read
    them): from start-up, and rebuilt in the background when the setting changes."""
    c, csrf = admin
    for _ in range(200):
        if await store.local_days_zone() == TZ:
            break
        await asyncio.sleep(0.02)
    assert await store.local_days_zone() == TZ
    days = {"by": "day", "from": "2026-03-01", "to": "2026-04-01", "tz": "America/St_Johns"}
    before = (await c.get("/api/v1/energy", params=days)).json()["rows"]
    assert {r["start"][:10] for r in before} == {"2026-03-14", "2026-03-15"}  # St. John's time
    r = await c.patch(
        "/api/v1/settings", json={"tz": "America/St_Johns"}, headers={"x-csrf-token": csrf}
    )
    assert r.status_code == 200
    for _ in range(200):
        if await store.local_days_zone() == "America/St_Johns":
            break
        await asyncio.sleep(0.02)
    assert await store.local_days_zone() == "America/St_Johns"
    assert (await c.get("/api/v1/energy", params=days)).json()["rows"] == before


BAD_ENERGY = [
    {"by": "week"},
    {"by": ""},
    {"tz": "Mars/Olympus"},
    {"tz": "../../etc/passwd"},
    {"from": "yesterday"},
    {"from": "2026-02-30"},
    {"to": "2026-13-01"},
    {"from": "2026-03-15", "to": "2026-03-15"},
    {"from": "2026-03-16", "to": "2026-03-15"},
    {"by": "15min", "from": "2020-01-01", "to": "2026-01-01"},
    {"by": "hour", "from": "2000-01-01", "to": "2026-01-01"},
    {"from": "0001-01-01"},
    {"group": "room"},
    {"format": "xml"},
    {"cost": "maybe"},
]


async def test_bad_energy_parameters_are_4xx_problems(
    viewer: tuple[httpx.AsyncClient, str],
) -> None:
    c, _ = viewer
    for params in BAD_ENERGY:
        r = await c.get("/api/v1/energy", params=params)
        assert 400 <= r.status_code < 500, (params, r.text)
        assert_problem(r, r.status_code)


async def test_bad_input_everywhere_else(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = admin
    h = {"x-csrf-token": csrf}
    assert_problem(await c.get("/api/v1/devices/nope"), 404)
    assert_problem(await c.get("/api/v1/devices/" + "x" * 300), 422)
    assert_problem(await c.patch("/api/v1/devices/nope", json={"label": "x"}, headers=h), 404)
    assert_problem(await c.patch(f"/api/v1/devices/{PLUG}", json={"colour": "red"}, headers=h), 422)
    assert_problem(
        await c.patch(f"/api/v1/devices/{PLUG}", json={"label": "x" * 101}, headers=h), 422
    )
    assert_problem(await c.patch(f"/api/v1/devices/{PLUG}", content=b"{not json", headers=h), 422)
    assert_problem(await c.get(f"/api/v1/devices/{PLUG}/events", params={"limit": 0}), 422)
    assert_problem(await c.get(f"/api/v1/devices/{PLUG}/events", params={"limit": "many"}), 422)
    bad_settings = [
        {"tz": "Nowhere/Land"},
        {"retention_days": -1},
        {"retention_days": "soon"},
        {"colour": "red"},
        {"tariff": {"price": "free"}},
        {"tariff": {"price": -1}},
        {"tariff": {"currency": "€€€€€€€€€€"}},
        {"tariff": {"periods": [{"start": "25:00", "end": "06:00", "price": 0.1}]}},
        {"tariff": {"periods": [{"start": "07:10", "end": "08:00", "price": 0.1}]}},
        {"tariff": {"periods": [{"start": "07:00", "end": "07:00", "price": 0.1}]}},
        {
            "tariff": {
                "periods": [{"start": "07:00", "end": "08:00", "price": 0.1, "days": ["funday"]}]
            }
        },
        {"tariff": {"periods": "cheap at night"}},
        {"tariff": "cheap"},
    ]
    for body in bad_settings:
        r = await c.patch("/api/v1/settings", json=body, headers=h)
        assert 400 <= r.status_code < 500, (body, r.text)
        assert_problem(r, r.status_code)
    assert (await c.get("/api/v1/settings")).json()["tz"] == TZ, "nothing bad was stored"
    assert_problem(await c.get("/api/v1/nothing-here"), 404)
    assert_problem(await c.delete("/api/v1/devices"), 405)


async def test_devices_list_and_detail(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    devices = {d["device"]: d for d in (await c.get("/api/v1/devices")).json()["devices"]}
    assert len(devices) == 3
    plug, em = devices[PLUG], devices[EM]
    assert plug["display_name"] == "Kettle plug"
    assert plug["available_update"] == "1.5.0"
    assert plug["online"] is True
    assert plug["energy_today_wh"] == 1860.0
    assert em["power_w"] == 600.0, "the phases are parts of em:0, not added again"
    assert devices["shellypmminig3-000000000001"]["online"] is False
    detail = (await c.get(f"/api/v1/devices/{EM}")).json()
    assert {r["channel"] for r in detail["latest"]} == {"em:0", "em:0/a", "em:0/b", "em:0/c"}
    events = (await c.get(f"/api/v1/devices/{PLUG}/events")).json()["events"]
    assert events[0]["event"] == "config_changed"


async def test_overview(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    body = (await c.get("/api/v1/overview")).json()
    periods = {p["label"]: p for p in body["periods"]}
    assert periods["Today"]["energy_wh"] == 2580.0
    assert periods["Today"]["estimated"] is True
    assert periods["This month"]["energy_wh"] == 2820.0
    assert periods["Last month"]["energy_wh"] == 1000.0
    assert body["power_w"] == pytest.approx(723.4)
    assert body["consumers"][0]["device"] == PLUG
    assert [d["device"] for d in body["offline"]] == ["shellypmminig3-000000000001"]


async def test_grid_meters_are_the_site_total(admin: tuple[httpx.AsyncClient, str]) -> None:
    """With the Pro 3EM marked as the grid meter, the site's energy and power are its alone (the
    plug behind it is not added again); it is not listed among the consumers."""
    c, csrf = admin
    r = await c.patch(
        "/api/v1/settings", json={"grid_meters": [EM, EM]}, headers={"x-csrf-token": csrf}
    )
    assert r.status_code == 200 and r.json()["grid_meters"] == [EM]
    body = (await c.get("/api/v1/overview")).json()
    periods = {p["label"]: p for p in body["periods"]}
    assert periods["Today"]["energy_wh"] == 720.0  # em:0's 60 Wh × 12 hours; the plug's 1 860 not
    assert periods["Today"]["returned_energy_wh"] == 84.0
    assert body["power_w"] == pytest.approx(600.0)
    assert [x["device"] for x in body["consumers"]] == [PLUG]
    devices = {d["device"]: d for d in (await c.get("/api/v1/devices")).json()["devices"]}
    assert devices[EM]["grid_meter"] is True and devices[PLUG]["grid_meter"] is False
    # the Energy page's total view follows it; the device view still shows every device
    page = await c.get("/energy", params={"by": "hour", "date": "2026-03-15", "view": "total"})
    hours = re.findall(r'data-start="[^"]+" data-import-wh="([0-9.]+)"', page.text)
    assert sum(map(float, hours)) == 720.0
    # not a list of ids: 422 (the body's shape); ids that are not device ids, too many: 400
    for bad, status in (
        ("not a list", 422), (3, 422), (["x" * 201], 422),
        (["a b"], 400), ([f"d{i}" for i in range(21)], 400),
    ):  # fmt: skip
        r = await c.patch(
            "/api/v1/settings", json={"grid_meters": bad}, headers={"x-csrf-token": csrf}
        )
        assert r.status_code == status, bad
    assert (await c.get("/api/v1/settings")).json()["grid_meters"] == [EM]
    r = await c.patch("/api/v1/settings", json={"grid_meters": []}, headers={"x-csrf-token": csrf})
    assert r.json()["grid_meters"] == []
    body = (await c.get("/api/v1/overview")).json()
    assert body["periods"][0]["energy_wh"] == 2580.0


async def test_metrics(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.splitlines()
    assert f'kilowatch_power_watts{{device="{PLUG}",channel="switch:0"}} 123.4' in lines
    assert f'kilowatch_energy_export_wh_total{{device="{EM}",channel="em:0"}} 700.0' in lines
    assert "# TYPE kilowatch_energy_import_wh_total counter" in lines
    assert 'kilowatch_device_online{device="shellypmminig3-000000000001"} 0.0' in lines
    for line in lines:
        assert line.startswith("#") or line.count(" ") == 1, line


async def test_openapi_lists_the_routes(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    doc = (await c.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/energy", "/api/v1/devices", "/api/v1/devices/{device}", "/api/v1/live",
                 "/api/v1/settings", "/api/v1/health", "/metrics"):  # fmt: skip
        assert path in doc["paths"], path
    params = {p["name"] for p in doc["paths"]["/api/v1/energy"]["get"]["parameters"]}
    assert {"by", "tz", "from", "to", "device", "channel", "group", "format"} <= params


async def test_first_run_creates_an_admin(tmp_path: object) -> None:
    from kilowatch.store import open_store

    shown: list[str] = []
    async with open_store(f"sqlite:///{tmp_path}/first.db") as store:
        app = create_app(store, live=LiveHub(), on_admin_created=shown.append)
        async with app.router.lifespan_context(app):
            pass
        assert len(shown) == 1
        async with app.router.lifespan_context(app), client_for(app) as c:
            r = await c.post("/login", data={"username": "admin", "password": shown[0]})
            assert r.status_code == 303
        assert len(shown) == 1, "the password is made (and shown) once"


async def test_sse_delivers_a_published_reading(store: Store, hub: LiveHub) -> None:
    """Over a real socket (uvicorn on a free port), as a browser's EventSource would read it."""
    app: FastAPI = create_app(store, live=hub, site_tz=TZ, clock=lambda: NOW)
    started = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(serve_web(app, "127.0.0.1", 0, started=started))
        async with asyncio.timeout(10):
            await started.wait()
        base = f"http://127.0.0.1:{app.state.port}"
        token = await create_token(store, VIEWER[0], role=Role.VIEWER, name="sse", now=NOW)
        headers = {"authorization": f"Bearer {token}"}
        async with (
            httpx.AsyncClient(base_url=base, headers=headers) as c,
            c.stream("GET", "/api/v1/live", params={"device": PLUG}) as r,
        ):
            assert r.headers["content-type"].startswith("text/event-stream")
            seen: list[str] = []
            async with asyncio.timeout(10):
                async for line in r.aiter_lines():
                    seen.append(line)
                    if line.startswith("data:") and '"power_w":123.4' in line:
                        # the snapshot of the latest reading came first; now a fresh one
                        hub.publish([Reading(EM, "em:0", NOW, power_w=1.0)])  # filtered out
                        hub.publish([Reading(PLUG, "switch:0", NOW + 1, power_w=2345.5)])
                    if line.startswith("data:") and "2345.5" in line:
                        break
            assert "event: reading" in seen
            assert not any('"device":"' + EM in s for s in seen)
        server.cancel()
    assert server.cancelled()


async def test_serve_web_refuses_a_busy_port(store: Store, hub: LiveHub) -> None:
    import socket

    from kilowatch.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        app = create_app(store, live=hub)
        with pytest.raises(ConfigError, match=str(port)):
            await serve_web(app, "127.0.0.1", port)


async def test_login_page_works_with_secure_cookie_on_plain_lan_http(
    store: Store, hub: LiveHub
) -> None:
    """Plain HTTP to a LAN address: the cookie must not be Secure, or the browser would drop it."""
    app = create_app(store, live=hub)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://192.0.2.10:8000"
        ) as c,
    ):
        r = await c.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
        assert r.status_code == 303
        assert "secure" not in r.headers["set-cookie"].lower()
        assert (await c.get("/api/v1/me")).status_code == 200


def test_every_route_is_documented(app: FastAPI) -> None:
    from fastapi.routing import APIRoute

    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods - {"HEAD"}:
                assert f"{method} {route.path}`" in doc, (
                    f"{method} {route.path} is not in docs/api.md"
                )


async def test_settings_and_rename_forms(admin: tuple[httpx.AsyncClient, str]) -> None:
    c, csrf = admin
    form = {
        "csrf_token": csrf,
        "tz": "Europe/Vienna",
        "currency": "EUR",
        "price": "0.3",
        "export_price": "0.05",
        "periods": "22:00-06:00 0.2\n17:00-20:00 0.4 mon,tue",
        "retention_days": "365",
        "grid_meters": f" {EM},\n{EM} ",
    }
    r = await c.post("/settings", data={**form, "csrf_token": "wrong"})
    assert r.status_code == 403
    r = await c.post("/settings", data=form)
    assert r.status_code == 303
    site = (await c.get("/api/v1/settings")).json()
    assert site["tz"] == "Europe/Vienna"
    assert site["retention_days"] == 365
    assert site["grid_meters"] == [EM]
    assert site["tariff"]["periods"][1] == {
        "start": "17:00",
        "end": "20:00",
        "price": 0.4,
        "days": ["mon", "tue"],
    }
    r = await c.post("/settings", data={**form, "periods": "whenever 0.1"})
    assert r.status_code == 400
    assert "line 1" in r.text
    assert (await c.get("/api/v1/settings")).json()["tariff"]["price"] == 0.3
    r = await c.post(
        f"/devices/{PLUG}", data={"csrf_token": csrf, "label": "Kettle", "room": "Kitchen"}
    )
    assert r.status_code == 303
    page = await c.get(f"/devices/{PLUG}")
    assert "<h1>Kettle" in page.text
    assert 'value="Kitchen"' in page.text


async def test_pages_render(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    for path in (
        "/",
        "/energy?by=day&view=device",
        "/energy?by=month",
        "/devices",
        f"/devices/{EM}",
    ):
        r = await c.get(path)
        assert r.status_code == 200, path
        assert "Content-Security-Policy" in r.headers
    r = await c.get("/energy?by=week", headers={"accept": "text/html"})
    assert r.status_code == 400
    assert "choose hour, day or month" in r.text
    r = await c.get("/energy?date=someday", headers={"accept": "text/html"})
    assert r.status_code == 400
    settings = await c.get("/settings")
    assert "Only admins can change settings" in settings.text


# -- hostile input: one bad value never stops the rest (issue 9) ----------------------------------

ZONE_FOLDERS = ["Europe", "America", "Etc", "Europe/", "posix", "__pycache__", "x" * 300]


@pytest.mark.parametrize("tz", ZONE_FOLDERS)
async def test_a_zone_folder_is_an_unknown_zone(
    admin: tuple[httpx.AsyncClient, str], tz: str
) -> None:
    """A folder of the tz database ("Europe") made ZoneInfo raise IsADirectoryError: a 500."""
    c, csrf = admin
    body = assert_problem(await c.get("/api/v1/energy", params={"tz": tz}), 400)
    assert body["invalid-params"] == [{"name": "tz", "reason": ANY_TEXT}]
    r = await c.patch("/api/v1/settings", json={"tz": tz}, headers={"x-csrf-token": csrf})
    assert 400 <= r.status_code < 500, r.text
    assert_problem(r, r.status_code)
    assert (await c.get("/api/v1/settings")).json()["tz"] == TZ


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()

NOT_JSON_NUMBERS = [
    b'{"retention_days": Infinity}',
    b'{"retention_days": -Infinity}',
    b'{"retention_days": NaN}',
    b'{"retention_days": 1e999}',
    b'{"tariff": {"price": NaN}}',
    b'{"tariff": {"price": 1' + b"0" * 400 + b"}}",
    b'{"tariff": {"periods": [{"start": "22:00", "end": "06:00", "price": -Infinity}]}}',
    b'{"tz": "\\ud800"}',  # a lone surrogate: not UTF-8, not storable
    b"[" * 5000 + b"]" * 5000,  # deeper than any parser should follow
]
OUT_OF_RANGE = [
    {"retention_days": 1e308},
    {"retention_days": 10**30},
    {"retention_days": -(10**30)},
    {"retention_days": True},
    {"retention_days": 1.5},
    {"retention_days": 0},
    {"retention_days": "Infinity"},
    {"tariff": {"price": 1e308}},
    {"tariff": {"price": "Infinity"}},
    {"tariff": {"price": "NaN"}},
    {"tariff": {"export_price": True}},
    {"tariff": {"currency": ""}},
    {"tariff": {"periods": [{"start": "", "end": "", "price": 0.1}]}},
    {"tz": None},
    {"tz": ""},
    {"tz": 3},
    {"grid_meters": [""] * 5 + ["\x00"]},
]


async def test_non_finite_numbers_never_reach_a_setting(
    admin: tuple[httpx.AsyncClient, str],
) -> None:
    """Python's json reads NaN, Infinity, 1e999 and lone surrogates; the API reads RFC 8259 JSON
    only (422), and numbers out of a setting's range are 4xx problems: nothing is stored."""
    c, csrf = admin
    h = {"x-csrf-token": csrf, "content-type": "application/json"}
    before = (await c.get("/api/v1/settings")).json()
    for raw in NOT_JSON_NUMBERS:
        body = assert_problem(await c.patch("/api/v1/settings", content=raw, headers=h), 422)
        assert "not JSON" in str(body["detail"]), body
    for bad in OUT_OF_RANGE:
        r = await c.patch("/api/v1/settings", json=bad, headers=h)
        assert r.status_code in (400, 422), (bad, r.text)
        assert_problem(r, r.status_code)
    assert (await c.get("/api/v1/settings")).json() == before
    label = b'{"label": "\\udc80 Kettle"}'
    r = await c.patch(f"/api/v1/devices/{PLUG}", content=label, headers=h)
    assert_problem(r, 422)
    assert (await c.get(f"/api/v1/devices/{PLUG}")).json()["label"] is None


async def test_the_settings_api_takes_whole_numbers_and_null(
    admin: tuple[httpx.AsyncClient, str],
) -> None:
    c, csrf = admin
    h = {"x-csrf-token": csrf}
    r = await c.patch("/api/v1/settings", json={"retention_days": 36600}, headers=h)
    assert r.json()["retention_days"] == 36600
    r = await c.patch("/api/v1/settings", json={"retention_days": None}, headers=h)
    assert r.json()["retention_days"] is None
    r = await c.patch("/api/v1/settings", json={"tariff": {"price": 1, "periods": []}}, headers=h)
    assert r.json()["tariff"]["price"] == 1.0


BAD_QUERIES = [
    ("/api/v1/energy", {"from": "0001-01-01"}, 400),
    ("/api/v1/energy", {"from": "9999-12-31"}, 400),
    ("/api/v1/energy", {"to": "99999-01-01"}, 400),
    ("/api/v1/energy", {"from": "-2026-01-01"}, 400),
    ("/api/v1/energy", {"from": "2026-03-15T12:00+24:00"}, 400),
    ("/api/v1/energy", {"from": "1e308"}, 400),
    ("/api/v1/energy", {"from": "inf"}, 400),
    ("/api/v1/energy", {"from": "\u0663\u0660\u0662\u0666-03-15"}, 400),  # Arabic-Indic digits
    ("/api/v1/energy", {"by": "\u202e"}, 400),
    ("/api/v1/energy", {"group": ""}, 400),
    ("/api/v1/energy", {"format": ""}, 422),
    ("/api/v1/energy", {"cost": "1e308"}, 422),
    ("/api/v1/energy", {"tz": "\U0001f4a9"}, 400),
    ("/api/v1/energy", {"device": ",".join(f"d{i}" for i in range(1001))}, 400),
    (f"/api/v1/devices/{PLUG}/events", {"limit": -1}, 422),
    (f"/api/v1/devices/{PLUG}/events", {"limit": 1001}, 422),
    (f"/api/v1/devices/{PLUG}/events", {"limit": 10**30}, 422),
    (f"/api/v1/devices/{PLUG}/events", {"limit": "1e3"}, 422),
    (f"/api/v1/devices/{PLUG}/events", {"limit": "nan"}, 422),
    ("/api/v1/latest", {"device": "x" * 201}, 422),
    ("/api/v1/live", {"device": "x" * 201}, 422),
]


async def test_bad_query_parameters_everywhere(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    for path, params, status in BAD_QUERIES:
        r = await c.get(path, params=params)
        assert r.status_code == status, (path, params, r.text)
        assert_problem(r, status)
    # empty and odd values that mean something: the defaults, or nothing found
    assert (await c.get("/api/v1/energy", params={"tz": "", "device": ""})).status_code == 200
    assert (await c.get("/api/v1/latest", params={"device": "\x00"})).json() == {"readings": []}
    r = await c.get("/api/v1/devices/%E2%80%AE%00/events")
    assert_problem(r, 404)  # no such device (devicedata: events, logs, power, stream)


async def test_a_device_clock_far_out_never_stops_a_page(
    store: Store, viewer: tuple[httpx.AsyncClient, str]
) -> None:
    """A device that sent ``ts`` 1e308 (datetime overflows) or -inf: its pages and its API
    answers render, the unusable times shown as unknown."""
    from kilowatch.model.messages import Event
    from kilowatch.store import Batch, DeviceUpdate

    c, _ = viewer
    odd = "shellyplus1pm-0000000000ff"
    for ts in (1e308, -1e308, float("inf"), float("-inf"), float("nan")):
        await store.commit(Batch(events=[Event(PLUG, ts, "sys", "clock", {"ts": ts})]))
    await store.commit(
        Batch(
            devices=[DeviceUpdate(odd, last_seen=1e308, online=True)],
            latest=[Reading(odd, "switch:0", 1e308, power_w=1e308, voltage_v=float("inf"))],
            events=[Event(odd, -1e308, "sys", "clock", {})],
        )
    )
    for path in ("/", "/devices", f"/devices/{PLUG}", f"/devices/{odd}"):
        r = await c.get(path)
        assert r.status_code == 200, (path, r.text[-2000:])
    events = (await c.get(f"/api/v1/devices/{PLUG}/events")).json()["events"]
    assert all("ts" not in e for e in events[:5]), "no time any clock can show"
    assert events[5]["ts"] == NOW - 60
    detail = (await c.get(f"/api/v1/devices/{odd}")).json()
    assert detail["last_seen"] is None
    assert detail["online"] is True, "said online; when it was last seen is unknown"
    assert "ts" not in detail["latest"][0]
    assert (await c.get(f"/api/v1/devices/{odd}/events")).json()["events"][0].get("ts") is None
    assert (await c.get("/api/v1/devices")).status_code == 200
    assert (await c.get("/api/v1/latest")).status_code == 200
    assert (await c.get("/metrics")).status_code == 200


async def test_405_names_every_method_of_the_path(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.delete("/api/v1/settings")
    assert_problem(r, 405)
    assert r.headers["allow"] == "GET, PATCH"
    r = await c.put(f"/api/v1/devices/{PLUG}")
    assert r.headers["allow"] == "GET, PATCH"
