"""The Fleet page's API and pages: who may do what (viewers read, admins act with CSRF), 503
without the service, and, inside ``kilowatch serve`` with simulated devices, plan and apply
jobs that reach ``done`` with a report, keep compliance and leave audit entries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from webseed import ADMIN, LAB_PROFILE, NOW, PLUG, TZ, client_for, login, users_meta

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import USERS_KEY, Role
from kilowatch.broker.mosquitto import find_mosquitto
from kilowatch.store import Store
from kilowatch.store.audit import audit_entry
from kilowatch.store.protocol import Registration
from kilowatch.testing.service import running_service, service_settings
from kilowatch.web import create_app

HOST = "127.0.93.1"
JOB_TIMEOUT_S = 60.0


# --- without the service --------------------------------------------------------------------


async def test_viewers_read_admins_act_and_actions_need_the_service(
    store: Store, admin: tuple[httpx.AsyncClient, str], viewer: tuple[httpx.AsyncClient, str]
) -> None:
    await store.register([Registration(device=PLUG, address="127.0.93.9", model="S3PL-00112EU")])
    c, csrf = admin
    v, v_csrf = viewer

    rows = (await v.get("/api/v1/fleet/devices")).json()["devices"]
    assert [r["device"] for r in rows] == [PLUG]
    # the intake's record wins over the registry's: its firmware, its update, its name
    assert rows[0]["fw_ver"] == "1.4.4" and rows[0]["available_update"] == "1.5.0"
    assert rows[0]["name"] == "Kettle plug" and rows[0]["compliance"] is None

    body = {"profile": "lab.toml"}
    for path in ("/api/v1/fleet/plan", "/api/v1/fleet/apply"):
        r = await v.post(path, json=body, headers={"x-csrf-token": v_csrf})
        assert r.status_code == 403 and r.json()["type"].endswith("/forbidden"), r.text
        r = await c.post(path, json=body)
        assert r.status_code == 403 and r.json()["type"].endswith("/csrf"), r.text
        r = await c.post(path, json=body, headers={"x-csrf-token": csrf})
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("/service-unavailable")
        assert "kilowatch serve" in r.json()["detail"]
    r = await c.post(
        "/api/v1/fleet/firmware", json={"stage": "beta"}, headers={"x-csrf-token": csrf}
    )
    assert r.status_code == 503
    r = await c.post(
        "/api/v1/fleet/apply", json={**body, "force": True}, headers={"x-csrf-token": csrf}
    )
    assert r.status_code == 422  # an unknown field
    assert (await v.get("/api/v1/fleet/jobs/nosuchjob")).status_code == 404

    # the pages: a viewer sees the table and no button, an admin the actions
    page = (await v.get("/fleet")).text
    assert PLUG in page and "never checked" in page and 'id="fleet-actions"' not in page
    page = (await c.get("/fleet")).text
    assert 'id="fleet-actions"' in page and 'id="fleet-no-service"' in page


async def test_the_audit_log_api_and_page(
    store: Store, viewer: tuple[httpx.AsyncClient, str]
) -> None:
    v, _ = viewer
    started = audit_entry("cli:ops", "fleet.apply", devices=["a", "b"], result="started",
                          detail={"profile": "home.toml"}, now=NOW - 60)  # fmt: skip
    await store.audit_append([
        audit_entry("web:alice", "fleet.adopt", devices=["a"], now=NOW - 120),
        started,
        audit_entry("cli:ops", "fleet.apply", devices=["a", "b"], result="partial",
                    detail={"profile": "home.toml", "failed": 1}, started=started, now=NOW - 30),
        audit_entry("web:alice", "settings.change", now=NOW - 10),
    ])  # fmt: skip
    entries = (await v.get("/api/v1/audit")).json()["entries"]
    assert [e["action"] for e in entries] == [
        "settings.change", "fleet.apply", "fleet.apply", "fleet.adopt"
    ]  # fmt: skip
    assert entries[1]["result"] == "partial" and entries[1]["detail"]["started"] == started.id
    only_b = (await v.get("/api/v1/audit", params={"device": "b"})).json()["entries"]
    assert [e["result"] for e in only_b] == ["partial", "started"]
    fleet = (await v.get("/api/v1/audit", params={"action": "fleet", "limit": 1})).json()
    assert [e["result"] for e in fleet["entries"]] == ["partial"]
    older = (await v.get("/api/v1/audit", params={"before": NOW - 100})).json()["entries"]
    assert [e["action"] for e in older] == ["fleet.adopt"]
    assert (await v.get("/api/v1/audit", params={"limit": 0})).status_code == 422

    page = (await v.get("/fleet/audit", params={"action": "fleet.apply"})).text
    assert "partial" in page and "cli:ops" in page and "settings.change" not in page
    assert "profile: home.toml" in page


# --- inside kilowatch serve, with simulated devices ------------------------------------------

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto 2.x is not installed"
)


@asynccontextmanager
async def fleet_site(tmp_path: Path, devices: int = 2) -> AsyncIterator[tuple[FastAPI, Any]]:
    """kilowatch serve (managed mosquitto, SQLite) with the web app over it, two simulated
    meters registered in room ``lab``, and the profile ``lab.toml`` (plus an invalid one)."""
    from shellysim import Fleet

    settings = service_settings(tmp_path)
    profiles = Path(settings.data_dir) / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "lab.toml").write_text(LAB_PROFILE)
    (profiles / "broken.toml").write_text("[system]\nname = 42\n")
    async with (
        running_service(settings) as running,
        Fleet(devices=devices, models=["pm1"], http_host=HOST, tick_s=0.05) as fleet,
    ):
        store = running.store
        await store.put_meta(USERS_KEY, users_meta())
        await store.register([
            Registration(device=d.id, mac=d.mac, model=d.spec.model, transport="lan",
                         address=f"{HOST}:{fleet.port(d)}", name=f"Meter {i}", room="lab")
            for i, d in enumerate(fleet.devices)
        ])  # fmt: skip
        app = create_app(store, live=running.hub, site_tz=TZ, running=running)
        async with app.router.lifespan_context(app):
            yield app, fleet


async def finish(c: httpx.AsyncClient, started: httpx.Response) -> dict[str, Any]:
    """Poll the job of a 202 answer until it is no longer running; its last state."""
    assert started.status_code == 202, started.text
    job: dict[str, Any] = started.json()["job"]
    assert started.headers["location"] == f"/api/v1/fleet/jobs/{job['id']}"
    async with asyncio.timeout(JOB_TIMEOUT_S):
        while job["state"] == "running":
            await asyncio.sleep(0.1)
            job = (await c.get(f"/api/v1/fleet/jobs/{job['id']}")).json()["job"]
    return job


async def audit_of(c: httpx.AsyncClient, action: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (
        await c.get("/api/v1/audit", params={"action": action})
    ).json()["entries"]
    return entries


@needs_mosquitto
async def test_plan_and_apply_jobs_on_simulated_devices(tmp_path: Path) -> None:
    async with fleet_site(tmp_path) as (app, fleet), client_for(app) as c:
        csrf = await login(c, *ADMIN)
        ids = sorted(d.id for d in fleet.devices)
        headers = {"x-csrf-token": csrf}

        # a plan: each device drifted, nothing written, not audited
        job = await finish(c, await c.post("/api/v1/fleet/plan", json={"profile": "lab.toml"},
                                           headers=headers))  # fmt: skip
        assert job["state"] == "done", job
        assert job["actor"] == f"web:{ADMIN[0]}" and job["total"] == 2 and job["done"] == 2
        assert sorted(r["device"] for r in job["rows"]) == ids
        assert {r["status"] for r in job["rows"]} == {"drifted"}
        assert "Europe/Vienna" in job["rows"][0]["detail"]
        rows = (await c.get("/api/v1/fleet/devices")).json()["devices"]
        assert {r["compliance"]["state"] for r in rows} == {"drifted"}
        assert rows[0]["compliance"]["profile"] == "lab.toml"
        assert all(d.config["sys"]["location"]["tz"] != "Europe/Vienna" for d in fleet.devices)

        # a dry run: planned, still nothing written, not audited
        body = {"profile": "lab.toml", "dry_run": True}
        dry = await finish(c, await c.post("/api/v1/fleet/apply", headers=headers, json=body))
        assert dry["state"] == "done" and {r["status"] for r in dry["rows"]} == {"planned"}
        assert await audit_of(c, "fleet") == []

        # the apply: ok, audited as started then ok, devices in sync
        done = await finish(c, await c.post("/api/v1/fleet/apply", json={"profile": "lab.toml"},
                                            headers=headers))  # fmt: skip
        assert done["state"] == "done", done
        assert {r["status"] for r in done["rows"]} == {"ok"}
        assert done["report"]["summary"]["ok"] == 2 and done["result"].startswith("ok")
        assert all(d.config["sys"]["location"]["tz"] == "Europe/Vienna" for d in fleet.devices)
        entries = await audit_of(c, "fleet.apply")
        assert [e["result"] for e in entries] == ["ok", "started"]
        assert entries[0]["actor"] == f"web:{ADMIN[0]}" and sorted(entries[0]["devices"]) == ids
        assert entries[0]["detail"]["profile"] == "lab.toml" and entries[0]["detail"]["ok"] == 2
        rows = (await c.get("/api/v1/fleet/devices")).json()["devices"]
        assert {r["compliance"]["state"] for r in rows} == {"in-sync"}
        page = (await c.get("/fleet")).text
        assert page.count(">in sync<") == 2 and "lab.toml" in page

        # an API token's actor is its name
        token = await create_token(app.state.web.store, ADMIN[0], role=Role.ADMIN, name="ci",
                                   now=NOW)  # fmt: skip
        async with client_for(app) as api:
            api.headers["authorization"] = f"Bearer {token}"
            again = await finish(api, await api.post("/api/v1/fleet/apply",
                                                     json={"profile": "lab.toml"}))  # fmt: skip
        assert {r["status"] for r in again["rows"]} == {"unchanged"}
        assert (await audit_of(c, "fleet.apply"))[0]["actor"] == "api:ci"


@needs_mosquitto
async def test_bad_requests_and_one_job_of_a_kind_at_a_time(tmp_path: Path) -> None:
    async with fleet_site(tmp_path) as (app, fleet), client_for(app) as c:
        headers = {"x-csrf-token": await login(c, *ADMIN)}
        profiles = (await c.get("/api/v1/fleet/profiles")).json()["profiles"]
        assert profiles == ["broken.toml", "lab.toml"]

        r = await c.post("/api/v1/fleet/plan", json={"profile": "nope.toml"}, headers=headers)
        assert r.status_code == 400 and "broken.toml, lab.toml" in r.json()["detail"]
        r = await c.post("/api/v1/fleet/plan", json={"profile": "../x.toml"}, headers=headers)
        assert r.status_code == 400
        r = await c.post("/api/v1/fleet/plan", json={"profile": "broken.toml"}, headers=headers)
        assert r.status_code == 400 and "system.name" in r.json()["detail"], r.text
        r = await c.post("/api/v1/fleet/plan", headers=headers,
                         json={"profile": "lab.toml", "select": ["room=attic"]})  # fmt: skip
        assert r.status_code == 400 and "no registered device matches" in r.json()["detail"]
        r = await c.post("/api/v1/fleet/plan", headers=headers,
                         json={"profile": "lab.toml", "select": ["colour=red"]})  # fmt: skip
        assert r.status_code == 400
        r = await c.post("/api/v1/fleet/firmware", headers=headers,
                         json={"stage": "nightly"})  # fmt: skip
        assert r.status_code in (400, 422)

        first = await c.post("/api/v1/fleet/plan", json={"profile": "lab.toml"}, headers=headers)
        second = await c.post("/api/v1/fleet/plan", json={"profile": "lab.toml"}, headers=headers)
        assert second.status_code == 409 and second.json()["type"].endswith("/job-running")
        assert (await finish(c, first))["state"] == "done"
        one = fleet.devices[0].id
        body = {"profile": "lab.toml", "devices": [one]}
        only = await finish(c, await c.post("/api/v1/fleet/plan", headers=headers, json=body))
        assert [r["device"] for r in only["rows"]] == [one]


@needs_mosquitto
async def test_a_firmware_rollout_job_updates_in_waves_and_is_audited(tmp_path: Path) -> None:
    async with fleet_site(tmp_path, devices=3) as (app, fleet), client_for(app) as c:
        headers = {"x-csrf-token": await login(c, *ADMIN)}
        before = {d.id: d.ver for d in fleet.devices}
        body = {"stage": "stable", "canary": 1, "max_failures": 0}
        job = await finish(c, await c.post("/api/v1/fleet/firmware", json=body, headers=headers))
        assert job["state"] == "done", job
        assert job["kind"] == "firmware" and job["options"]["stage"] == "stable"
        assert {r["status"] for r in job["rows"]} == {"updated"}, job["rows"]
        assert job["wave"] == "2/2" and job["done"] == 3
        assert job["report"]["waves"] and job["result"].startswith("ok")
        assert all(d.ver != before[d.id] for d in fleet.devices)
        end, start = await audit_of(c, "firmware")
        assert (end["action"], end["result"], start["result"]) == (
            "firmware.update",
            "ok",
            "started",
        )
        assert end["actor"] == f"web:{ADMIN[0]}" and len(end["devices"]) == 3
