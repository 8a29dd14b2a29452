"""Screenshots of every dashboard page with realistic data, for the README (docs/screenshots/*.png).

Writes a small home + workshop (plugs, PM Minis, a Pro 3EM main meter with three phases, a PV
inverter that exports) with 90 days of 15-minute energy and the last day's power minutes through
the store API into a temporary SQLite file, serves the app on a free port and drives Debian's
headless Chromium through the pages.

    PYTHONPATH=src python bench/screenshots.py [--out docs/screenshots]

Or of a running kilowatch, such as ``kilowatch demo`` (its grid meter's untracked energy, power
minutes, events, debug log, example alert rules and audit entries included; the README's images
are shot this way):

    PYTHONPATH=src python bench/screenshots.py --url http://127.0.0.1:8000 --user demo \
        --password kilowatch-demo --month 2026-11-01

Only reads: it logs in and looks, never saves anything.
"""

# ruff: noqa: E501 - the device table reads best one device per line

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from kilowatch.accounts.users import Role, add_user
from kilowatch.intake.live import LiveHub
from kilowatch.model.messages import Event, Reading
from kilowatch.model.slots import SLOT_SECONDS, SlotEnergy, slot_of
from kilowatch.query.tariff import Tariff
from kilowatch.store import Batch, DeviceUpdate, Store, open_store
from kilowatch.store.protocol import PowerMinute
from kilowatch.web import create_app, serve_web
from kilowatch.web.site import SiteSettings, save_site

TZ = "Europe/Berlin"
USER, PASSWORD = "admin", "screenshot-pass"
DAYS = 90
DEVICE_READY = ("#live-state[data-state='live']", "#power-chart[data-drawn]")
"""The device page is drawn: its live table connected and its power chart drawn."""
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@dataclass(frozen=True)
class Load:
    device: str
    channel: str
    name: str
    room: str
    model: str
    base_w: float
    """Standby / continuous draw."""
    peaks: tuple[tuple[float, float, float], ...]
    """(local hour centre, width in hours, extra W) bumps over the day."""
    export: bool = False


LOADS = (
    Load("shellypmminig3-84fce63a1b20", "pm1:0", "Boiler", "Bathroom", "S3PM-001PCEU16", 15,
         ((6.5, 1.0, 2000), (19.5, 1.5, 1500))),
    Load("shellypmminig3-84fce63a2c41", "pm1:0", "Air conditioner", "Living room", "S3PM-001PCEU16", 5,
         ((14.5, 3.0, 900),)),
    Load("shellyplugsg3-e4b063f01a10", "switch:0", "Fridge", "Kitchen", "S3PL-00112EU", 45,
         ((12.0, 12.0, 20),)),
    Load("shellyplugsg3-e4b063f01a11", "switch:0", "Washing machine", "Utility", "S3PL-00112EU", 1,
         ((10.0, 1.0, 1100),)),
    Load("shellyplugsg3-e4b063f01a12", "switch:0", "Desk", "Office", "S3PL-00112EU", 8,
         ((11.0, 3.5, 140),)),
    Load("shelly1pmg4-3c8a1fb02d50", "switch:0", "Heat pump", "Garage", "S4SW-001P16EU", 30,
         ((5.5, 2.0, 1800), (21.0, 2.0, 1200))),
    Load("shellyplugsg3-e4b063f01a13", "switch:0", "Dishwasher", "Kitchen", "S3PL-00112EU", 1,
         ((20.5, 1.0, 1300),)),
    Load("shellypmminig3-84fce63a3d62", "pm1:0", "PV inverter", "Roof", "S3PM-001PCEU16", 0,
         ((13.0, 3.5, 2600),), export=True),
)  # fmt: skip
EM = "shellypro3em-08f9e0e5a7c4"
OFFLINE = "shellypmminig3-84fce63a4e83"


def power_at(load: Load, local: datetime, day_seed: float) -> float:
    hour = local.hour + local.minute / 60
    w = load.base_w
    for centre, width, extra in load.peaks:
        w += extra * math.exp(-(((hour - centre) / width) ** 2)) * (0.7 + 0.6 * day_seed)
    return w


def build(now: float) -> Batch:
    tz = ZoneInfo(TZ)
    rng = random.Random(7)
    slots: list[SlotEnergy] = []
    end = slot_of(now)
    start = end - DAYS * 86400
    day_seeds: dict[tuple[str, int], float] = {}
    for t in range(start, end, SLOT_SECONDS):
        local = datetime.fromtimestamp(t, UTC).astimezone(tz)
        for load in LOADS:
            seed = day_seeds.setdefault((load.device, local.toordinal()), rng.random())
            mwh = int(power_at(load, local, seed) * 250)  # W over 15 min = W/4 Wh = 250·W mWh
            gap = (
                load.device == LOADS[4].device and end - 86400 * 3 <= t < end - 86400 * 3 + 3 * 3600
            )
            if load.export:
                slots.append(SlotEnergy(load.device, load.channel, t, 0, mwh, gap))
            else:
                slots.append(SlotEnergy(load.device, load.channel, t, mwh, 0, gap))
        # The workshop's three-phase meter: machines on phase a, lights on b, a compressor on c.
        seed = day_seeds.setdefault((EM, local.toordinal()), rng.random())
        hour = local.hour + local.minute / 60
        working = local.weekday() < 5 and 8 <= hour < 17
        phases = {
            "a": 40 + (900 + 600 * seed if working else 0),
            "b": 20 + (180 if working or 17 <= hour < 21 else 0),
            "c": 10 + (1400 if working and int(hour * 4) % 3 == 0 else 0),
        }
        for p, w in phases.items():
            slots.append(SlotEnergy(EM, f"em:0/{p}", t, int(w * 250), 0))
        slots.append(SlotEnergy(EM, "em:0", t, int(sum(phases.values()) * 250), 0))
    local_now = datetime.fromtimestamp(now, UTC).astimezone(tz)
    latest: list[Reading] = []
    devices: list[DeviceUpdate] = []
    for i, load in enumerate(LOADS):
        w = power_at(load, local_now, 0.5)
        latest.append(
            Reading(load.device, load.channel, now - 3, power_w=round(w, 1), voltage_v=229.0 + i * 0.3,
                    current_a=round(w / 230, 3), frequency_hz=50.0, energy_wh=10000.0 + i * 1000)
        )  # fmt: skip
        devices.append(
            DeviceUpdate(load.device, last_seen=now - 3 - i, online=True, mac=load.device.split("-")[1].upper(),
                         model=load.model, gen=4 if "g4" in load.device else 3,
                         fw_ver="1.4.4" if i % 3 else "1.3.3",
                         available_update="1.5.1" if i % 3 == 0 else None, name=load.name,
                         ip=f"192.0.2.{20 + i}", source="shelly")
        )  # fmt: skip
    phases_now = {"a": 420.0, "b": 1310.0, "c": 230.0}
    for p, w in phases_now.items():
        latest.append(Reading(EM, f"em:0/{p}", now - 2, power_w=w, voltage_v=230.4 + ord(p) % 3,
                              current_a=round(w / 230, 3), frequency_hz=49.98, power_factor=0.93))  # fmt: skip
    latest.append(Reading(EM, "em:0", now - 2, power_w=sum(phases_now.values())))
    devices.append(DeviceUpdate(EM, last_seen=now - 2, online=True, mac="08F9E0E5A7C4",
                                model="SPEM-003CEBEU", gen=2, fw_ver="1.4.4", name="Workshop 3-phase",
                                ip="192.0.2.10", source="shelly"))  # fmt: skip
    devices.append(DeviceUpdate(OFFLINE, last_seen=now - 3 * 3600, online=False, mac="84FCE63A4E83",
                                model="S3PM-001PCEU16", gen=3, fw_ver="1.4.2", name="Garden pump",
                                source="shelly"))  # fmt: skip
    events = [  # in the order they happened, as the intake stores them
        Event(EM, now - 86400 - 300, "sys", "ota_progress", {"progress_percent": 100}),
        Event(EM, now - 86400, "em:0", "ota_success", {"version": "1.4.4"}),
        Event(EM, now - 3600 * 5, "sys", "config_changed", {"cfg_rev": 12}),
    ]
    power: list[PowerMinute] = []
    first = (int(now) // 60 - 24 * 60) * 60
    for minute in range(first, int(now) // 60 * 60, 60):
        local = datetime.fromtimestamp(minute, UTC).astimezone(tz)
        hour = local.hour + local.minute / 60
        working = local.weekday() < 5 and 8 <= hour < 17
        wobble = 1 + 0.08 * math.sin(minute / 420)
        phases = {
            "a": 40 + (1200 * wobble if working else 0),
            "b": 20 + (180 if working or 17 <= hour < 21 else 0),
            "c": 10 + (1400 if working and (minute // 60) % 20 < 7 else 0),
        }
        for p, w in phases.items():
            power.append(PowerMinute(EM, f"em:0/{p}", minute, round(w, 1), 6))
        power.append(PowerMinute(EM, "em:0", minute, round(sum(phases.values()), 1), 6))
    return Batch(slots=slots, devices=devices, latest=latest, events=events, power=power)


async def seed(store: Store, now: float) -> None:
    await store.commit(build(now))
    for load in LOADS:
        await store.set_device_label(load.device, room=load.room)
    await store.set_device_label(EM, room="Workshop")
    await add_user(store, USER, PASSWORD, Role.ADMIN, now=now)
    tariff = Tariff.from_json({
        "currency": "EUR", "price": 0.34, "export_price": 0.08,
        "periods": [{"start": "22:00", "end": "06:00", "price": 0.24}],
    })  # fmt: skip
    await save_site(store, SiteSettings(tz=TZ, tariff=tariff, retention_days=730))


class Server:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.hub = LiveHub()
        self.task: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(self.main()))

    async def main(self) -> None:
        async with open_store(f"sqlite:///{self.db}") as store:
            await seed(store, time.time())
            app = create_app(store, live=self.hub, site_tz=TZ)
            started = asyncio.Event()
            self.task = asyncio.ensure_future(serve_web(app, "127.0.0.1", 0, started=started))
            await started.wait()
            self.port = app.state.port
            self.ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def __enter__(self) -> Server:
        self.thread.start()
        if not self.ready.wait(120):
            raise SystemExit("the web server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(15)


def shoot(
    base: str,
    out: Path,
    *,
    user: str = USER,
    password: str = PASSWORD,
    tz: str = TZ,
    device: str = EM,
    month: str | None = None,
) -> list[Path]:
    """Every page into ``out``; ``month``: a date of the month the month view shows (default:
    this month)."""
    from playwright.sync_api import sync_playwright

    shots: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
        page = ctx.new_page()

        def snap(
            name: str,
            path: str,
            *,
            full: bool = True,
            wait: str | tuple[str, ...] = (),
            at: str | None = None,
        ) -> None:
            """``wait``: selectors that show the page is drawn; ``at``: an element scrolled to
            the top of the (phone) viewport."""
            page.goto(base + path)
            for selector in (wait,) if isinstance(wait, str) else wait:
                page.wait_for_selector(selector)
            if at:
                page.eval_on_selector(at, "e => window.scrollTo(0, e.offsetTop - 8)")
            file = out / f"{name}.png"
            page.screenshot(path=str(file), full_page=full)
            shots.append(file)

        snap("login", "/login", full=False)
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        snap("overview", "/")
        yesterday = datetime.fromtimestamp(time.time() - 86400, ZoneInfo(tz)).date().isoformat()
        snap(
            "energy-day",
            f"/energy?by=hour&view=device&date={yesterday}",
            wait="#energy-chart[data-drawn]",
        )
        month_view = "/energy?by=day&view=total" + (f"&date={month}" if month else "")
        snap("energy-month", month_view, wait="#energy-chart[data-drawn]")
        snap("energy-year", "/energy?by=month&view=device", wait="#energy-chart[data-drawn]")
        snap("devices", "/devices")
        device_page = f"/devices/{device}?by=day"
        snap("device", device_page, wait=DEVICE_READY)
        snap("fleet", "/fleet", wait="#fleet-table")
        snap("audit", "/fleet/audit")
        snap("alerts", "/alerts", wait="#alerts-rules")
        snap("settings", "/settings")
        page.set_viewport_size({"width": 390, "height": 844})
        snap("phone-overview", "/", full=False)
        snap(
            "phone-energy",
            f"/energy?by=hour&date={yesterday}",
            full=False,
            wait="#energy-chart[data-drawn]",
        )
        snap("phone-devices", "/devices", full=False)
        snap("phone-fleet", "/fleet", full=False, wait="#fleet-table")
        snap("phone-device", device_page, full=False, wait=DEVICE_READY, at="#power")
        browser.close()
    return shots


def running_site(base: str, user: str, password: str) -> tuple[str, str]:
    """The time zone and the device to show (the grid meter, else the first) of a running
    kilowatch; logs in over the API's form like a browser."""
    import httpx

    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.post("/login", data={"username": user, "password": password, "next": "/"})
        if r.status_code != 303:
            raise SystemExit(f"login as {user!r} at {base} failed: HTTP {r.status_code}")
        # the session cookie is Secure: a browser sends it to loopback over http, httpx does not
        c.headers["cookie"] = f"kilowatch_session={r.cookies['kilowatch_session']}"
        tz = c.get("/api/v1/settings").json()["tz"]
        devices = c.get("/api/v1/devices").json()["devices"]
    if not devices:
        raise SystemExit(f"{base} has no devices yet")
    grid = [d["device"] for d in devices if d.get("grid_meter")]
    return tz, (grid or [devices[0]["device"]])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--url", help="shoot this running kilowatch instead of seeded data")
    parser.add_argument("--user", default=USER)
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument("--month", help="a date (2026-11-01) of the month the month view shows")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.url:
        base = args.url.rstrip("/")
        tz, device = running_site(base, args.user, args.password)
        for f in shoot(base, args.out, user=args.user, password=args.password, tz=tz,
                       device=device, month=args.month):  # fmt: skip
            print(f, file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp) / "shots.db") as server:
        for f in shoot(f"http://127.0.0.1:{server.port}", args.out):
            print(f, file=sys.stderr)


if __name__ == "__main__":
    main()
