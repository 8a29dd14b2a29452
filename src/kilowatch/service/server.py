"""``kilowatch serve``: one lifespan that owns the broker, the store, the intake and the pipeline.

Resources are entered in dependency order on one :class:`~contextlib.AsyncExitStack` (store,
broker: the managed mosquitto or the embedded one unless an external one is named, MQTT intake)
and left in reverse; every background loop (intake reconnects, ingest, stats, web app) runs in one
:class:`asyncio.TaskGroup`. Stopping (SIGINT/SIGTERM → the
``stop`` event) is graceful: the intake stops handing out messages, the pipeline commits what it
holds and acknowledges it, the intake disconnects after its acknowledgements went out, then the
broker and the store close.

A stop is bounded: when the store still fails after ``stop_timeout_s``, the pipeline is cancelled,
what it held is *not* acknowledged (the broker delivers it again at the next start), everything
closes as usual and :func:`serve` raises :class:`~kilowatch.errors.StoreError` saying so (the CLI
prints it and exits 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kilowatch.alerts.engine import stats_json
from kilowatch.broker.mosquitto import (
    MOSQUITTO_MISSING,
    Listener,
    ManagedMosquitto,
    find_mosquitto,
)
from kilowatch.broker.tls import TlsFiles, ensure_local_tls, pem_files, tls_dir
from kilowatch.decode.registry import DecoderOptions, default_registry
from kilowatch.errors import BrokerError, ConfigError, StoreError
from kilowatch.intake.client import MqttIntake, MqttOptions
from kilowatch.intake.live import LiveHub
from kilowatch.intake.pipeline import DeliverySource, Pipeline
from kilowatch.intake.stats import IngestHealth, IngestStats
from kilowatch.ledger import Ledger
from kilowatch.service.alerts import AlertsRunner
from kilowatch.service.config import BrokerMode, LogFormat, Settings, parse_broker_url
from kilowatch.service.poller import PolledSource, Poller, PollStats
from kilowatch.service.repair import Repairer, RepairStats, fleet_backfill
from kilowatch.service.retention import run_retention
from kilowatch.store import Store, open_store

log = logging.getLogger("kilowatch.serve")

EMBEDDED_MAX_INFLIGHT = 10_000
"""Unacknowledged QoS 1 messages the embedded broker lets us hold: we acknowledge only after
each commit, so a small window (the broker's default, 100) caps ingest at 100 per commit."""
STATS_INTERVAL_S = 60.0
"""How often ingest counters are logged."""
MANAGED, EMBEDDED, EXTERNAL = "managed", "embedded", "external"
"""Which broker the intake reads (the ready line's ``broker=``)."""


# -- logging --------------------------------------------------------------------------------------


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line = (
            f"time={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(settings: Settings) -> None:
    """Structured logs on stderr: ``key=value`` lines or JSON lines, at ``settings.log_level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if settings.log_format is LogFormat.JSON else _LogfmtFormatter()
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.value)
    # paho and uvicorn are chatty at INFO; their warnings still show.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


# -- the lifespan ---------------------------------------------------------------------------------


@dataclass
class Running:
    """What a running service exposes (to the web app hook, tests, and the CLI's ready line)."""

    settings: Settings
    store: Store
    hub: LiveHub
    stats: IngestStats
    mqtt_host: str
    mqtt_port: int
    health: Callable[[], IngestHealth]
    """The ingest's health now (for ``/api/v1/health`` and ``/metrics``)."""
    broker: str = EXTERNAL
    """Which broker the intake reads: ``managed`` (mosquitto), ``embedded`` or ``external``."""
    mosquitto: ManagedMosquitto | None = None
    """The managed mosquitto, when that is the broker."""
    repair: RepairStats | None = None
    """The repair service's counters (estimated slots replaced: docs/configuration.md)."""
    poll: PollStats | None = None
    """The HTTP poller's counters, when it runs (``poll`` or ``poll_gen1`` set)."""
    alerts: AlertsRunner | None = None
    """The alerts service (docs/alerts.md); its counters are ``alerts.stats``."""


WebStarter = Callable[[asyncio.TaskGroup, Running, asyncio.Event], Awaitable[object]]
"""Starts the web app as tasks of the service's task group; cancels them when the event is set."""


def decoder_options(settings: Settings) -> DecoderOptions:
    return DecoderOptions(
        shelly_topic_prefixes=settings.shelly_topic_prefixes,
        tasmota_full_topics=settings.tasmota_full_topics,
        zigbee2mqtt_base_topics=settings.zigbee2mqtt_base_topics,
        topic_sources=settings.topic_routes,
    )


def mqtt_options(settings: Settings, *, embedded_port: int | None = None) -> MqttOptions:
    """How the intake reaches the broker: the embedded one on loopback, or the URL's."""
    common: dict[str, Any] = {
        "client_id": settings.mqtt_client_id,
        "ca": settings.mqtt_ca,
        "cert": settings.mqtt_cert,
        "key": settings.mqtt_key,
        "insecure": settings.mqtt_insecure,
    }
    if embedded_port is not None:
        host = settings.mqtt_host
        if host in {"", "0.0.0.0", "::"}:  # bound to every address: reach it on loopback
            host = "127.0.0.1" if host != "::" else "::1"
        return MqttOptions(
            host=host,
            port=embedded_port,
            user=settings.mqtt_user,
            password=settings.mqtt_password,
            **common,
        )
    address = parse_broker_url(settings.broker)
    return MqttOptions(
        host=address.host,
        port=address.port,
        tls=address.tls,
        user=address.user if address.user is not None else settings.mqtt_user,
        password=address.password if address.user is not None else settings.mqtt_password,
        **common,
    )


def _embedded_logins(
    settings: Settings, *, service_user: bool = False
) -> tuple[dict[str, str], Settings]:
    """The embedded broker's plain users, and the settings whose user the intake logs in with.

    ``mqtt_user`` and ``mqtt_password`` are one user. With a password file (or, ``service_user``,
    the store's broker credentials) and no ``mqtt_user``, the intake gets a user of its own for
    this run, with a random password kept in memory only: kilowatch's own user when the store has
    credentials (its rule lets it read everything), else ``kilowatch-intake-<random>``.
    """
    if settings.mqtt_user is not None:
        if settings.mqtt_password is None:
            raise ConfigError(
                "mqtt_user is set without mqtt_password; the embedded broker needs both (or "
                "mqtt_password_file alone)"
            )
        return {settings.mqtt_user: settings.mqtt_password}, settings
    from kilowatch.broker.credentials import SERVICE_USER

    if settings.mqtt_password_file is None and not service_user:
        return {}, settings
    login = {
        "mqtt_user": SERVICE_USER if service_user else f"kilowatch-intake-{secrets.token_hex(4)}",
        "mqtt_password": secrets.token_urlsafe(24),
    }
    return {login["mqtt_user"]: login["mqtt_password"]}, settings.model_copy(update=login)


@dataclass(frozen=True, slots=True)
class _Broker:
    kind: str
    options: MqttOptions
    mosquitto: ManagedMosquitto | None = None


async def _start_broker(stack: AsyncExitStack, settings: Settings, store: Store) -> _Broker:
    """Enter the broker kilowatch runs itself (if any) on ``stack``; how the intake reaches it.

    ``auto`` runs the managed mosquitto when mosquitto 2.x is installed, else the embedded
    broker, saying so in one line; ``managed`` requires mosquitto; a URL runs nothing.
    """
    mode = settings.broker_mode
    if mode is None:
        return _Broker(EXTERNAL, mqtt_options(settings))
    if mode is not BrokerMode.EMBEDDED:
        binary = await asyncio.to_thread(find_mosquitto, settings.mosquitto)
        embedded_users = settings.mqtt_password_file is not None or settings.mqtt_user is not None
        if binary is None:
            missing = (
                MOSQUITTO_MISSING
                if settings.mosquitto is None
                else f"mosquitto 2.x is not at {settings.mosquitto} (setting mosquitto)"
            )
            if mode is BrokerMode.MANAGED:
                raise BrokerError(
                    f"{missing}; install it (apt-get install mosquitto) or use --broker embedded"
                )
            log.warning("%s: running the embedded broker instead", missing)
        elif embedded_users and mode is BrokerMode.MANAGED:
            raise ConfigError(
                "mqtt_user and mqtt_password_file are users of the embedded broker; the managed "
                "mosquitto's devices get theirs from kilowatch broker user add DEVICE"
            )
        elif embedded_users:
            log.info(
                "broker=auto: mqtt_user or mqtt_password_file name the embedded broker's users: "
                "running the embedded broker (the managed mosquitto's devices get theirs from "
                "kilowatch broker user add DEVICE)"
            )
        else:
            return await _start_managed(stack, settings, store, binary)
    return await _start_embedded(stack, settings, store)


async def _start_managed(
    stack: AsyncExitStack, settings: Settings, store: Store, binary: Path
) -> _Broker:
    listeners = [Listener(host=settings.mqtt_host, port=settings.mqtt_port)]
    tls_port = settings.embedded_tls_port
    if tls_port is not None:
        files = await asyncio.to_thread(_managed_tls_files, settings)
        listeners.append(Listener(host=settings.mqtt_host, port=tls_port, tls=files))
    managed = await stack.enter_async_context(
        ManagedMosquitto(settings.data_dir, store, binary=binary, listeners=listeners)
    )
    if not all(listener.loopback for listener in managed.listeners):
        log.info(
            "mosquitto listens beyond loopback on %s: every device needs a user of its own, made "
            "with kilowatch broker user add DEVICE (it prints the password)",
            ",".join(f"{x.host}:{x.port}{'/tls' if x.tls else ''}" for x in managed.listeners),
        )
    options = MqttOptions(
        host=managed.host,
        port=managed.port,
        user=managed.user,
        password=managed.password,
        client_id=settings.mqtt_client_id,
    )
    return _Broker(MANAGED, options, managed)


def _managed_tls_files(settings: Settings) -> TlsFiles:
    """The TLS listener's PEM files: the settings' own, else the local CA's (made if missing)."""
    if settings.mqtt_tls_cert is not None:
        cert = settings.mqtt_tls_cert
        return pem_files(cert, cert, settings.mqtt_tls_key or cert)
    names = [settings.mqtt_host, socket.gethostname()]
    return ensure_local_tls(tls_dir(settings.data_dir), names)


async def _start_embedded(stack: AsyncExitStack, settings: Settings, store: Store) -> _Broker:
    from kilowatch.broker.credentials import credentials
    from kilowatch.broker.embedded import Acl, EmbeddedBroker, server_tls_context

    if settings.mqtt_tls_local:
        raise ConfigError(
            "mqtt_tls_local is for the managed mosquitto; the embedded broker's TLS listener "
            "takes mqtt_tls_cert and mqtt_tls_key"
        )
    # The devices of `kilowatch broker user add` log in and are held to their topics here too.
    records = list((await credentials(store)).values())
    acl = Acl.from_credentials(records) if records else None
    users, settings = _embedded_logins(settings, service_user=acl is not None)
    cert = settings.mqtt_tls_cert
    broker = await stack.enter_async_context(
        EmbeddedBroker(
            settings.mqtt_host,
            settings.mqtt_port,
            users=users,
            password_file=settings.mqtt_password_file,
            ssl_context=server_tls_context(cert, settings.mqtt_tls_key) if cert else None,
            tls_port=settings.embedded_tls_port,
            max_inflight_messages=EMBEDDED_MAX_INFLIGHT,
            acl=acl,
        )
    )
    return _Broker(EMBEDDED, mqtt_options(settings, embedded_port=broker.port))


def ingest_metrics(
    stats: IngestStats,
    poll: PollStats | None = None,
    repair: RepairStats | None = None,
    alerts: AlertsRunner | None = None,
) -> dict[str, float]:
    """Ingest counters for the web app's ``/metrics`` (commit failures by kind, and the gauges,
    come with :attr:`Running.health`); with ``poll``, the poller's (``polls``,
    ``poll_failures``); with ``repair``, the repair service's (``repaired_slots_from_hours``,
    ``repaired_slots_from_history``, ``repair_inconsistent_hours``,
    ``repair_backfill_failures``); with ``alerts``, the alerts service's (``alerts_evaluations``,
    ``alerts_notifications``, ``alerts_delivered``, ``alerts_delivery_failures``,
    ``alerts_delivery_attempts``, ``alerts_firing``, ``alerts_pending``...)."""
    out: dict[str, float] = {
        "received": stats.received,
        "committed": stats.committed,
        "batches": stats.batches,
        "dead_letters": sum(stats.dead_letters.values()),
    }
    if poll is not None:
        out["polls"] = poll.polls
        out["poll_failures"] = poll.failures
    if repair is not None:
        out["repaired_slots_from_hours"] = repair.slots_from_hours
        out["repaired_slots_from_history"] = repair.slots_from_history
        out["repair_inconsistent_hours"] = repair.inconsistent_hours
        out["repair_backfill_failures"] = repair.backfill_failures
    if alerts is not None:
        for name, value in stats_json(alerts.stats).items():
            out[f"alerts_{name}"] = value
    return out


def start_poller(settings: Settings, store: Store, source: PolledSource) -> Poller | None:
    """The HTTP poller of ``poll`` / ``poll_gen1`` (docs/polling.md), feeding ``source``; ``None``
    when neither is set. Raises ``FleetError`` for a ``poll`` expression with an unknown key."""
    if not settings.poll and not settings.poll_gen1:
        return None
    from kilowatch.fleet.secrets import SecretBox

    return Poller(
        source.put,
        store=store,
        selection=settings.poll,
        gen1_hosts=settings.poll_gen1,
        interval_s=settings.poll_interval_s,
        concurrency=settings.poll_concurrency,
        secrets=SecretBox.in_data_dir(settings.data_dir),
    )


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Running], None] | None = None,
    web: WebStarter | None = None,
) -> IngestStats:
    """Run the whole service until ``stop`` is set, then shut down gracefully.

    ``web`` starts the web app inside the service's task group (``kilowatch.web.app.start_web``);
    the service itself never imports the web app, which sits above it.

    Returns the ingest counters.
    """
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings.store_url))
        broker = await _start_broker(stack, settings, store)
        registry = default_registry(decoder_options(settings))
        ledger = Ledger(await store.load_ledger_states())
        hub = LiveHub()
        pipeline = Pipeline(
            registry=registry, ledger=ledger, store=store, hub=hub, stall_s=settings.commit_stall_s
        )
        options = broker.options
        intake = await stack.enter_async_context(MqttIntake(options, registry.subscriptions()))
        # Estimated slots take measured energy: the script's hours, registered devices' history.
        backfill = await stack.enter_async_context(
            fleet_backfill(store, data_dir=settings.data_dir)
        )
        repairer = Repairer(
            store,
            interval_s=settings.repair_interval_s,
            window_h=settings.repair_window_h,
            backfill=backfill,
            concurrency=settings.repair_concurrency,
        )
        # Polled answers join the MQTT deliveries in one stream: the ledger has one owner. Without
        # polling the pipeline takes the intake's batches directly, as it always has.
        polled = PolledSource(intake)
        poller = start_poller(settings, store, polled)
        source: DeliverySource = polled if poller is not None else intake
        running = Running(
            settings, store, hub, pipeline.stats, options.host, options.port, pipeline.health,
            broker=broker.kind, mosquitto=broker.mosquitto,
            poll=poller.stats if poller is not None else None,
        )  # fmt: skip
        abandoned = 0
        async with asyncio.TaskGroup() as tg:
            connector = tg.create_task(intake.run(), name="mqtt")
            ingest = tg.create_task(pipeline.run(source), name="ingest")
            polling = tg.create_task(poller.run(), name="poll") if poller is not None else None
            stats = tg.create_task(_log_stats(pipeline.stats, running.poll), name="stats")
            retention = tg.create_task(run_retention(store), name="retention")
            running.repair = repairer.stats
            repairing = tg.create_task(repairer.run(), name="repair")
            # a device whose readings resume after a gap: repair soon, not at the next interval
            watching = tg.create_task(repairer.watch(hub), name="repair-watch")
            running.alerts = AlertsRunner(
                store, interval_s=settings.alerts_interval_s, default_tz=settings.tz
            )
            alerting = tg.create_task(running.alerts.run(), name="alerts")
            if settings.homeassistant:  # MQTT discovery for Home Assistant: docs/homeassistant.md
                from kilowatch.service.homeassistant import publish_to_homeassistant

                tg.create_task(publish_to_homeassistant(options, store, hub, stop), name="ha")
            if web is not None:
                await web(tg, running, stop)
            await _wait_connected(intake, stop)
            log.info(
                "kilowatch ready store=%s mqtt=%s:%d broker=%s subscriptions=%d",
                _redact(settings.store_url), options.host, options.port,
                broker.kind, len(registry.subscriptions()),
            )  # fmt: skip
            if on_ready is not None:
                on_ready(running)
            await stop.wait()
            log.info("stopping: committing what is in flight")
            if polling is not None:
                polling.cancel()
            intake.stop_taking()
            polled.stop_taking()
            abandoned = await _drain(ingest, source, pipeline, settings, broker.kind)
            connector.cancel()
            stats.cancel()
            retention.cancel()
            repairing.cancel()
            watching.cancel()
            alerting.cancel()
        _log_totals(pipeline.stats, poll=running.poll)
    if abandoned:
        raise StoreError(
            f"stopped without storing {abandoned} messages: after "
            f"stop_timeout_s={settings.stop_timeout_s:g} the store "
            + (
                f"still failed (last error: {pipeline.stats.last_error})"
                if pipeline.stats.last_error
                else "had still not answered a commit"
            )
            + "; they were not acknowledged, "
            + (
                "and the embedded broker keeps nothing across a restart: they are lost"
                if broker.kind == EMBEDDED
                else "so the broker delivers them again at the next start"
            )
        )
    log.info("stopped")
    return pipeline.stats


async def _drain(
    ingest: asyncio.Task[None],
    intake: DeliverySource,
    pipeline: Pipeline,
    settings: Settings,
    broker_kind: str,
) -> int:
    """Let the pipeline commit what it holds for at most ``stop_timeout_s``; then cancel it.

    Returns how many received messages were left unacknowledged (0: everything was committed).
    """
    done, _ = await asyncio.wait({ingest}, timeout=settings.stop_timeout_s)
    if ingest in done:
        ingest.result()  # its error, if it failed, goes to the task group as usual
        return 0
    ingest.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ingest
    abandoned = sum(n for _, n in pipeline.stats.in_flight) + len(intake.take_pending())
    log.error(
        "stopping: gave up committing after stop_timeout_s=%g: %d messages not acknowledged "
        "(%s) last_error=%r",
        settings.stop_timeout_s,
        abandoned,
        "lost: the embedded broker keeps nothing across a restart"
        if broker_kind == EMBEDDED
        else "the broker delivers them again at the next start",
        pipeline.stats.last_error,
    )
    return abandoned


async def _wait_connected(intake: MqttIntake, stop: asyncio.Event) -> None:
    connected = asyncio.ensure_future(intake.connected.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connected, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        connected.cancel()
        stopped.cancel()


async def _log_stats(stats: IngestStats, poll: PollStats | None = None) -> None:
    last = time.monotonic()
    committed = stats.committed
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        now = time.monotonic()
        rate = (stats.committed - committed) / (now - last)
        last, committed = now, stats.committed
        _log_totals(stats, rate=rate, poll=poll)


def _log_totals(
    stats: IngestStats, *, rate: float | None = None, poll: PollStats | None = None
) -> None:
    dead = " ".join(f"dead_{reason}={n}" for reason, n in sorted(stats.dead_letters.items()))
    polled = (
        f" poll_devices={poll.devices} polls={poll.polls} poll_failures={poll.failures} "
        f"poll_in_backoff={poll.in_backoff}"
        if poll is not None
        else ""
    )
    log.info(
        "ingest received=%d committed=%d batches=%d commit_failures=%d%s%s%s",
        stats.received, stats.committed, stats.batches, stats.commit_failures,
        f" rate_per_s={rate:.1f}" if rate is not None else "",
        polled,
        f" {dead}" if dead else "",
    )  # fmt: skip


def _redact(url: str) -> str:
    """A URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


async def run_until_signalled(settings: Settings, *, web: WebStarter | None = None) -> IngestStats:
    """:func:`serve` until SIGINT or SIGTERM (a second signal stops without flushing)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set() and main is not None:
            log.warning("second signal %s: stopping now", signal.Signals(signum).name)
            main.cancel()
            return
        log.info("signal %s received", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await serve(settings, stop, web=web)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


__all__ = [
    "Running",
    "WebStarter",
    "decoder_options",
    "ingest_metrics",
    "mqtt_options",
    "run_until_signalled",
    "serve",
    "setup_logging",
]
