"""``kilowatch demo``: kilowatch on its embedded defaults plus a simulated home, in one process.

One lifespan owns everything: :func:`kilowatch.service.server.serve` (store, embedded broker, MQTT
intake, ledger pipeline, web app) runs as a task of the demo's :class:`asyncio.TaskGroup`; once
it is ready, the simulated home (a :class:`~shellysim.Fleet`) connects to the embedded
broker like real meters would.

History is back-filled through the simulator's accelerated clock. The :class:`CatchUpClock` starts
``days`` in the past and runs ``speed`` times faster than real time until it reaches the real now;
from then on it *is* real time. The Shelly devices stamp every notification with that simulated
time (``params.ts``) and the ledger books energy by the message's own time, so the back-filled days
land in the right slots. Sources whose messages carry no usable time (Tasmota's ``Time`` is local
time without a zone, Gen1 has none) are stamped on receipt, so they cannot be back-filled: the
demo's Tasmota plug starts when the clock has caught up. docs/demo.md explains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import math
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from kilowatch.alerts.config import CONFIG_KEY, parse_config, save_config
from kilowatch.errors import ConfigError
from kilowatch.fleet.discovery import scan
from kilowatch.fleet.registry import record_found
from kilowatch.service.config import Settings, default_data_dir, default_timezone
from kilowatch.service.server import Running, serve
from kilowatch.store import Registration, Store
from kilowatch.store.audit import audited
from kilowatch.web.app import start_web
from kilowatch.web.site import load_site, save_site
from shellysim import Fleet, LoadKind, SimClock, mac_for, model_spec

log = logging.getLogger("kilowatch.demo")

DEMO_USER = "demo"
DEMO_PASSWORD = "kilowatch-demo"
"""The demo's web login, created only in a store that has no users yet (the demo binds to loopback
by default; a store with users of its own keeps them untouched)."""
DEMO_CLIENT_ID = "kilowatch-demo"
"""The intake's MQTT client id in the demo (never the machine's ``serve`` session)."""
DEFAULT_DAYS = 3.0
DEFAULT_SPEED = 14_400.0
"""Four simulated hours per real second: three days of history in about 18 seconds."""
CATCH_UP_POLL_S = 0.2
READY_TIMEOUT_S = 30.0
"""How long the service may take to open the store, start the broker and connect the intake."""

HOME: tuple[tuple[str, str, tuple[LoadKind, ...] | None], ...] = (
    ("pm1", "boiler (Shelly PM Mini Gen3)", (LoadKind.BOILER,)),
    ("switch", "air conditioner (Shelly Plus 1PM)", (LoadKind.AIR_CONDITIONER,)),
    ("3em", "mains, three phases (Shelly Pro 3EM)", (LoadKind.BASE,)),
    ("plug", "balcony PV feeding in (Shelly Plus Plug S)", (LoadKind.PV,)),
)
"""The simulated home's Shelly devices: model key, what it meters, loads (None: model default).
The mains meter's own loads (lights, sockets: the base load on each phase) are what no sub-meter
measures; it measures the other devices' loads too (:func:`wire_mains`)."""
MAINS = 2
"""The index in :data:`HOME` of the mains meter: the site's grid meter."""
TASMOTA = "tasmota"
"""Plus one Tasmota plug (a fridge), joining in real time."""
FRIDGE = "fridge"
"""The Tasmota plug's name on the dashboard."""
LABEL_WAIT_S = 90.0
"""How long the demo waits to hear of the Tasmota plug (it reports once a minute) to name it."""
BOILER = 0
"""The index in :data:`HOME` of the boiler (the example alert rule watches it)."""
MINUTE_POWER_S = 86_400.0
"""The last day of the back-fill is reported minute by minute, power included (the device page's
chart shows the last 24 h at one-minute resolution); older history only at slot boundaries."""


class CatchUpClock(SimClock):
    """Simulated time that starts in the past, runs ``speed``× fast, then follows real time.

    ``now() = min(start + elapsed × speed, real now)``: after the catch-up instant the clock is the
    wall clock (advanced by the monotonic clock, so a wall-clock step cannot make it jump).
    """

    def __init__(self, *, start: float, speed: float) -> None:
        super().__init__(start=start, speed=speed)
        self._real0 = time.time()
        self._mono0 = time.monotonic()
        self._catch_up_s = (
            max(0.0, (self._real0 - start) / (speed - 1.0)) if speed > 1.0 else math.inf
        )
        """Real seconds after construction at which simulated time meets real time."""
        if speed <= 1.0 and start < self._real0:
            raise ConfigError(
                f"--speed must be more than 1 to catch up with real time, not {speed}"
            )

    def _elapsed(self) -> float:
        return time.monotonic() - self._mono0

    @property
    def caught_up(self) -> bool:
        """Whether simulated time has reached real time (and now follows it)."""
        return self._elapsed() >= self._catch_up_s

    @property
    def speed(self) -> float:
        """Simulated seconds per real second right now (1 once caught up)."""
        return 1.0 if self.caught_up else super().speed

    @property
    def catch_up_at(self) -> float:
        """The unix time at which simulated time meets real time."""
        return self._real0 + self._catch_up_s

    def now(self) -> float:
        """Simulated unix time."""
        elapsed = self._elapsed()
        return min(super().now(), self._real0 + elapsed)

    def real_delay(self, sim_seconds: float) -> float:
        """Real seconds until ``sim_seconds`` of simulated time have passed."""
        if sim_seconds <= 0:
            return 0.0
        elapsed = self._elapsed()
        if elapsed >= self._catch_up_s:
            return sim_seconds
        fast_left = (self._catch_up_s - elapsed) * super().speed  # simulated s until caught up
        if sim_seconds <= fast_left:
            return sim_seconds / super().speed
        return (self._catch_up_s - elapsed) + (sim_seconds - fast_left)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What ``kilowatch demo`` was asked for."""

    days: float = DEFAULT_DAYS
    speed: float = DEFAULT_SPEED
    store: str | None = None
    data_dir: Path | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    tz: str | None = None
    seed: int = 0
    log_level: str = "WARNING"


def demo_data_dir() -> Path:
    """Where the demo keeps its SQLite file by default: ``<default data dir>/demo``."""
    return default_data_dir() / "demo"


def demo_settings(options: DemoOptions) -> Settings:
    """The service settings of a demo: embedded broker, demo store, the demo's own client id.

    Built from the flags only: ``KILOWATCH_*`` variables and the config file describe the user's
    real installation, and simulated energy must never be written into its store by accident.
    """
    if not 0 < options.days <= 366:
        raise ConfigError(f"--days must be more than 0 and at most 366, not {options.days:g}")
    values: dict[str, Any] = {
        "data_dir": options.data_dir or demo_data_dir(),
        "store": options.store,
        "broker": "embedded",
        "mqtt_host": options.mqtt_host,
        "mqtt_port": options.mqtt_port,
        "mqtt_client_id": DEMO_CLIENT_ID,
        "http_host": options.http_host,
        "http_port": options.http_port,
        "tz": options.tz or default_timezone(),
        "log_level": options.log_level,
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"invalid --{key.replace('_', '-')} {values.get(key)!r}: {message}"
        ) from None


def wipe_default_store(options: DemoOptions, settings: Settings) -> Path | None:
    """Start the default demo store afresh (the demo replays the same devices from zero); returns
    the file removed, if any. An explicit ``--store``/``--data-dir`` is never wiped."""
    if options.store is not None or options.data_dir is not None:
        return None
    path = settings.data_dir / "kilowatch.db"
    existed = path.exists()
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
    return path if existed else None


def make_home(broker_url: str, clock: CatchUpClock, seed: int) -> Fleet:
    """The simulated home's Shelly devices, publishing to ``broker_url``."""
    return Fleet(
        devices=len(HOME),
        models=[model for model, _, _ in HOME],
        loads=[loads for _, _, loads in HOME],
        broker=broker_url,
        clock=clock,
        seed=seed,
        engine=None,  # no scripts in the demo: spare the JavaScript engine
    )


def make_plugs(broker_url: str, seed: int) -> Fleet:
    """The Tasmota fridge plug (real time: its messages carry no usable time), not started."""
    return Fleet(
        devices=0, vendors=[TASMOTA], broker=broker_url, seed=seed, http=False, engine=None
    )


def wire_mains(home: Fleet, plugs: Fleet) -> None:
    """Put every other load of the house behind the mains meter, as in a real house: the mains
    Pro 3EM measures the boiler, the air conditioner, the PV plug's feed-in and the fridge (also
    before its plug joins: the fridge runs, unmetered) plus its own base load."""
    mains = home.devices[MAINS]
    behind = [m for dev in home.devices if dev is not mains for m in dev.meters()]
    mains.meter_behind(behind + [pub.meter for pub in plugs.publishers])


def mains_id(seed: int) -> str:
    """The device id of the demo's mains meter (the simulator's ids follow from the seed)."""
    spec = model_spec(HOME[MAINS][0])
    return f"{spec.prefix}-{mac_for(seed, MAINS + 1).lower()}"


async def set_grid_meter(store: Store, device: str, tz: str) -> bool:
    """Make ``device`` the site's grid meter (Settings → Grid meters), so site totals are the
    mains' alone, not the mains plus the sub-meters behind it. A store whose site already names
    grid meters keeps them (returns ``False``)."""
    site = await load_site(store, default_tz=tz)
    if site.grid_meters and site.grid_meters != (device,):
        return False
    if site.grid_meters != (device,):
        detail = {"grid_meters": [device]}
        async with audited(store, demo_actor(), "settings.change", detail=detail) as act:
            await save_site(store, site.updated({"grid_meters": [device]}))
            act.detail.update(detail)  # the outcome says what changed too, as the web's does
    return True


def demo_actor() -> str:
    """``cli:<os user>``: who the demo's audit entries name (it acts as the CLI would)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no password entry (some containers)
        user = "unknown"
    return f"cli:{user}"


async def check_store_is_free(store: Store, fleet: Fleet) -> None:
    """Refuse a store that already accounted the demo's devices: replaying their counters from
    zero days in the past would be read as counter resets and counted a second time."""
    ids = {dev.id for dev in fleet.devices}
    taken = sorted({device for device, _ in await store.load_ledger_states() if device in ids})
    if taken:
        raise ConfigError(
            f"the store {store.url} already holds the demo devices ({', '.join(taken)}); run the "
            "demo on a fresh store: leave out --store/--data-dir (the default demo store starts "
            "afresh each time) or pass a new --data-dir"
        )


def home_names(fleet: Fleet) -> dict[str, str]:
    """Device id → the name an installer would give it (``boiler``, ``air conditioner``...)."""
    return {
        dev.id: what.split(" (")[0] for dev, (_, what, _) in zip(fleet.devices, HOME, strict=True)
    }


async def register_home(store: Store, fleet: Fleet) -> int:
    """Find the home's devices the way ``kilowatch fleet discover`` does (``GET /shelly`` on each
    device's address) and register them with their names, so the dashboard shows names, models and
    firmware from the registry. Returns how many were found."""
    async with aiohttp.ClientSession() as session:
        found = await scan([fleet.address(dev) for dev in fleet.devices], session=session)
    now = time.time()
    await record_found(store, found, now=now)
    names = home_names(fleet)
    await store.register(
        [Registration(device=f.device, name=names[f.device]) for f in found if f.device in names]
    )
    return len(found)


async def enable_debug_log(store: Store, fleet: Fleet, device_index: int = MAINS) -> None:
    """Turn one device's debug log over MQTT on the way an installer would (``Sys.SetConfig``
    ``debug.mqtt.enable`` over its HTTP RPC, audited as ``device.config``): its log lines and
    the ``config_changed`` event then flow through the broker and the intake like a real
    device's."""
    dev = fleet.devices[device_index]
    params = {"config": {"debug": {"mqtt": {"enable": True}}}}
    body = {"id": 1, "method": "Sys.SetConfig", "params": params}
    detail = {"method": "Sys.SetConfig", "params": params}
    actor = demo_actor()
    async with (
        audited(store, actor, "device.config", devices=[dev.id], detail=detail) as act,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(f"{fleet.url(dev)}/rpc", json=body) as resp:
            reply = await resp.json()
        act.detail.update(detail)
        if "error" in reply:
            act.result = "failed"
            act.detail["error"] = reply["error"]
            log.warning("%s refused Sys.SetConfig: %s", dev.id, reply["error"])


def example_alerts(fleet: Fleet) -> dict[str, Any]:
    """The demo's example alert rules (no channel: the Alerts page shows their states and
    history): the boiler above 1.5 kW for 5 minutes, any device offline for 5 minutes."""
    boiler = fleet.devices[BOILER].id
    return {
        "rules": [
            {
                "id": "boiler-high",
                "name": "Boiler above 1.5 kW for 5 minutes",
                "kind": "power_above",
                "devices": [boiler],
                "threshold_w": 1500,
                "for_s": 300,
            },
            {
                "id": "device-offline",
                "name": "A device offline for 5 minutes",
                "kind": "offline",
                "for_s": 300,
            },
        ],
        "channels": [],
    }


async def ensure_example_alerts(store: Store, fleet: Fleet) -> bool:
    """Save :func:`example_alerts` when the store has no alerts configuration yet; a store
    with one (even an empty one someone saved) keeps it (returns ``False``)."""
    if await store.get_meta(CONFIG_KEY) is not None:
        return False
    cfg = parse_config(example_alerts(fleet))
    detail = {"source": "kilowatch demo", "rules": len(cfg.rules), "channels": 0}
    async with audited(store, demo_actor(), "alerts.rules", detail=detail) as act:
        await save_config(store, cfg)
        act.detail.update(rules=len(cfg.rules), channels=0)
    return True


async def ensure_demo_login(store: Store) -> tuple[str, str] | None:
    """``(user, password)`` to show: the demo user, created when the store has no users; ``None``
    when the store has users of its own (they are left alone)."""
    from kilowatch.accounts.users import Role, add_user, users, verify_password

    existing = await users(store)
    if not existing:
        await add_user(store, DEMO_USER, DEMO_PASSWORD, Role.ADMIN, now=time.time())
        return DEMO_USER, DEMO_PASSWORD
    if DEMO_USER in existing and await verify_password(store, DEMO_USER, DEMO_PASSWORD):
        return DEMO_USER, DEMO_PASSWORD
    return None


@dataclass
class DemoState:
    """What the running demo exposes (to the banner and tests)."""

    running: Running | None = None
    http_port: int | None = None
    login: tuple[str, str] | None = None
    caught_up: bool = False


async def run_demo(
    options: DemoOptions,
    stop: asyncio.Event,
    *,
    echo: Callable[[str], None] = print,
) -> DemoState:
    """Run the demo until ``stop`` is set; then stop the devices, commit, and close everything."""
    settings = demo_settings(options)
    wiped = wipe_default_store(options, settings)
    if options.store is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    state = DemoState()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    service_stop = asyncio.Event()

    async def start_demo_web(
        tg: asyncio.TaskGroup, running: Running, web_stop: asyncio.Event
    ) -> None:
        state.login = await ensure_demo_login(running.store)
        await set_grid_meter(running.store, mains_id(options.seed), settings.tz)
        state.http_port = await start_web(tg, running, web_stop, login_hint=state.login)

    def on_ready(running: Running) -> None:
        if not ready.done():
            ready.set_result(running)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(serve(settings, service_stop, on_ready=on_ready, web=start_demo_web))
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                running = await ready
            state.running = running
            broker_url = f"mqtt://{_url_host(running.mqtt_host)}:{running.mqtt_port}"
            async with AsyncExitStack() as stack:
                # started only now: back-filled time must not run while the service starts
                clock = CatchUpClock(start=time.time() - options.days * 86_400, speed=options.speed)
                home = make_home(broker_url, clock, options.seed)
                for dev in home.devices:
                    dev.minute_reports_from = time.time() - MINUTE_POWER_S
                plugs = make_plugs(broker_url, options.seed)
                wire_mains(home, plugs)
                await check_store_is_free(running.store, home)
                await stack.enter_async_context(home)
                await register_home(running.store, home)
                await ensure_example_alerts(running.store, home)
                await enable_debug_log(running.store, home)
                for line in banner(options, settings, state, home, clock, wiped):
                    echo(line)
                await _until(stop, _wait_caught_up(clock))
                if not stop.is_set():
                    state.caught_up = True
                    await stack.enter_async_context(plugs)
                    echo(
                        f"history back-filled up to now; running in real time with "
                        f"{len(home.devices) + len(plugs.publishers)} devices "
                        f"(Tasmota plug {plugs.publishers[0].id} joined). Ctrl-C stops."
                    )
                    await _until(stop, blip_when_delivered(running.store, home, clock))
                    await _until(stop, label_when_seen(running.store, plugs.publishers[0].id))
                await stop.wait()
                echo("stopping: devices go offline, kilowatch commits what is in flight...")
        finally:
            service_stop.set()
    echo("stopped.")
    return state


async def blip_when_delivered(store: Store, fleet: Fleet, clock: CatchUpClock) -> bool:
    """Reboot the mains once (a power blip: its offline, online and reboot events show on its
    device page as a real device's would), but only once kilowatch has stored its power of the
    last minutes: a reboot drops the connection, and with it whatever of the catch-up's backlog
    still waited in the device's send buffer. ``False`` (no reboot) when that takes longer
    than :data:`LABEL_WAIT_S`."""
    mains = fleet.devices[MAINS]
    try:
        async with asyncio.timeout(LABEL_WAIT_S):
            while True:
                since = int(clock.now()) - 120
                if await store.power(mains.id, start=since, end=since + 180):
                    break
                await asyncio.sleep(CATCH_UP_POLL_S)
    except TimeoutError:
        log.warning("the mains' catch-up was not delivered in %.0f s: no reboot", LABEL_WAIT_S)
        return False
    await mains.reboot()
    return True


async def label_when_seen(store: Store, device: str, label: str = FRIDGE) -> bool:
    """Name the Tasmota plug once kilowatch has heard of it (a Tasmota plug tells no name, and
    it is no Shelly for the fleet registry); a label someone gave it stays. ``False`` when it
    was not seen within :data:`LABEL_WAIT_S`."""
    try:
        async with asyncio.timeout(LABEL_WAIT_S):
            while (rec := await store.device(device)) is None:
                await asyncio.sleep(CATCH_UP_POLL_S)
    except TimeoutError:
        log.warning("the Tasmota plug %s was not heard of in %.0f s", device, LABEL_WAIT_S)
        return False
    if not rec.label:
        await store.set_device_label(device, label=label)
    return True


async def _wait_caught_up(clock: CatchUpClock) -> None:
    while not clock.caught_up:
        await asyncio.sleep(CATCH_UP_POLL_S)


async def _until(stop: asyncio.Event, waiter: Any) -> None:
    """Await ``waiter`` unless ``stop`` is set first."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(waiter)
        stopper = tg.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        stopper.cancel()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def banner(
    options: DemoOptions,
    settings: Settings,
    state: DemoState,
    home: Fleet,
    clock: CatchUpClock,
    wiped: Path | None,
) -> list[str]:
    """Where to look: dashboard, login, devices, store and CLI examples."""
    assert state.running is not None
    store = settings.store_url
    tz = settings.tz
    today = datetime.now(UTC).date()
    first = (datetime.now(UTC) - timedelta(days=options.days)).date()
    host = _url_host(
        settings.http_host if settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    )
    catch_up = max(0.0, clock.catch_up_at - time.time())
    lines = [
        "kilowatch demo",
        f"  dashboard  http://{host}:{state.http_port}/",
    ]
    if state.login is not None:
        lines.append(f"  login      {state.login[0]} / {state.login[1]}")
    else:
        lines.append(
            "  login      a user of this store (reset one with: kilowatch user add NAME "
            f"--store {store})"
        )
    lines += [
        f"  health     http://{host}:{state.http_port}/api/v1/health",
        f"  MQTT       mqtt://{_url_host(state.running.mqtt_host)}:{state.running.mqtt_port} "
        "(embedded broker)",
        f"  store      {store}" + ("  (previous demo data removed)" if wiped else ""),
        f"  time zone  {tz}",
        "  devices:",
    ]
    for dev, (_, what, _) in zip(home.devices, HOME, strict=True):
        lines.append(f"    {dev.id:<32} {what}  {home.url(dev)}/rpc/Shelly.GetStatus")
    lines.append(f"    {'tasmota_...':<32} fridge (Tasmota plug), joins in real time")
    lines += [
        f"back-filling {options.days:g} day(s) of history at {options.speed:g}x "
        f"(about {catch_up:.0f} s), then real time. Try, in another terminal:",
        f"  kilowatch energy --by hour --from {today} --to {today + timedelta(days=1)} "
        f"--tz {tz} --store {store}",
        f"  kilowatch energy --by day --from {first} --to {today + timedelta(days=1)} "
        f"--group device --tz {tz} --store {store}",
        f"  kilowatch devices --store {store}",
    ]
    return lines


__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_SPEED",
    "DEMO_PASSWORD",
    "DEMO_USER",
    "HOME",
    "MAINS",
    "CatchUpClock",
    "DemoOptions",
    "DemoState",
    "banner",
    "demo_data_dir",
    "demo_settings",
    "enable_debug_log",
    "ensure_demo_login",
    "ensure_example_alerts",
    "example_alerts",
    "mains_id",
    "make_home",
    "run_demo",
    "set_grid_meter",
    "wire_mains",
]
