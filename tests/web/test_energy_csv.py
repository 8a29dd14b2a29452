"""The Energy page's CSV (``/api/v1/energy.csv``), grid meters' untracked energy, no cost without
a tariff, the login form after a wrong password, and the audit of settings changes and renames."""

from __future__ import annotations

import csv
import io
import re

import httpx
from fastapi import FastAPI
from webseed import ADMIN, EM, ESTIMATED_HOUR, NOW, PLUG, client_for

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import Role
from kilowatch.store import Store
from kilowatch.web.site import save_site

DAY = {"by": "hour", "from": "2026-03-15", "to": "2026-03-16"}


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def set_site(app: FastAPI, store: Store, data: dict[str, object]) -> None:
    """Change the site settings the way Settings does, without the audit (tested below)."""
    state = app.state.web
    state.site = state.site.updated(data)
    await save_site(store, state.site)


async def test_csv_is_the_view_with_every_bucket(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.get("/api/v1/energy.csv", params={**DAY, "group": "total"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == (
        'attachment; filename="kilowatch-energy-2026-03-15-hour-total.csv"'
    )
    header = r.text.splitlines()[0].split(",")
    assert header == [
        "start", "end", "import_wh", "export_wh", "estimated", "Total import_wh", "Total export_wh"
    ]  # fmt: skip
    rows = table(r.text)
    assert len(rows) == 24  # every hour of the day, those without energy too
    assert rows[0]["start"] == "2026-03-15T00:00:00+01:00"
    assert rows[0]["end"] == "2026-03-15T01:00:00+01:00"
    assert rows[23]["end"] == "2026-03-16T00:00:00+01:00"
    # plug 100 + 10 h Wh, the meter 60 Wh (its phases counted once), 7 Wh exported
    assert [row["import_wh"] for row in rows[:2]] == ["160.000", "170.000"]
    assert rows[12]["import_wh"] == "0.000"
    assert [row["estimated"] == "true" for row in rows] == [h == ESTIMATED_HOUR for h in range(24)]
    # the same numbers as the JSON route with the same query
    body = (await c.get("/api/v1/energy", params={**DAY, "group": "total"})).json()
    by_start = {row["start"]: row for row in body["rows"]}
    for row in rows:
        json_row = by_start.get(row["start"])
        assert float(row["import_wh"]) == (json_row["energy_wh"] if json_row else 0.0)
        assert float(row["export_wh"]) == (json_row["returned_energy_wh"] if json_row else 0.0)


async def test_csv_views_by_device_and_channel(viewer: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = viewer
    r = await c.get("/api/v1/energy.csv", params={**DAY, "group": "device"})
    rows = table(r.text)
    assert rows[3]["Kettle plug import_wh"] == "130.000"
    assert rows[3]["Main panel import_wh"] == "60.000"
    assert rows[3]["Main panel export_wh"] == "7.000"
    assert "untracked_wh" not in rows[0]  # no grid meters set
    r = await c.get("/api/v1/energy.csv", params={**DAY, "group": "channel", "device": EM})
    rows = table(r.text)
    # the phases, not em:0 beside them; the totals count the meter once
    assert {k for k in rows[0] if k.startswith("Main panel")} == {
        "Main panel · em:0/a import_wh", "Main panel · em:0/b import_wh",
        "Main panel · em:0/c import_wh",
    }  # fmt: skip
    assert rows[0]["import_wh"] == "60.000"
    r = await c.get("/api/v1/energy.csv", params={"by": "day", "from": "2026-03", "group": "total"})
    rows = table(r.text)
    assert len(rows) == 31
    assert rows[13]["start"] == "2026-03-14T00:00:00+01:00"
    assert rows[13]["import_wh"] == "240.000"
    assert (await c.get("/api/v1/energy.csv", params={"group": "phase"})).status_code == 400
    assert (await c.get("/api/v1/energy.csv", params={"by": "week"})).status_code == 400


async def test_cost_column_only_with_a_tariff(
    app: FastAPI, store: Store, viewer: tuple[httpx.AsyncClient, str]
) -> None:
    c, _ = viewer
    page = (await c.get("/")).text
    assert "cost" not in page.lower().replace("costs", "")  # no "cost 0.00 EUR"
    energy = (await c.get("/energy")).text
    assert 'id="total-cost"' not in energy
    await set_site(app, store, {"tariff": {"currency": "EUR", "price": 0.5}})
    r = await c.get("/api/v1/energy.csv", params={**DAY, "group": "device"})
    rows = table(r.text)
    assert rows[0]["cost_eur"] == "0.0800"  # 160 Wh at 0.50 per kWh
    total = (
        await c.get("/api/v1/energy", params={**DAY, "group": "total", "cost": "true"})
    ).json()["totals"]["cost"]
    assert abs(sum(float(row["cost_eur"]) for row in rows) - total) < 1e-6
    assert "0.0000" not in rows[0]["cost_eur"]
    assert re.search(r'class="cost">[\d.,]+ EUR', (await c.get("/")).text)
    assert 'id="total-cost"' in (await c.get("/energy")).text


async def test_grid_meter_untracked(
    app: FastAPI, store: Store, viewer: tuple[httpx.AsyncClient, str]
) -> None:
    c, _ = viewer
    await set_site(app, store, {"grid_meters": [EM]})
    for group in ("device", "total"):
        r = await c.get("/api/v1/energy.csv", params={**DAY, "group": group})
        rows = table(r.text)
        assert len(rows) == 24
        grid = (
            await c.get("/api/v1/energy", params={**DAY, "group": "total", "device": EM})
        ).json()["rows"]
        for h, row in enumerate(rows[:12]):
            # the totals are the grid meter's alone
            assert float(row["import_wh"]) == grid[h]["energy_wh"] == 60.0
            assert float(row["export_wh"]) == 7.0
            # the plug is not behind this meter in the seed: the sub-meters read more than the
            # grid meter, and the untracked energy is negative, shown as it is
            assert float(row["untracked_wh"]) == 60.0 - 7.0 - (100 + 10 * h)
        assert "Main panel import_wh" not in rows[0]
        sub = "Kettle plug import_wh" if group == "device" else "Sub-meters import_wh"
        assert float(rows[3][sub]) == 130.0
    page = await c.get("/energy", params={"by": "hour", "date": "2026-03-15", "view": "device"})
    assert "Untracked" in page.text and 'id="grid-note"' in page.text
    link = re.search(r'id="csv-download" href="([^"]+)"', page.text)
    assert link is not None
    csv_rows = table((await c.get(link.group(1).replace("&amp;", "&"))).text)
    shown = re.findall(r'data-import-wh="([^"]+)" data-export-wh="[^"]+" data-estimated="[^"]+" '
                       r'data-untracked-wh="([^"]+)"', page.text)  # fmt: skip
    assert len(shown) == len(csv_rows) == 24
    for (imp, untracked), row in zip(shown, csv_rows, strict=True):
        assert float(imp) == float(row["import_wh"])
        assert float(untracked) == float(row["untracked_wh"])
    # a device filter shows that device: no split
    r = await c.get("/api/v1/energy.csv", params={**DAY, "group": "device", "device": PLUG})
    assert "untracked_wh" not in r.text.splitlines()[0]


async def test_wrong_password_keeps_the_user_name(anon: httpx.AsyncClient) -> None:
    r = await anon.post("/login", data={"username": ADMIN[0], "password": "nope", "next": "/"})
    assert r.status_code == 401
    assert f'name="username" value="{ADMIN[0]}"' in r.text
    assert "Wrong user name or password." in r.text
    assert "demo" not in r.text.lower()  # not the demo: no demo hint
    assert 'value=""' in (await anon.get("/login")).text


async def test_settings_changes_and_renames_are_audited(
    store: Store, app: FastAPI, admin: tuple[httpx.AsyncClient, str]
) -> None:
    c, csrf = admin
    r = await c.post(
        "/settings",
        data={"csrf_token": csrf, "tz": "Europe/Berlin", "currency": "EUR", "price": "0.31",
              "grid_meters": EM},
    )  # fmt: skip
    assert r.status_code == 303, r.text
    entries = await store.audit(action="settings.change")
    assert [e.result for e in entries] == ["ok", "started"]
    ok = entries[0]
    assert ok.actor == f"web:{ADMIN[0]}"
    assert ok.detail["grid_meters"] == {"from": [], "to": [EM]}
    assert ok.detail["tariff"]["to"]["price"] == 0.31
    assert "tz" not in ok.detail  # unchanged settings are not listed
    # saving the same again changes nothing and records nothing
    await c.post("/settings", data={"csrf_token": csrf, "tz": "Europe/Berlin", "price": "0.31",
                                    "grid_meters": EM})  # fmt: skip
    assert len(await store.audit(action="settings.change")) == 2

    r = await c.post(f"/devices/{PLUG}", data={"csrf_token": csrf, "label": "Kettle", "room": ""})
    assert r.status_code == 303
    token = await create_token(store, ADMIN[0], role=Role.ADMIN, name="script", now=NOW)
    async with client_for(app) as api:
        r = await api.patch(
            f"/api/v1/devices/{PLUG}",
            json={"room": "Kitchen"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        r = await api.patch(
            "/api/v1/settings",
            json={"retention_days": 400},
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
    renames = [e for e in await store.audit(device=PLUG) if e.result == "ok"]
    assert [(e.actor, e.action, dict(e.detail)) for e in renames] == [
        ("api:script", "device.rename", {"room": {"from": None, "to": "Kitchen"},
                                          "started": renames[0].detail["started"]}),
        (f"web:{ADMIN[0]}", "device.rename", {"label": {"from": None, "to": "Kettle"},
                                                "started": renames[1].detail["started"]}),
    ]  # fmt: skip
    settings = (await store.audit(action="settings.change"))[0]
    assert settings.actor == "api:script"
    assert settings.detail["retention_days"] == {"from": None, "to": 400}


def test_power_now_of_a_meter_whose_whole_has_no_power() -> None:
    from kilowatch.model.messages import Reading
    from kilowatch.web.views import power_now

    phases = [Reading(EM, f"em:0/{p}", NOW, power_w=w) for p, w in (("a", 1.0), ("b", 2.0))]
    assert power_now([Reading(EM, "em:0", NOW, power_w=10.0), *phases]) == 10.0
    # the meter's last message carried only energy: its phases still say the power
    assert power_now([Reading(EM, "em:0", NOW, energy_wh=5.0), *phases]) == 3.0
    assert power_now([Reading(EM, "em:0", NOW, energy_wh=5.0)]) is None
