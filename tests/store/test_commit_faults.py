"""A commit whose outcome is unknown, retried, is stored exactly once: on one Redis server and on
a Redis Cluster, with a fault-injecting proxy (:class:`~kilowatch.testing.faultproxy.FaultProxy`)
between kilowatch and every node.

Faults: the reply to the commit's command lost after the server ran it; the connection cut in the
middle of what the client sends; a stall longer than the socket timeout (the late command reaches
the server after the client retried, and after later commits); a cluster node down while the
other nodes take their part of the batch (the reproduction of issue 9: three attempts of one
batch left 1x, 2x and 3x the energy). Each time the batch is committed the way the pipeline does:
the same ``Batch`` again until a commit succeeds. Stored energy, events, dead-letter counts and
the seed's hour hashes must equal the truth to the milliwatt-hour.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import date
from typing import Any

import pytest
import redis

from kilowatch.errors import StoreError
from kilowatch.intake.commit import Committer
from kilowatch.intake.stats import IngestStats
from kilowatch.model.messages import Event
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.store import Batch, DeadLetter
from kilowatch.store.protocol import AuditEntry, PowerMinute
from kilowatch.store.redis import RedisStore
from kilowatch.testing import RedisClusterServer, RedisServer
from kilowatch.testing.energy import T0, reference
from kilowatch.testing.faultproxy import FaultProxy

DEVICES = 24
"""Shelly ids (a MAC each: seed hashes too), one channel each: slots all over a cluster."""
COMMIT_COMMANDS = ("EVALSHA", "EVAL", "EXEC")
"""Whatever command carries a commit to the server."""
SHORT_TIMEOUT_S = 0.5
"""Socket timeout of the fast stall tests (kilowatch's own is 30 s)."""
DAY = EnergyQuery(by="day", tz="UTC", start=date(2026, 10, 23), end=date(2026, 10, 24))
HOURS = EnergyQuery(by="hour", tz="UTC", start=date(2026, 10, 23), end=date(2026, 10, 24))


def device(i: int) -> str:
    return f"shellyplugsg3-{i:012X}"


def batch(k: int) -> Batch:
    """The ``k``-th batch: two slots of each device in hour ``k`` of the day, one event, one dead
    letter (everything a retry could add twice)."""
    hour = T0 + 3600 * k
    slots = [
        SlotEnergy(device(i), "switch:0", hour + 900 * j, 1_000 + 7 * i + j + k, (i + k) % 3)
        for i in range(DEVICES)
        for j in range(2)
    ]
    return Batch(
        slots=slots,
        ledger_states={(device(i), "switch:0"): {"k": k} for i in range(DEVICES)},
        events=[Event(device(k % DEVICES), hour, "sys", f"event-{k}")],
        dead_letters=[DeadLetter(hour, "x/y", b"?", "invalid_json", f"batch {k}")],
    )


async def commit_until_stored(store: RedisStore, b: Batch, *, attempts: int = 40) -> int:
    """Commit ``b`` as the pipeline does (the same batch again after a failure, with a pause);
    returns how many attempts failed."""
    for failed in range(attempts):
        try:
            await store.commit(b)
        except StoreError:
            await asyncio.sleep(0.05)
            continue
        return failed
    raise AssertionError(f"batch not stored after {attempts} attempts")


async def check_exactly_once(store: RedisStore, batches: list[Batch]) -> None:
    """Energy (day and hour rollups, hour columns), events, dead-letter counts and the seed
    hashes hold each batch once."""
    slots = [s for b in batches for s in b.slots]
    assert await store.energy(DAY) == reference(DAY, slots)
    assert await store.energy(HOURS) == reference(HOURS, slots)
    assert len(await store.events(limit=1000)) == len(batches)
    assert await store.dead_letter_counts() == {"invalid_json": len(batches)}
    assert len(await store.dead_letters(limit=1000)) == len(batches)
    client = store.client
    for i in (0, DEVICES - 1):
        mac = device(i).rsplit("-", 1)[1]
        for b in batches:
            hour = b.slots[0].slot - b.slots[0].slot % 3600
            mine = [s for s in b.slots if s.device == device(i)]
            raw = await client.hget(store.seed_key(mac, hour), "hourly_energy_usage")
            assert float(raw) * 1000 == pytest.approx(sum(s.import_mwh for s in mine), abs=1e-6)


@pytest.fixture(params=["redis", "cluster"])
def node_ports(request: pytest.FixtureRequest) -> list[int]:
    """Ports of an empty Redis server, or of the nodes of an empty Redis Cluster."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
        server: RedisServer = request.getfixturevalue("redis_server")
        return [server.port]
    request.getfixturevalue("cluster_url")
    cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
    return [n.port for n in cluster.nodes]


@asynccontextmanager
async def proxied(
    ports: list[int], **client_options: Any
) -> AsyncIterator[tuple[RedisStore, list[FaultProxy]]]:
    """A store whose every connection goes through a proxy per node (a cluster's nodes announce
    their own ports: ``address_remap`` sends them to the proxies)."""
    async with AsyncExitStack() as stack:
        proxies = [await stack.enter_async_context(FaultProxy(("127.0.0.1", p))) for p in ports]
        remap = {("127.0.0.1", p): proxy.address for p, proxy in zip(ports, proxies, strict=True)}
        if len(ports) > 1:
            client_options["address_remap"] = lambda address: remap.get(address, address)
        url = "redis://" + ",".join(f"127.0.0.1:{p.port}" for p in proxies) + "/0"
        store = await stack.enter_async_context(RedisStore(url, client_options=client_options))
        await store.commit(batch(0))  # the script is loaded, every node has connections
        yield store, proxies


# -- the reply is lost after the server ran the commit ---------------------------------------------


async def test_a_lost_reply_is_not_counted_twice(node_ports: list[int]) -> None:
    """Once per node: redis-py's own retry sends the commit again."""
    async with proxied(node_ports) as (store, proxies):
        for proxy in proxies:
            proxy.drop_reply(*COMMIT_COMMANDS)
        b = batch(1)
        await commit_until_stored(store, b)
        assert sum(p.fired for p in proxies) >= 1
        await check_exactly_once(store, [batch(0), b])


async def test_replies_lost_until_the_commit_fails_are_not_counted_twice(
    node_ports: list[int],
) -> None:
    """Every reply of one node lost, redis-py's retries included, until the commit fails (the
    other nodes of a cluster answer); then the batch is committed again."""
    async with proxied(node_ports) as (store, proxies):
        proxies[0].drop_reply(*COMMIT_COMMANDS, times=10**6)
        b = batch(1)
        with pytest.raises(StoreError):
            await store.commit(b)
        assert proxies[0].fired > 1
        proxies[0].heal()
        assert await commit_until_stored(store, b) == 0
        await check_exactly_once(store, [batch(0), b])


# -- the connection is cut while the client sends -----------------------------------------------


@pytest.mark.parametrize("nbytes", [0, 100, 1_500, 6_000])
async def test_a_connection_cut_mid_stream_is_not_counted_twice(
    node_ports: list[int], nbytes: int
) -> None:
    async with proxied(node_ports) as (store, proxies):
        for proxy in proxies:
            proxy.cut_after(nbytes)
        b = batch(1)
        await commit_until_stored(store, b)
        assert sum(p.fired for p in proxies) >= 1
        await check_exactly_once(store, [batch(0), b])


# -- a stall: the command arrives late -------------------------------------------------------------


async def test_a_command_delivered_after_the_retry_and_later_commits_counts_once(
    node_ports: list[int],
) -> None:
    """The connection that carries the commit stalls longer than the socket timeout: the client
    gives up on it and commits again on a new connection, then commits two more batches; only
    then does the stalled command reach the server."""
    async with proxied(node_ports, socket_timeout=SHORT_TIMEOUT_S) as (store, proxies):
        for proxy in proxies:
            proxy.stall(6 * SHORT_TIMEOUT_S, new_connections=False)
        batches = [batch(1), batch(2), batch(3)]
        for b in batches:
            await commit_until_stored(store, b)
        for proxy in proxies:
            await proxy.settled()
        await check_exactly_once(store, [batch(0), *batches])


async def test_a_stall_of_every_connection_counts_once(node_ports: list[int]) -> None:
    """Every connection, new ones too, stalls for three socket timeouts: redis-py's retries
    stall as well; all of them reach the server once the stall ends."""
    async with proxied(node_ports, socket_timeout=SHORT_TIMEOUT_S) as (store, proxies):
        for proxy in proxies:
            proxy.stall(3 * SHORT_TIMEOUT_S)
        b = batch(1)
        await commit_until_stored(store, b)
        for proxy in proxies:
            await proxy.settled()
        await check_exactly_once(store, [batch(0), b])


@pytest.mark.slow
async def test_a_stall_past_kilowatchs_own_socket_timeout_counts_once(
    node_ports: list[int],
) -> None:
    """The same with kilowatch's own timeouts: a 31 s stall (30 s socket timeout)."""
    async with proxied(node_ports) as (store, proxies):
        for proxy in proxies:
            proxy.stall(31)
        b = batch(1)
        await commit_until_stored(store, b)
        for proxy in proxies:
            await proxy.settled()
        await check_exactly_once(store, [batch(0), b])


# -- a cluster node is down: the other nodes' groups succeed ---------------------------------------


@pytest.fixture
def cluster_ports(cluster_url: str, redis_cluster: RedisClusterServer) -> list[int]:
    return [n.port for n in redis_cluster.nodes]


def node_keys(port: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return int(client.dbsize())
    finally:
        client.close()


async def test_partial_cluster_success_then_retry_counts_once(cluster_ports: list[int]) -> None:
    """Issue 9's reproduction: one node down for two attempts of a batch while the others take
    their slots' share each time, then up for the third: every channel holds the batch once."""
    async with proxied(cluster_ports) as (store, proxies):
        before = [node_keys(p) for p in cluster_ports]
        proxies[1].refuse()
        b = batch(1)
        for _ in range(2):
            with pytest.raises(StoreError):
                await store.commit(b)
        after = [node_keys(p) for p in cluster_ports]
        assert after[0] > before[0] and after[2] > before[2]  # the up nodes took their part
        assert after[1] == before[1]
        proxies[1].heal()
        assert await commit_until_stored(store, b) == 0
        await check_exactly_once(store, [batch(0), b])


async def test_the_pipelines_commit_step_stores_a_batch_once_through_a_node_outage(
    cluster_ports: list[int],
) -> None:
    """The pipeline's own commit step (:class:`~kilowatch.intake.commit.Committer`: the same
    batch again, with backoff, until the store takes it) while a node is down for two attempts."""
    async with proxied(cluster_ports) as (store, proxies):
        proxies[1].refuse()
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:
                proxies[1].heal()

        stats = IngestStats()
        b = batch(1)
        await Committer(store, stats, sleep=sleep).commit(b)
        assert len(waits) == 2 and stats.commit_failures == 2
        await check_exactly_once(store, [batch(0), b])


# -- a process replaced while its command is held: the successor fences it out --------------------


async def test_a_replaced_writers_late_command_is_refused(node_ports: list[int]) -> None:
    """bench/faults.py's kill-late: a process's commit is held by the network, the process is
    replaced (killed, or stopped), its successor reads the ledger states and counts the
    redelivered messages again; then the held command reaches the server. It must be refused:
    the successor claimed the store (a higher generation on every floor) before reading."""
    async with proxied(node_ports, socket_timeout=SHORT_TIMEOUT_S) as (old, proxies):
        await old.load_ledger_states()  # the old process is the ingest's writer
        for proxy in proxies:  # every connection of the old process: its retries wait too
            proxy.stall(6 * SHORT_TIMEOUT_S)
        held = asyncio.create_task(old.commit(batch(1)))
        await asyncio.sleep(SHORT_TIMEOUT_S / 2)  # the command is on its way, held
        url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in node_ports) + "/0"
        async with RedisStore(url) as new:
            await new.load_ledger_states()  # claims the store, then reads
            await commit_until_stored(new, batch(1))  # the same messages, counted by the new one
            for proxy in proxies:
                await proxy.settled()  # the old command has reached the server now
            with contextlib.suppress(StoreError):
                await held  # timed out, or refused: either way it did not count
            with pytest.raises(StoreError, match="another kilowatch took over"):
                await old.commit(batch(2))  # and nothing later of the old writer counts either
            await check_exactly_once(new, [batch(0), batch(1)])


# -- power minutes and the audit log through the same faults ---------------------------------------


def with_power(k: int) -> Batch:
    """Batch ``k`` with a minute mean of power per device: values, so a retry must leave them as
    they are (and not fail on the slot's fence)."""
    hour = T0 + 3600 * k
    power = [
        PowerMinute(device(i), "switch:0", hour + 60 * j, 10.5 * i + j, 3)
        for i in range(DEVICES)
        for j in range(2)
    ]
    b = batch(k)
    return Batch(
        slots=b.slots,
        ledger_states=b.ledger_states,
        events=b.events,
        dead_letters=b.dead_letters,
        power=power,
    )


async def test_a_batch_with_power_after_a_lost_reply_is_stored_once(node_ports: list[int]) -> None:
    async with proxied(node_ports) as (store, proxies):
        for proxy in proxies:
            proxy.drop_reply(*COMMIT_COMMANDS)
        b = with_power(1)
        await commit_until_stored(store, b)
        assert sum(p.fired for p in proxies) >= 1
        await check_exactly_once(store, [batch(0), b])
        for i in (0, DEVICES - 1):
            mine = [p for p in b.power if p.device == device(i)]
            got = await store.power(device(i), start=T0, end=T0 + 86400)
            assert got == mine


def audit(n: int) -> AuditEntry:
    devices = (device(n % DEVICES), device((n + 1) % DEVICES))
    return AuditEntry(id=f"e{n}", ts=T0 + n, actor="cli:ana", action="fleet.apply", devices=devices)


async def test_an_audit_append_after_lost_replies_is_stored_once(node_ports: list[int]) -> None:
    """One lost reply (redis-py sends the script again), then every reply lost until the call
    fails and the caller appends the same entries again."""
    async with proxied(node_ports) as (store, proxies):
        for proxy in proxies:
            proxy.drop_reply("EVAL", "EVALSHA")
        await store.audit_append([audit(1), audit(2)])
        assert sum(p.fired for p in proxies) == 1
        for proxy in proxies:
            proxy.drop_reply("EVAL", "EVALSHA", times=10**6)
        with pytest.raises(StoreError):
            await store.audit_append([audit(3)])
        for proxy in proxies:
            proxy.heal()
        await store.audit_append([audit(3)])
        assert await store.audit() == [audit(3), audit(2), audit(1)]
        assert await store.audit(device=device(2)) == [audit(2), audit(1)]
