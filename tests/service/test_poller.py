"""The HTTP poller against simulated devices on their own loopback addresses (127.0.80.x:80).

Real components throughout: ``shellysim`` devices (unprovisioned: MQTT off, so the poller is the
only way their energy arrives), a SQLite store, the real pipeline and ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kilowatch.decode.registry import default_registry
from kilowatch.errors import FleetError
from kilowatch.fleet.rpc import connect_lan, lan_session
from kilowatch.fleet.secrets import DeviceSecrets, SecretBox
from kilowatch.intake.pipeline import Pipeline
from kilowatch.ledger import Ledger
from kilowatch.service.config import load_settings
from kilowatch.service.poller import PolledSource, Poller
from kilowatch.service.server import Running, ingest_metrics, serve
from kilowatch.store import Store, open_store
from kilowatch.store.protocol import Registration
from kilowatch.testing.servers import free_port
from shellysim import Fleet, SimClock, Truth, ha1_for
from shellysim.gen1http import Gen1HttpPlug

SPEED = 60.0


@dataclass
class Rig:
    fleet: Fleet
    store: Store
    source: PolledSource
    pipeline: Pipeline
    ingest: asyncio.Task[None]

    async def drain(self) -> None:
        """Stop taking answers; commit everything taken (the store stays open)."""
        self.source.stop_taking()
        await asyncio.wait_for(asyncio.shield(self.ingest), 10)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, hosts: str, n: int, models: list[str]) -> AsyncIterator[Rig]:
    async with (
        Fleet(devices=n, models=models, http_hosts=hosts, unprovisioned=True, speed=SPEED) as fleet,
        open_store(f"sqlite:///{tmp_path / 'k.db'}") as store,
    ):
        await store.register(
            [
                Registration(
                    device=d.id,
                    address=fleet.address(d),
                    transport="lan",
                    gen=2,
                    model=d.spec.model,
                )
                for d in fleet.devices
            ]
        )
        source = PolledSource(None)
        pipeline = Pipeline(
            registry=default_registry(),
            ledger=Ledger(await store.load_ledger_states()),
            store=store,
        )
        ingest = asyncio.create_task(pipeline.run(source))
        r = Rig(fleet, store, source, pipeline, ingest)
        try:
            yield r
        finally:
            await r.drain()


@contextlib.asynccontextmanager
async def polling(poller: Poller) -> AsyncIterator[Poller]:
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_polled_status_reaches_the_store_through_the_ledger(tmp_path: Path) -> None:
    async with rig(tmp_path, "127.0.80.1-127.0.80.3", 3, ["pm1", "3em", "switch"]) as r:
        poller = Poller(r.source.put, store=r.store, selection=["*"], interval_s=0.1)
        async with polling(poller):
            await until(lambda: poller.stats.polls >= 30)
            assert poller.targets == sorted(d.id for d in r.fleet.devices)
            await asyncio.sleep(1.0)  # one more minute of simulated energy
        assert poller.stats.failures == 0 and poller.stats.in_backoff == 0
        # the channels of every model, stamped by the devices (no dead letters)
        assert not r.pipeline.stats.dead_letters
        latest = {(x.device, x.channel): x for x in await r.store.latest()}
        ids = [d.id for d in r.fleet.devices]
        wanted = {(ids[0], "pm1:0"), (ids[1], "em:0"), (ids[1], "em:0/a"), (ids[2], "switch:0")}
        assert wanted <= set(latest)
        assert all(abs(latest[k].ts - r.fleet.clock.now()) < 2 * SPEED for k in wanted)
        devices = {d.device: d for d in await r.store.devices()}
        assert set(devices) == set(ids)
        assert all(devices[i].source == "shelly-http" for i in ids)


async def test_selection_is_any_of_the_expressions_and_refreshes(tmp_path: Path) -> None:
    async with rig(tmp_path, "127.0.80.11-127.0.80.13", 3, ["pm1", "3em", "switch"]) as r:
        pm, em, sw = r.fleet.devices
        poller = Poller(
            r.source.put,
            store=r.store,
            selection=[f"model={pm.spec.model}", em.id],
            interval_s=0.1,
            refresh_s=0.2,
        )
        async with polling(poller):
            await until(lambda: poller.stats.devices == 2)
            assert poller.targets == sorted([pm.id, em.id])
            # a new registration matching a selection joins at the next refresh
            await r.store.register([Registration(device=sw.id, model=pm.spec.model)])
            await until(lambda: sw.id in poller.targets)
    with pytest.raises(FleetError):
        Poller(r.source.put, store=r.store, selection=["colour=red"])


async def test_a_device_that_stops_answering_backs_off_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kilowatch.poll")
    async with rig(tmp_path, "127.0.80.21-127.0.80.22", 2, ["pm1"]) as r:
        quiet, steady = r.fleet.devices
        poller = Poller(
            r.source.put,
            store=r.store,
            selection=["*"],
            interval_s=0.05,
            backoff_max_s=0.8,
            rng=random.Random(1),
        )
        async with polling(poller):
            await until(lambda: poller.stats.polls >= 10)
            quiet.fault_outage(3 * SPEED)  # three real seconds without network
            await until(lambda: poller.stats.in_backoff == 1)
            assert poller.stats.backing_off == {quiet.id}
            await asyncio.sleep(2.0)
            # without backoff it would have failed 40 times in 2 s; with it, a handful
            failures = poller.stats.failures
            assert 3 <= failures <= 8
            await until(lambda: poller.stats.in_backoff == 0, timeout=5.0)
            answered = poller.stats.polls
            await until(lambda: poller.stats.polls >= answered + 10)
        assert poller.stats.failures == failures or poller.stats.failures <= 9
    lines = [rec.getMessage() for rec in caplog.records if quiet.id in rec.getMessage()]
    # one line when it stopped answering, one when it came back: not one per attempt
    assert sum("does not answer" in line for line in lines) == 1, lines
    assert sum("answers again" in line for line in lines) == 1, lines
    assert not any(
        steady.id in rec.getMessage() and "answer" in rec.getMessage() for rec in caplog.records
    )


async def test_concurrency_is_bounded_across_devices(tmp_path: Path) -> None:
    async with rig(tmp_path, "127.0.80.31-127.0.80.50", 20, ["pm1"]) as r:
        poller = Poller(
            r.source.put, store=r.store, selection=["*"], interval_s=0.01, concurrency=3
        )
        async with polling(poller):
            await until(lambda: poller.stats.polls >= 300)
        assert poller.max_in_flight == 3
        assert poller.stats.failures == 0


async def test_a_gen1_device_is_polled_by_address(tmp_path: Path) -> None:
    clock = SimClock(speed=SPEED)
    truth = Truth()
    async with (
        Gen1HttpPlug(host="127.0.80.60", clock=clock, truth=truth, seed=3) as plug,
        rig(tmp_path, "127.0.80.61", 1, ["pm1"]) as r,
    ):
        poller = Poller(r.source.put, gen1_hosts=[plug.address], interval_s=0.05)
        async with polling(poller):
            await until(lambda: poller.stats.polls >= 20)
            # known by its address until /settings named it: that key stays
            assert poller.targets == [plug.address]
        await r.drain()
        assert poller.stats.failures == 0 and not r.pipeline.stats.dead_letters
        [latest] = [x for x in await r.store.latest() if x.device == plug.id]
        assert latest.channel == "relay/0"
        assert abs(latest.ts - clock.now()) < 3 * SPEED  # its unixtime, not the receipt
        [device] = [d for d in await r.store.devices() if d.device == plug.id]
        assert device.gen == 1 and device.source == "shelly-http" and device.mac == plug.mac
        assert latest.energy_wh == pytest.approx(
            truth.total(plug.id, "relay/0", 0, 2e9)[0], abs=0.1
        )


async def test_serve_takes_mqtt_and_polled_devices_into_one_pipeline(tmp_path: Path) -> None:
    """``kilowatch serve`` with ``poll``: a device publishing over MQTT and a polled one, side by
    side in one pipeline (PolledSource), both in the store; the poll counters in ``/metrics``."""
    port = free_port()
    store_url = f"sqlite:///{tmp_path / 'k.db'}"
    settings = load_settings(
        {
            "broker": "embedded", "store": store_url, "mqtt_port": port, "tz": "UTC",
            "mqtt_client_id": "kw-poll-serve", "data_dir": str(tmp_path / "data"),
            "poll": "id=shelly*;model=nothing", "poll_interval_s": 0.1,
        },
        env={},
    )  # fmt: skip
    async with (
        Fleet(devices=1, broker=f"mqtt://127.0.0.1:{port}", speed=SPEED) as publishing,
        Fleet(
            devices=1, http_hosts="127.0.80.70", unprovisioned=True, speed=SPEED, seed=7
        ) as polled,
    ):
        [quiet] = polled.devices
        async with open_store(store_url) as store:
            await store.register(
                [Registration(device=quiet.id, address=polled.address(quiet), transport="lan")]
            )
        stop = asyncio.Event()
        ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tg:
            served = tg.create_task(serve(settings, stop, on_ready=ready.set_result))
            running = await ready
            loud = publishing.devices[0]

            async def sources() -> dict[str, str | None]:
                return {d.device: d.source for d in await running.store.devices()}

            async with asyncio.timeout(20):
                while (await sources()).keys() < {loud.id, quiet.id}:
                    await asyncio.sleep(0.1)
            found = await sources()
            assert found[loud.id] == "shelly" and found[quiet.id] == "shelly-http"
            assert running.poll is not None and running.poll.polls > 0
            assert running.poll.devices == 1  # the MQTT device is not registered: not polled
            metrics = ingest_metrics(running.stats, running.poll)
            assert metrics["polls"] > 0 and metrics["poll_failures"] == 0
            stop.set()
            stats = await served
        assert not stats.dead_letters


async def test_a_device_with_a_password_is_polled_with_the_one_in_the_secrets_file(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, "127.0.80.71", 1, ["pm1"]) as r:
        [dev] = r.fleet.devices
        async with lan_session() as session:
            rpc = await connect_lan(r.fleet.address(dev), session=session)
            async with rpc:
                await rpc.set_auth(dev.id, ha1_for(dev.id, "s3cret-pass"))
        box = SecretBox(tmp_path / "fleet" / "secrets.json")
        box.put(dev.id, DeviceSecrets(device_password="wrong"))
        await r.store.register([Registration(device=dev.id, credentials=dev.id)])
        poller = Poller(r.source.put, store=r.store, selection=["*"], interval_s=0.05, secrets=box)
        async with polling(poller):
            await until(lambda: poller.stats.failures >= 1)
            assert poller.stats.polls == 0
            # the right password, written while it runs, is read again after a refusal
            box.put(dev.id, DeviceSecrets(device_password="s3cret-pass"))
            await until(lambda: poller.stats.polls >= 5)
        assert poller.stats.in_backoff == 0
