"""The proof of issue 12's alerts: alerts fire and resolve for a simulated device going offline
and a load crossing a threshold, with exactly one notification each way, delivered to a local
webhook receiver and a local SMTP server.

``kilowatch serve`` (SQLite, a real mosquitto) with two simulated Plus 1PMs publishing over MQTT.
The rules: any device offline for 2 s (its LWT), and device B's ``switch:0`` above 1000 W for
2 s; both notify a signed webhook (which refuses every first attempt of a notification with a
500) and an e-mail channel (whose SMTP server answers the first message with a transient 451).
Device A loses its network (the broker publishes its will) for 10 s; while its alert is firing,
kilowatch is restarted; A comes back. Then B's relay switches a steady 2 kW load on for 4 s.

Each receiver must see exactly four notifications (A firing, A resolved, B firing, B resolved),
each under one id however many attempts it took, nothing for B going offline nor for A's
power, and the history in the store must say so.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.alerts.receivers import SmtpReceiver, WebhookReceiver

from kilowatch.alerts.config import new_webhook_secret, parse_config, save_config
from kilowatch.alerts.state import history
from kilowatch.service.config import Settings, load_settings
from kilowatch.service.server import Running, ingest_metrics, serve
from kilowatch.store import open_store
from kilowatch.testing import MosquittoServer
from shellysim import Fleet
from shellysim.channels import Switch
from shellysim.profiles import Sample


@dataclass(frozen=True)
class SteadyLoad:
    """A load that draws ``watts`` whenever its relay is on (the simulator's profiles cycle)."""

    watts: float

    def sample_segment(self, seg: int) -> Sample:
        return Sample(self.watts, 230.0, 1.0, 50.0)

    def sample(self, t: float) -> Sample:
        return self.sample_segment(0)


class Service:
    """``kilowatch serve`` as a task that can be stopped and started again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: Running | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[object] | None = None

    async def start(self) -> Running:
        ready = asyncio.Event()
        self._stop = asyncio.Event()

        def on_ready(r: Running) -> None:
            self.running = r
            ready.set()

        self._task = asyncio.create_task(serve(self.settings, self._stop, on_ready=on_ready))
        async with asyncio.timeout(20):
            await ready.wait()
        assert self.running is not None
        return self.running

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_offline_and_power_alerts_fire_and_resolve_once_on_both_channels(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    secret = new_webhook_secret()
    settings = load_settings(
        {
            "broker": mosquitto.url,
            "store": f"sqlite:///{tmp_path / 'alerts.db'}",
            "data_dir": str(tmp_path),
            "mqtt_client_id": f"kilowatch-alerts-proof-{uuid.uuid4().hex[:8]}",
            "tz": "UTC",
            "alerts_interval_s": 0.25,
        },
        env={},
    )
    fleet = Fleet(devices=2, models=("switch",), broker=mosquitto.url, http=False, engine=None)
    a, b = fleet.devices
    relay = b.channels["switch:0"]
    assert isinstance(relay, Switch)
    relay.meter.profile = SteadyLoad(2000.0)  # type: ignore[assignment]
    relay.output = False
    webhook = WebhookReceiver(secret, fail_first_per_id=1)
    smtp = SmtpReceiver(busy_first=1)
    async with webhook, smtp:
        config = parse_config(
            {
                "rules": [
                    {"id": "offline", "kind": "offline", "for_s": 2,
                     "notify": ["hook", "mail"]},
                    {"id": "b-load", "kind": "power_above", "devices": [b.id],
                     "channel": "switch:0", "threshold_w": 1000, "for_s": 2,
                     "notify": ["hook", "mail"]},
                ],
                "channels": [
                    {"name": "hook", "kind": "webhook", "url": webhook.url, "secret": secret},
                    {"name": "mail", "kind": "email", "smtp_host": smtp.host,
                     "smtp_port": smtp.port, "smtp_security": "none",
                     "sender": "kilowatch@example.org", "recipients": ["ops@example.org"]},
                ],
            }
        )  # fmt: skip
        async with open_store(settings.store_url) as store:
            await save_config(store, config)
        service = Service(settings)
        try:
            running = await service.start()
            async with fleet:
                await fleet.wait_connected()
                await until(
                    lambda: running.alerts is not None and running.alerts.stats.evaluations > 3,
                    "the first evaluations",
                )
                # A: offline (the will), the alert fires on both channels
                a.fault_outage(10.0)
                await webhook.wait_for(1)
                await smtp.wait_for(1)
                # kilowatch restarts while A's alert is firing: nothing is sent again
                await service.stop()
                running = await service.start()
                await until(
                    lambda: running.alerts is not None and running.alerts.stats.evaluations > 3,
                    "evaluations after the restart",
                )
                # A comes back: resolved, once
                await webhook.wait_for(2, timeout=15)
                await smtp.wait_for(2)
                # B: a 2 kW load for 4 s, then off
                relay.set_output(True, "test")
                await webhook.wait_for(3)
                await smtp.wait_for(3)
                relay.set_output(False, "test")
                await webhook.wait_for(4)
                await smtp.wait_for(4)
                await asyncio.sleep(1.0)  # anything more would show now
                metrics = ingest_metrics(running.stats, alerts=running.alerts)
        finally:
            await service.stop()

    hooks = [a_.json() for a_ in webhook.accepted]
    assert [(h["device"], h["type"]) for h in hooks] == [
        (a.id, "alert.firing"),
        (a.id, "alert.resolved"),
        (b.id, "alert.firing"),
        (b.id, "alert.resolved"),
    ], hooks
    # every notification's first attempt failed (500) and its retry carried the same id
    assert len(webhook.ids) == 4 and len(webhook.attempts) == 8
    assert all(x.verified for x in webhook.attempts)
    assert {x.headers["webhook-id"] for x in webhook.attempts} == set(webhook.ids)
    subjects = [str(m["Subject"]) for m in smtp.messages]
    assert subjects == [
        f"[kilowatch] FIRING: offline - {a.id}",
        f"[kilowatch] RESOLVED: offline - {a.id}",
        f"[kilowatch] FIRING: b-load - {b.id}",
        f"[kilowatch] RESOLVED: b-load - {b.id}",
    ], subjects
    assert len(smtp.ids) == 4 and smtp.handler.busy == 1
    assert hooks[2]["value"] >= 1000 and "above 1000 W" in hooks[2]["message"]
    async with open_store(settings.store_url) as store:
        records = await history(store)
    assert [(r.device, r.transition) for r in reversed(records)] == [
        (a.id, "firing"), (a.id, "resolved"), (b.id, "firing"), (b.id, "resolved"),
    ]  # fmt: skip
    assert all(r.ok for r in records)
    # the first notification: its webhook and its e-mail each took a retry
    assert {d.channel: d.attempts for d in records[-1].deliveries} == {"hook": 2, "mail": 2}
    # the run after the restart sent A resolved, B firing, B resolved: 3 x 2 channels
    assert metrics["alerts_notifications"] == 3
    assert metrics["alerts_delivered"] == 6 and metrics["alerts_delivery_failures"] == 0
    print(f"\nalerts proof in {time.monotonic() - started:.1f} s")
