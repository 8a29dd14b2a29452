"""Known data for the web tests, and helpers to reach the app (imported by conftest and tests)."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
from fastapi import FastAPI

from kilowatch.model.messages import Event, Reading
from kilowatch.model.slots import SlotEnergy
from kilowatch.store import Batch, DeviceUpdate

TZ = "Europe/Berlin"
BERLIN = ZoneInfo(TZ)
NOW = datetime(2026, 3, 15, 12, 30, tzinfo=BERLIN).timestamp()
"""The tests' injected clock: 12:30 local on a Sunday; 12 hours of today already have energy."""
ADMIN = ("alice", "alice-password-1")
VIEWER = ("victor", "victor-password-1")
PLUG = "shellyplugsg3-aabbccddeeff"
EM = "shellypro3em-112233445566"
ESTIMATED_HOUR = 5
LAB_PROFILE = """\
[select]
match = ["room=lab"]

[system]
name = "{{ device.name }}"
tz = "Europe/Vienna"
"""
"""A fleet profile for the devices in room ``lab``: their name and time zone (the fleet tests)."""


def hour_start(day: int, hour: int, month: int = 3) -> int:
    return int(datetime(2026, month, day, hour, tzinfo=BERLIN).timestamp())


def known_batch() -> Batch:
    """Today (15 March) 00:00–12:00 local: the plug uses 100 Wh + 10 Wh × hour each hour (4 slots),
    hour 5 estimated; the 3-phase meter's phases a/b/c use 10/20/30 Wh per hour, em:0 their sum
    and exports 7 Wh per hour. Yesterday: the plug used 240 Wh at 18:00. February: 1000 Wh."""
    slots: list[SlotEnergy] = []
    for hour in range(12):
        start = hour_start(15, hour)
        per_slot = (100 + 10 * hour) * 1000 // 4
        for q in range(4):
            slots.append(
                SlotEnergy(PLUG, "switch:0", start + 900 * q, per_slot, 0, hour == ESTIMATED_HOUR)
            )
            for phase, wh in (("a", 10), ("b", 20), ("c", 30)):
                slots.append(SlotEnergy(EM, f"em:0/{phase}", start + 900 * q, wh * 250, 0))
            slots.append(SlotEnergy(EM, "em:0", start + 900 * q, 60 * 250, 7 * 250))
    slots.append(SlotEnergy(PLUG, "switch:0", hour_start(14, 18), 240_000, 0))
    slots.append(SlotEnergy(PLUG, "switch:0", hour_start(10, 9, month=2), 1_000_000, 0))
    latest = [
        Reading(PLUG, "switch:0", NOW - 5, power_w=123.4, voltage_v=231.0, current_a=0.54,
                energy_wh=5000.0),
        Reading(EM, "em:0", NOW - 5, power_w=600.0, energy_wh=90000.0, returned_energy_wh=700.0),
        Reading(EM, "em:0/a", NOW - 5, power_w=100.0, voltage_v=230.1, current_a=0.45,
                frequency_hz=50.0, power_factor=0.97),
        Reading(EM, "em:0/b", NOW - 5, power_w=200.0, voltage_v=229.9, current_a=0.9),
        Reading(EM, "em:0/c", NOW - 5, power_w=300.0, voltage_v=231.2, current_a=1.3),
    ]  # fmt: skip
    devices = [
        DeviceUpdate(PLUG, last_seen=NOW - 5, online=True, mac="AABBCCDDEEFF", model="S3PL-00112EU",
                     gen=3, fw_ver="1.4.4", available_update="1.5.0", name="Kettle plug",
                     source="shelly"),
        DeviceUpdate(EM, last_seen=NOW - 5, online=True, mac="112233445566", model="SPEM-003CEBEU",
                     gen=2, fw_ver="1.4.4", name="Main panel", source="shelly"),
        DeviceUpdate("shellypmminig3-000000000001", last_seen=NOW - 7200, online=False,
                     model="S3PM-001PCEU16", gen=3, fw_ver="1.3.3", source="shelly"),
    ]  # fmt: skip
    events = [Event(PLUG, NOW - 60, "sys", "config_changed", {"cfg_rev": 7})]
    return Batch(slots=slots, devices=devices, latest=latest, events=events)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    # https: the session cookie is Secure, and httpx's cookie jar sends it only over https.
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)),
        base_url="https://testserver",
    )


async def login(c: httpx.AsyncClient, user: str, password: str) -> str:
    """Log in through the form; returns the CSRF token the pages carry."""
    r = await c.post("/login", data={"username": user, "password": password, "next": "/settings"})
    assert r.status_code == 303, r.text
    page = await c.get("/settings")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "the page carries no CSRF token"
    return match.group(1)


_USERS_META: dict[str, dict[str, object]] = {}


def users_meta() -> dict[str, dict[str, object]]:
    """``web.users`` holding ADMIN and VIEWER, hashed once with cheap argon2 parameters: verifying
    uses the parameters stored in the hash, so logins in tests cost milliseconds, not a second."""
    if not _USERS_META:
        from argon2 import PasswordHasher

        cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        for (name, password), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
            _USERS_META[name] = {"hash": cheap.hash(password), "role": role, "created": NOW}
    return {k: dict(v) for k, v in _USERS_META.items()}
