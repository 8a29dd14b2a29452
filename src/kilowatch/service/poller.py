"""Devices without MQTT: their status polled over HTTP into the same pipeline (docs/polling.md).

:class:`Poller` asks each device it polls for its whole status every ``interval_s``:

* Gen2+ devices of the fleet registry chosen by the ``poll`` setting: ``Shelly.GetStatus`` through
  the fleet's RPC client (:func:`kilowatch.fleet.registry.open_rpc`: one
  :class:`~kilowatch.fleet.rpc.ShellyRpc` per device, kept open, its WebSocket reused from poll to
  poll and reopened by the next poll after it dropped; the device password from the secrets file);
* Gen1 devices named by ``poll_gen1`` (``host[:port]``), and registered devices of ``gen`` 1:
  ``GET /status`` (their id, for a named address, from ``GET /settings``: the MQTT id, else the
  host name, as the device would publish under on MQTT).

Each answer becomes one :class:`~kilowatch.intake.client.Delivery` on a pseudo-topic
(:mod:`kilowatch.decode.shelly_http`) that :class:`PolledSource` hands to the pipeline beside the
MQTT intake's deliveries: the same decoders, the same ledger and its rules (a repeated counter adds
nothing, a gap is spread, a reset is a reset), the same commits. A polled answer needs no
acknowledgement (``mid`` 0).

Bounds: at most ``concurrency`` polls are in flight across all devices (a semaphore); each is
bounded by ``timeout_s``. A device that does not answer is asked again after a jittered,
exponentially growing delay (``interval_s`` × 2, 4, 8 ..., at most :data:`BACKOFF_MAX_S`,
each drawn from its upper half), and answers on time again from its first answer; the change of
state is logged once each way, never each attempt. The registry selection is resolved at start
and every ``refresh_s`` (new registrations join, removed ones leave).

The poller owns no ledger and no store writes: it only reads the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
import orjson

from kilowatch.decode.shelly_http import GEN1_STATUS, GEN2_STATUS, topic_for
from kilowatch.errors import DeviceError, FleetError, InvalidAuthError, KilowatchError
from kilowatch.fleet.registry import open_rpc, select
from kilowatch.fleet.rpc import ShellyRpc, lan_session
from kilowatch.fleet.rpc.lan import split_address
from kilowatch.fleet.secrets import SecretBox
from kilowatch.intake.client import Delivery
from kilowatch.intake.pipeline import DeliverySource
from kilowatch.store.protocol import Registration, Store

log = logging.getLogger("kilowatch.poll")

POLL_INTERVAL_S = 10.0
"""Default ``poll_interval_s``."""
POLL_CONCURRENCY = 32
"""Default ``poll_concurrency``: polls in flight at once across all devices."""
POLL_TIMEOUT_S = 5.0
"""Bound of one poll (a device on the LAN answers in well under a second)."""
REFRESH_S = 60.0
"""How often the registry selection is resolved again."""
BACKOFF_MAX_S = 300.0
"""A device that stopped answering is asked at least this often."""
PENDING_LIMIT = 100_000
"""Polled answers held while the pipeline does not take them (the store is down) at most; beyond
it the oldest are dropped (counted). Counters are cumulative, so a dropped answer costs
resolution, never energy: the next answer carries everything the dropped one did."""


@dataclass
class PollStats:
    """What the poller did since start (``/metrics``, the stats log line)."""

    polls: int = 0
    """Answers received."""
    failures: int = 0
    """Polls that got no usable answer."""
    dropped: int = 0
    """Answers dropped because the pipeline did not take them (see :data:`PENDING_LIMIT`)."""
    devices: int = 0
    """Devices polled now."""
    backing_off: set[str] = field(default_factory=set)
    """Devices that did not answer their last poll (asked again after a backoff), by the key
    :attr:`Poller.targets` lists."""

    @property
    def in_backoff(self) -> int:
        return len(self.backing_off)


class PolledSource:
    """A :class:`~kilowatch.intake.pipeline.DeliverySource`: the MQTT intake's deliveries and the
    poller's answers, in one stream for one pipeline (the ledger has one owner).

    ``intake`` is the MQTT intake (``None``: polled answers only). :meth:`put` is the poller's
    side. :meth:`next_batch` returns whatever is there first: polled answers at once, else the
    intake's next batch. The intake's ``next_batch`` runs in a task kept across calls, so that a
    caller giving up on a call (``asyncio.wait_for``) never loses a batch it was taking.
    """

    def __init__(self, intake: DeliverySource | None, *, limit: int = PENDING_LIMIT) -> None:
        self.intake = intake
        self.limit = limit
        self.dropped = 0
        self._polled: deque[Delivery] = deque()
        self._arrived = asyncio.Event()
        self._mqtt: asyncio.Task[list[Delivery]] | None = None
        self._stopped = False
        self._intake_done = intake is None

    def put(self, delivery: Delivery) -> None:
        """One polled answer (dropping the oldest when :attr:`limit` are waiting)."""
        if len(self._polled) >= self.limit:
            self._polled.popleft()
            self.dropped += 1
        self._polled.append(delivery)
        self._arrived.set()

    def stop_taking(self) -> None:
        """:meth:`next_batch` returns ``[]`` from now on (the intake is told separately)."""
        self._stopped = True
        self._arrived.set()

    async def next_batch(self, max_items: int) -> list[Delivery]:
        """Up to ``max_items`` deliveries, waiting for at least one; ``[]`` once stopped (and the
        intake, if any, returned ``[]``)."""
        while True:
            if self._mqtt is not None and self._mqtt.done():
                task, self._mqtt = self._mqtt, None
                batch = task.result()
                if batch:
                    return batch + self._take(max_items - len(batch))
                self._intake_done = True
            if self._polled and not self._stopped:
                return self._take(max_items)
            if self._stopped and self._intake_done:
                return []
            if self._mqtt is None and not self._intake_done:
                assert self.intake is not None
                self._mqtt = asyncio.ensure_future(self.intake.next_batch(max_items))
            self._arrived.clear()
            waiting: set[asyncio.Future[object]] = {asyncio.ensure_future(self._arrived.wait())}
            try:
                if self._mqtt is not None:
                    waiting.add(self._mqtt)  # type: ignore[arg-type]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiting:
                    if w is not self._mqtt:
                        w.cancel()

    def _take(self, n: int) -> list[Delivery]:
        out: list[Delivery] = []
        polled = self._polled
        while polled and len(out) < n:
            out.append(polled.popleft())
        return out

    def take_pending(self) -> list[Delivery]:
        """Everything received and not yet taken (the final flush at shutdown)."""
        out = list(self._polled)
        self._polled.clear()
        if self.intake is not None:
            out = self.intake.take_pending() + out
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge the intake's deliveries (polled answers have ``mid`` 0: nothing to ack)."""
        if self.intake is not None:
            self.intake.ack(deliveries)


@dataclass
class _Target:
    """One device the poller asks."""

    key: str
    """The device id (registry), or the address of a ``poll_gen1`` entry."""
    address: str
    gen1: bool
    registration: Registration | None = None
    device: str | None = None
    """The device id, once known (a Gen1 address learns it from ``/settings``)."""
    rpc: ShellyRpc | None = None
    stack: AsyncExitStack | None = None
    failures: int = 0


class Poller:
    """Polls devices and hands their answers to ``sink`` (:meth:`PolledSource.put`).

    ``store`` is read for the registry (``selection``: ``poll`` entries, a device matching any
    entry is polled; each entry is a ``--select`` expression, commas inside it joining terms that
    must all match); ``gen1_hosts``: ``poll_gen1`` addresses. ``secrets``: the device passwords
    of registered devices. ``wall`` stamps answers on receipt; ``rng`` draws the jitter (tests).
    """

    def __init__(
        self,
        sink: Callable[[Delivery], None],
        *,
        store: Store | None = None,
        selection: Sequence[str] = (),
        gen1_hosts: Sequence[str] = (),
        interval_s: float = POLL_INTERVAL_S,
        concurrency: int = POLL_CONCURRENCY,
        timeout_s: float = POLL_TIMEOUT_S,
        refresh_s: float = REFRESH_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        secrets: SecretBox | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive, concurrency at least 1")
        for expression in selection:
            select((), [expression])  # FleetError now for an unknown key, not a minute later
        for host in gen1_hosts:
            split_address(host)  # FleetError for an address that is none
        self.sink = sink
        self.store = store
        self.selection = tuple(selection)
        self.gen1_hosts = tuple(gen1_hosts)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.backoff_max_s = max(backoff_max_s, interval_s)
        self.secrets = secrets
        self.wall = wall
        self.rng = rng or random.Random()
        self.stats = PollStats()
        self._limit = asyncio.Semaphore(concurrency)
        self._in_flight = 0
        self.max_in_flight = 0
        """The most polls ever in flight at once (never above ``concurrency``)."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._targets: dict[str, _Target] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def targets(self) -> list[str]:
        """Keys of the devices polled now (device ids; a Gen1 address until its id is known)."""
        return sorted(self._targets)

    async def run(self) -> None:
        """Poll until cancelled; every device connection is closed on the way out."""
        async with lan_session() as session:
            self._session = session
            try:
                async with asyncio.TaskGroup() as tg:
                    while True:
                        await self._refresh(tg)
                        await asyncio.sleep(self.refresh_s)
            finally:
                for target in list(self._targets.values()):
                    await self._close(target)
                self._targets.clear()
                self._tasks.clear()
                self._session = None

    # -- which devices -------------------------------------------------------------------------

    async def _wanted(self) -> dict[str, _Target]:
        wanted: dict[str, _Target] = {}
        for host in self.gen1_hosts:
            wanted[host] = _Target(host, host, gen1=True)
        if self.selection and self.store is not None:
            try:
                registrations = await self.store.registry()
            except KilowatchError as err:
                log.warning(
                    "poll: cannot read the registry error=%r; keeping the devices", str(err)
                )
                return {**self._targets, **wanted}
            chosen: dict[str, Registration] = {}
            for expression in self.selection:
                for reg in select(registrations, [expression]):
                    chosen[reg.device] = reg
            for device, reg in chosen.items():
                if reg.address is None:
                    continue  # reachable over MQTT only: it publishes, nothing to poll
                wanted[device] = _Target(
                    device, reg.address, gen1=reg.gen == 1, registration=reg, device=device
                )
        return wanted

    async def _refresh(self, tg: asyncio.TaskGroup) -> None:
        wanted = await self._wanted()
        for key in [k for k in self._targets if k not in wanted]:
            self._tasks.pop(key).cancel()
            target = self._targets.pop(key)
            self.stats.backing_off.discard(key)
            await self._close(target)
            log.info("poll: stopped polling device=%s", key)
        for key, target in wanted.items():
            old = self._targets.get(key)
            if old is not None and old.address == target.address:
                continue
            if old is not None:  # its address changed: start over there
                self._tasks.pop(key).cancel()
                await self._close(old)
            self._targets[key] = target
            self._tasks[key] = tg.create_task(self._device_loop(target), name=f"poll {key}")
            if old is None:
                log.info(
                    "poll: polling device=%s address=%s gen=%s every_s=%g",
                    key,
                    target.address,
                    "1" if target.gen1 else "2+",
                    self.interval_s,
                )
        self.stats.devices = len(self._targets)

    # -- one device ----------------------------------------------------------------------------

    async def _device_loop(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        # spread the fleet over the interval instead of asking every device at the same instant
        due = loop.time() + self.rng.uniform(0, self.interval_s)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            async with self._limit:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
                try:
                    error = await self._poll(target)
                finally:
                    self._in_flight -= 1
            now = loop.time()
            if error is None:
                self._answered(target)
                due += self.interval_s
                if due < now:  # fell behind (a slow device, a busy loop): skip, do not burst
                    due = now + self.interval_s
            else:
                due = now + self._failed(target, error)

    def _answered(self, target: _Target) -> None:
        self.stats.polls += 1
        if target.failures:
            log.info(
                "poll: device answers again device=%s after_failures=%d",
                target.device or target.key,
                target.failures,
            )
            target.failures = 0
            self.stats.backing_off.discard(target.key)

    def _failed(self, target: _Target, error: Exception) -> float:
        """Count the failure; the delay until the next poll."""
        self.stats.failures += 1
        target.failures += 1
        name = target.device or target.key
        if target.failures == 1:
            log.warning(
                "poll: device does not answer device=%s address=%s error=%r; backing off",
                name,
                target.address,
                str(error),
            )
            self.stats.backing_off.add(target.key)
        ceiling = min(self.backoff_max_s, self.interval_s * 2.0 ** min(target.failures, 30))
        return self.rng.uniform(ceiling / 2, ceiling)

    async def _poll(self, target: _Target) -> Exception | None:
        """Ask once; hand the answer to the sink. The error, if it got no usable answer."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if target.gen1:
                    topic, payload = await self._poll_gen1(target)
                else:
                    topic, payload = await self._poll_gen2(target)
        except InvalidAuthError as err:
            # the password may have changed in the secrets file: read it again next time
            await self._close(target)
            return err
        except (DeviceError, FleetError, aiohttp.ClientError, OSError, ValueError) as err:
            return err
        except TimeoutError:
            return DeviceError(target.key, f"no answer within {self.timeout_s:g} s")
        self.sink(Delivery(topic, payload, self.wall(), 0, 0))
        return None

    async def _poll_gen2(self, target: _Target) -> tuple[str, bytes]:
        if target.rpc is None:
            assert target.registration is not None and self._session is not None
            stack = AsyncExitStack()
            target.rpc = await stack.enter_async_context(
                open_rpc(
                    target.registration, secrets=self.secrets, session=self._session, mqtt=None
                )
            )
            target.stack = stack
        status = await target.rpc.call("Shelly.GetStatus", timeout=self.timeout_s)
        if not isinstance(status, dict):
            raise DeviceError(target.key, "Shelly.GetStatus answered no object")
        assert target.device is not None
        return topic_for(target.device, GEN2_STATUS), orjson.dumps(status)

    async def _poll_gen1(self, target: _Target) -> tuple[str, bytes]:
        host, port = split_address(target.address)
        base = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        if target.device is None:
            settings = await self._get_json(base + "/settings", target)
            target.device = _gen1_id(settings, target)
        status = await self._get(base + "/status", target)
        return topic_for(target.device, GEN1_STATUS), status

    async def _get(self, url: str, target: _Target) -> bytes:
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status == 401:
                raise DeviceError(
                    target.key, "the device asks for a login (Gen1 restricted login): not supported"
                )
            if response.status != 200:
                raise DeviceError(target.key, f"GET {url} answered {response.status}")
            return await response.read()

    async def _get_json(self, url: str, target: _Target) -> dict[str, object]:
        doc = orjson.loads(await self._get(url, target))
        if not isinstance(doc, dict):
            raise DeviceError(target.key, f"GET {url} answered no JSON object")
        return doc

    async def _close(self, target: _Target) -> None:
        stack, target.stack, target.rpc = target.stack, None, None
        if stack is not None:
            with contextlib.suppress(KilowatchError, aiohttp.ClientError, OSError):
                await stack.aclose()


def _gen1_id(settings: dict[str, object], target: _Target) -> str:
    """The id a Gen1 device publishes under on MQTT: ``mqtt.id``, else its host name."""
    for section, key in (("mqtt", "id"), ("device", "hostname")):
        part = settings.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, str) and value and "/" not in value:
            return value
    raise DeviceError(target.key, "GET /settings names no device id (mqtt.id, device.hostname)")


__all__ = [
    "BACKOFF_MAX_S",
    "POLL_CONCURRENCY",
    "POLL_INTERVAL_S",
    "POLL_TIMEOUT_S",
    "REFRESH_S",
    "PollStats",
    "PolledSource",
    "Poller",
]
