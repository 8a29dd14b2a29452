"""A device's power per minute, events and debug-log lines over the API, and the stream of new
ones, over a real store of each kind (the web fixtures' known data plus the lines seeded here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from webseed import EM, NOW, PLUG, TZ, VIEWER, users_meta

from kilowatch.accounts.tokens import create_token
from kilowatch.accounts.users import USERS_KEY, Role
from kilowatch.intake.live import LiveHub
from kilowatch.model.messages import Event, LogLine
from kilowatch.store import Batch, DeviceUpdate, Store, open_store
from kilowatch.store.protocol import PowerMinute
from kilowatch.web import create_app, serve_web
from kilowatch.web.devicedata import power_json

END = (int(NOW) // 60 + 1) * 60
"""The answer's end: the minute after the clock's (NOW is a whole minute)."""
START = END - 24 * 3600
DAY = 24 * 60


def plug_w(i: int) -> float:
    return 10.0 + i % 97 + 0.25


def seeded_batch() -> Batch:
    """24 hours of the plug's minutes (and one on each side of the window); the 3-phase meter's
    last 10 minutes with its phases; 30 log lines of the plug, two of them equal but for their
    place, and one whose clock is broken."""
    power = [PowerMinute(PLUG, "switch:0", START + 60 * i, plug_w(i), 6) for i in range(DAY)]
    power += [
        PowerMinute(PLUG, "switch:0", START - 60, 9999.0),
        PowerMinute(PLUG, "switch:0", END, 9999.0),
    ]
    for i in range(DAY - 10, DAY):
        minute = START + 60 * i
        power.append(PowerMinute(EM, "em:0", minute, 600.0))
        for phase, w in (("a", 100.0), ("b", 200.0), ("c", 300.0)):
            power.append(PowerMinute(EM, f"em:0/{phase}", minute, w))
    logs = [
        LogLine(PLUG, NOW - 100 + i, f"line {i}", level=2, seq=i, source="mg_rpc.c:314")
        for i in range(28)
    ]
    logs.append(LogLine(PLUG, NOW - 50, "same", level=1, seq=None))
    logs.append(LogLine(PLUG, 1e308, "clock gone astray", level=0))
    events = [Event(PLUG, NOW - 30, "sys", "ota_progress", {"progress_percent": 40})]
    return Batch(power=power, logs=logs, events=events)


@pytest.fixture
async def seeded(store: Store) -> Store:
    await store.commit(seeded_batch())
    return store


@pytest.fixture
async def client(seeded: Store, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_token(seeded, VIEWER[0], role=Role.VIEWER, name="t", now=NOW)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="https://testserver",
        headers={"authorization": f"Bearer {token}"},
    ) as c:
        yield c


def assert_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    assert body["status"] == status and body["detail"]
    return body


async def test_power_is_24_hours_of_minutes_per_channel_and_total(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.get(f"/api/v1/devices/{PLUG}/power", params={"hours": 24})).json()
    assert (body["device"], body["start"], body["end"], body["step_s"]) == (PLUG, START, END, 60)
    values = body["channels"]["switch:0"]
    assert len(values) == DAY and len(body["total_w"]) == DAY
    assert values == [plug_w(i) for i in range(DAY)], "the minutes outside are left out"
    assert body["total_w"] == values
    default = (await client.get(f"/api/v1/devices/{PLUG}/power")).json()
    assert default == body


async def test_power_total_counts_a_whole_not_its_parts(client: httpx.AsyncClient) -> None:
    body = (await client.get(f"/api/v1/devices/{EM}/power", params={"hours": 1})).json()
    assert body["start"] == END - 3600 and len(body["total_w"]) == 60
    assert sorted(body["channels"]) == ["em:0", "em:0/a", "em:0/b", "em:0/c"]
    assert body["total_w"] == [None] * 50 + [600.0] * 10
    assert body["channels"]["em:0/c"][-1] == 300.0


def test_power_total_adds_channels_and_parts_of_an_absent_whole() -> None:
    minutes = [
        PowerMinute("d", "switch:0", 0, 10.0),
        PowerMinute("d", "switch:1", 0, 5.0),
        PowerMinute("d", "switch:1", 60, 7.0),
        PowerMinute("d", "em:1/a", 120, 1.5),
        PowerMinute("d", "em:1/b", 120, 2.5),
    ]
    body = power_json("d", minutes, 0, 240)
    assert body["total_w"] == [15.0, 7.0, 4.0, None]


async def test_logs_and_events_newest_first_with_limits(client: httpx.AsyncClient) -> None:
    logs = (await client.get(f"/api/v1/devices/{PLUG}/logs")).json()["logs"]
    assert len(logs) == 30
    assert logs[0] == {"kind": "log", "device": PLUG, "message": "clock gone astray", "level": 0}
    assert logs[1] == {"kind": "log", "device": PLUG, "ts": NOW - 50, "message": "same",
                       "level": 1}  # fmt: skip
    assert logs[2]["message"] == "line 27" and logs[2]["source"] == "mg_rpc.c:314"
    assert logs[2]["seq"] == 27 and logs[-1]["message"] == "line 0"
    few = (await client.get(f"/api/v1/devices/{PLUG}/logs", params={"limit": 3})).json()["logs"]
    assert few == logs[:3]
    events = (await client.get(f"/api/v1/devices/{PLUG}/events")).json()["events"]
    assert [e["event"] for e in events] == ["ota_progress", "config_changed"]
    assert events[0]["data"] == {"progress_percent": 40}
    one = (await client.get(f"/api/v1/devices/{PLUG}/events", params={"limit": 1})).json()
    assert one["events"] == events[:1]
    assert (await client.get(f"/api/v1/devices/{EM}/logs")).json() == {"logs": []}


@pytest.mark.parametrize("what", ["power", "events", "logs", "stream"])
async def test_unknown_device_is_a_404_problem(client: httpx.AsyncClient, what: str) -> None:
    body = assert_problem(await client.get(f"/api/v1/devices/nosuch-000000000000/{what}"), 404)
    assert "GET /api/v1/devices" in str(body["detail"])


@pytest.mark.parametrize(
    ("what", "params"),
    [
        ("power", {"hours": 0}),
        ("power", {"hours": 49}),
        ("power", {"hours": "a day"}),
        ("events", {"limit": 0}),
        ("logs", {"limit": 1001}),
        ("logs", {"limit": -1}),
        ("stream", {"limit": 0}),
    ],
)
async def test_parameters_out_of_range_are_422(
    client: httpx.AsyncClient, what: str, params: dict[str, int | str]
) -> None:
    assert_problem(await client.get(f"/api/v1/devices/{PLUG}/{what}", params=params), 422)


@pytest.mark.parametrize("what", ["power", "events", "logs", "stream"])
async def test_login_is_needed(anon: httpx.AsyncClient, seeded: Store, what: str) -> None:
    assert_problem(await anon.get(f"/api/v1/devices/{PLUG}/{what}"), 401)


async def test_the_openapi_document_describes_the_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/v1/openapi.json")).json()
    for what in ("power", "events", "logs", "stream"):
        op = doc["paths"][f"/api/v1/devices/{{device}}/{what}"]["get"]
        assert set(op["responses"]) == {"200", "401", "404", "422", "503"}, what
        assert op["summary"] and op["tags"] == ["devices"]
    stream = doc["paths"]["/api/v1/devices/{device}/stream"]["get"]
    assert set(stream["responses"]["200"]["content"]) == {"text/event-stream"}
    hours = doc["paths"]["/api/v1/devices/{device}/power"]["get"]["parameters"][1]
    assert hours["name"] == "hours" and hours["schema"]["maximum"] == 48


def frames(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each server-sent event so far."""
    out: list[tuple[str, dict[str, Any]]] = []
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            out.append((event, json.loads(line.removeprefix("data: "))))
    return out


@contextlib.asynccontextmanager
async def plug_stream(store: Store, **params: int) -> AsyncIterator[httpx.Response]:
    """The plug's device stream over a real socket, as a viewer's token reads it: the app over
    ``store`` is served on a free port until the block ends."""
    app: FastAPI = create_app(store, live=LiveHub(), site_tz=TZ, clock=lambda: NOW)
    token = await create_token(store, VIEWER[0], role=Role.VIEWER, name="sse", now=NOW)
    started = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(serve_web(app, "127.0.0.1", 0, started=started))
        async with asyncio.timeout(10):
            await started.wait()
        try:
            async with (
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{app.state.port}",
                    headers={"authorization": f"Bearer {token}"},
                ) as c,
                c.stream("GET", f"/api/v1/devices/{PLUG}/stream", params=params) as r,
            ):
                yield r
        finally:
            server.cancel()


async def test_stream_sends_the_newest_then_each_new_line_once(seeded: Store) -> None:
    """Over a real socket, as the page's EventSource reads it: the newest first (``reset``), then
    lines stored afterwards, one of them equal to one already sent, each once."""
    again = LogLine(PLUG, NOW - 50, "same", level=1)
    fresh = [LogLine(PLUG, NOW + 1, "after 1"), again, LogLine(PLUG, NOW + 1, "after 1")]
    got: list[tuple[str, dict[str, Any]]] = []
    async with plug_stream(seeded, limit=5) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        stored = False
        async with asyncio.timeout(15):
            async for line in r.aiter_lines():
                lines.append(line)
                got = frames(lines)
                if len(got) == 2 and not stored:  # the newest logs and events came
                    stored = True
                    await seeded.commit(Batch(logs=fresh[:2]))
                    await seeded.commit(
                        Batch(
                            logs=fresh[2:],
                            events=[Event(PLUG, NOW + 2, "sys", "ota_success")],
                        )
                    )
                later = [i for e, f in got[2:] if e == "logs" for i in f["items"]]
                if len(later) >= 3 and any(e == "events" for e, _ in got[2:]):
                    break
    (first, logs), (second, events) = got[0], got[1]
    assert (first, logs["reset"], second, events["reset"]) == ("logs", True, "events", True)
    assert [x["message"] for x in logs["items"]] == [
        "clock gone astray", "same", "line 27", "line 26", "line 25"
    ]  # fmt: skip
    assert len(events["items"]) == 2
    later = [f for e, f in got[2:] if e == "logs"]
    assert all(f["reset"] is False and f["gap"] is False for f in later)
    # each frame newest first, frames in the order stored: every new line once, in order
    assert [i["message"] for f in later for i in reversed(f["items"])] == [
        "after 1", "same", "after 1"
    ]  # fmt: skip
    news = [i["event"] for e, f in got[2:] if e == "events" for i in f["items"]]
    assert news == ["ota_success"]


async def test_a_stopping_app_ends_the_stream_after_the_newest(
    seeded: Store, app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.stopping.set()
    r = await client.get(f"/api/v1/devices/{PLUG}/stream", params={"limit": 2})
    assert r.status_code == 200
    got = frames(r.text.splitlines())
    assert [e for e, _ in got] == ["logs", "events"]
    assert all(f["reset"] for _, f in got)


async def test_a_store_failing_under_the_stream_ends_it_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store goes away while a page listens: the stream ends (the browser reconnects and
    starts afresh) instead of failing the server with a traceback."""
    store = open_store(f"sqlite:///{tmp_path / 'gone.db'}")
    await store.__aenter__()
    await store.commit(Batch(devices=[DeviceUpdate(PLUG, last_seen=NOW)]))
    await store.put_meta(USERS_KEY, users_meta())
    async with plug_stream(store) as r:
        lines: list[str] = []
        async with asyncio.timeout(10):
            async for line in r.aiter_lines():
                lines.append(line)
                if len(frames(lines)) == 2:
                    await store.__aexit__(None, None, None)
        # the loop ended: the server closed the stream
    assert [e for e, _ in frames(lines)] == ["logs", "events"]
    assert "device stream of shellyplugsg3-aabbccddeeff ends" in caplog.text
