"""Measured energy for estimated slots (``Store.replace_estimated``, rule 13 of
docs/energy-accounting.md), on SQLite, Redis and a Redis Cluster.

After a replacement every query -- 15 minutes, hours, days, months; UTC, the site's zone with its
local days, another zone; by channel, device and in total -- answers what committing the measured
values directly would have, estimated flags included; so do the seed's hour hashes on Redis. A
second call changes nothing; slots not estimated are left alone; a reply lost after the script ran
is not applied twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from kilowatch.errors import StoreError, UnstorableError
from kilowatch.model.slots import SlotEnergy
from kilowatch.query.energy import EnergyQuery
from kilowatch.query.grouping import HOURLY
from kilowatch.store import Batch, Store, open_store
from kilowatch.store.redis import RedisStore
from kilowatch.testing import RedisClusterServer, RedisServer
from kilowatch.testing.energy import reference
from kilowatch.testing.faultproxy import FaultProxy

DEV = "shellypmminig3-ecda3bc4ddb0"
PRO = "shellypro3em-a0b1c2d3e4f5"
ZONE = "Europe/Berlin"
"""The site's zone (local days on); 2026-03-29 is its spring-forward day."""


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


GAP = (ts("2026-03-28T22:30"), ts("2026-03-29T02:15"))
"""The estimated slots ``[start, end]``: across the zone's DST change, half an hour into an hour
and one slot into another."""
LEFT_ESTIMATED = GAP[1]
"""The gap's last slot: no measured value comes for it, so its hour stays estimated."""


def history() -> list[SlotEnergy]:
    """What the ledger committed: measured slots around a gap spread evenly (estimated) on two
    channels of DEV and one of PRO, and DEV's ``hourly`` channel and a part ``em:0/a`` of PRO."""
    out = []
    for t in range(ts("2026-03-28T20:00"), ts("2026-03-29T05:00"), 900):
        gap = GAP[0] <= t <= GAP[1]
        for device, channel, base in ((DEV, "switch:0", 400), (DEV, "switch:1", 90),
                                      (PRO, "em:0", 2_000), (PRO, "em:0/a", 700)):  # fmt: skip
            out.append(SlotEnergy(device, channel, t, 1_000 if gap else base, 3 if gap else 0, gap))
    for t in range(ts("2026-03-28T20:00"), ts("2026-03-29T05:00"), 3600):
        out.append(SlotEnergy(DEV, HOURLY, t, 1_500, 0))
    return out


def measured() -> list[SlotEnergy]:
    """The devices' own records for the gap (all but its last slot), plus slots that are not
    estimated (a measured one, a never written one, an unknown device): those replace nothing."""
    out = []
    for t in range(GAP[0], GAP[1], 900):
        k = (t - GAP[0]) // 900
        out += [
            SlotEnergy(DEV, "switch:0", t, 300 + 37 * k, k % 2),
            SlotEnergy(DEV, "switch:1", t, 11 * k, 0),  # zero energy in the first slot
            SlotEnergy(PRO, "em:0", t, 2_500 - 13 * k, 40 + k),
            SlotEnergy(PRO, "em:0/a", t, 800 + k, 0),
        ]
    out += [
        SlotEnergy(DEV, "switch:0", ts("2026-03-28T21:00"), 99_999, 0),  # measured already
        SlotEnergy(DEV, "switch:0", ts("2026-03-30T10:00"), 5, 0),  # never written
        SlotEnergy("shellyplug-000000000000", "switch:0", GAP[0], 5, 0),  # unknown device
    ]
    return out


def truth() -> list[SlotEnergy]:
    """The history as if the measured values had been committed directly."""
    took = {(m.device, m.channel, m.slot): m for m in measured()}
    out = []
    for s in history():
        m = took.get((s.device, s.channel, s.slot))
        out.append(s if m is None or not s.estimated else SlotEnergy(
            s.device, s.channel, s.slot, m.import_mwh, m.export_mwh))  # fmt: skip
    return out


def replaced_count() -> int:
    return 4 * len(range(GAP[0], GAP[1], 900))


def queries() -> list[EnergyQuery]:
    out = []
    for tz in ("UTC", ZONE, "America/New_York"):
        for by, start, end in (
            ("15min", date(2026, 3, 28), date(2026, 3, 30)),
            ("hour", date(2026, 3, 28), date(2026, 3, 30)),
            ("day", date(2026, 3, 27), date(2026, 3, 31)),
            ("month", date(2026, 3, 1), date(2026, 5, 1)),
        ):
            for group in ("channel", "device", "total"):
                out.append(EnergyQuery(by=by, tz=tz, start=start, end=end, group=group))  # type: ignore[arg-type]
    return out


def twin_url(url: str) -> str:
    """Another empty store beside ``url``'s: another file, or another key prefix."""
    if url.startswith("sqlite:"):
        return url.replace("kilowatch.db", "twin.db")
    return url + ("&" if "?" in url else "?") + "prefix=twin"


async def answers(store: Store) -> list[Any]:
    return [await store.energy(q) for q in queries()]


async def seed_hours(store: Store) -> dict[tuple[str, int], dict[bytes, bytes]]:
    """Redis: the energy fields of the seed's hour hashes of both devices (SQLite: none)."""
    if not isinstance(store, RedisStore):
        return {}
    out = {}
    for device in (DEV, PRO):
        mac = device.rsplit("-", 1)[1].upper()
        for hour in range(ts("2026-03-28T20:00"), ts("2026-03-29T05:00"), 3600):
            got = await store.client.hgetall(store.seed_key(mac, hour))
            out[(device, hour)] = {k: v for k, v in got.items() if k in (
                b"kwi", b"kwe", b"hourly_energy_usage", b"hourly_ret_energy_usage")}  # fmt: skip
    return out


@asynccontextmanager
async def twins(url: str) -> AsyncIterator[tuple[Store, Store]]:
    """The store with the history committed, and its twin with the truth committed; both keep
    the site's local days."""
    async with AsyncExitStack() as stack:
        stores = []
        for u, slots in ((url, history()), (twin_url(url), truth())):
            store = await stack.enter_async_context(open_store(u))
            await store.use_local_zone(ZONE, wait=True)
            half = len(slots) // 2  # two commits: slots of one batch are summed before writing
            await store.commit(Batch(slots=slots[:half]))
            await store.commit(Batch(slots=slots[half:]))
            stores.append(store)
        yield stores[0], stores[1]


async def test_a_replacement_answers_as_the_measured_values_would(store_url: str) -> None:
    async with twins(store_url) as (store, twin):
        lo, hi = ts("2026-03-28T00:00"), ts("2026-03-30T00:00")
        gap = [(d, c, t) for t in range(GAP[0], GAP[1] + 1, 900)
               for d, c in ((DEV, "switch:0"), (DEV, "switch:1"), (PRO, "em:0"),
                            (PRO, "em:0/a"))]  # fmt: skip
        assert await store.estimated_slots(start=lo, end=hi) == sorted(gap)
        assert await store.estimated_slots(start=lo, end=hi, device=PRO) == sorted(
            x for x in gap if x[0] == PRO
        )
        before = await answers(store)
        assert before != await answers(twin)

        assert await store.replace_estimated(measured()) == replaced_count()

        left = sorted(x for x in gap if x[2] == LEFT_ESTIMATED)
        assert await store.estimated_slots(start=lo, end=hi) == left
        expected = await answers(twin)
        for q, rows in zip(queries(), expected, strict=True):
            if q.group == "channel":  # the reference knows no "Names" rules
                assert rows == reference(q, truth()), q
        got = await answers(store)
        for q, mine, theirs in zip(queries(), got, expected, strict=True):
            assert mine == theirs, q
        assert await seed_hours(store) == await seed_hours(twin)

        # idempotent: a second call takes nothing and changes nothing
        assert await store.replace_estimated(measured()) == 0
        assert await answers(store) == expected
        assert await seed_hours(store) == await seed_hours(twin)


async def test_slots_not_estimated_are_left_alone(store: Store) -> None:
    t = ts("2026-05-01T10:00")
    await store.commit(Batch(slots=[SlotEnergy(DEV, "switch:0", t, 500, 0)]))
    q = EnergyQuery(by="hour", tz="UTC", start=date(2026, 5, 1), end=date(2026, 5, 2))  # type: ignore[arg-type]
    before = await store.energy(q)
    assert await store.replace_estimated([SlotEnergy(DEV, "switch:0", t, 9, 9, True)]) == 0
    assert await store.replace_estimated([SlotEnergy(DEV, "switch:9", t, 9, 9)]) == 0
    assert await store.replace_estimated([SlotEnergy(DEV, "switch:0", t + 450, 9, 9)]) == 0
    assert await store.replace_estimated([]) == 0
    assert await store.energy(q) == before


@pytest.mark.parametrize(
    ("imp", "exp"), [(-1, 0), (0, -5), (1.5, 0), (True, 0), ("12", 0), (0, 2**53)]
)
async def test_values_a_store_cannot_hold_are_refused_and_nothing_is_written(
    store: Store, imp: Any, exp: Any
) -> None:
    t = ts("2026-05-01T10:00")
    await store.commit(Batch(slots=[SlotEnergy(DEV, "switch:0", t + 900 * i, 500, 0, True)
                                    for i in range(2)]))  # fmt: skip
    with pytest.raises(UnstorableError, match="switch:0"):
        await store.replace_estimated(
            [SlotEnergy(DEV, "switch:0", t, 7, 7), SlotEnergy(DEV, "switch:0", t + 900, imp, exp)]
        )
    with pytest.raises(UnstorableError, match="twice"):
        await store.replace_estimated(
            [SlotEnergy(DEV, "switch:0", t, 7, 7), SlotEnergy(DEV, "switch:0", t, 8, 7)]
        )
    assert await store.estimated_slots(start=t, end=t + 3600) == [
        (DEV, "switch:0", t),
        (DEV, "switch:0", t + 900),
    ]


async def test_a_commit_after_a_replacement_adds_to_the_measured_value(store: Store) -> None:
    """The replacement is a value; what the ledger commits later is still a delta on top."""
    t = ts("2026-05-01T10:00")
    await store.commit(Batch(slots=[SlotEnergy(PRO, "em:0", t, 500, 0, True)]))
    assert await store.replace_estimated([SlotEnergy(PRO, "em:0", t, 120, 4)]) == 1
    await store.commit(Batch(slots=[SlotEnergy(PRO, "em:0", t, 30, 1)]))
    q = EnergyQuery(by="day", tz="UTC", start=date(2026, 5, 1), end=date(2026, 5, 2))  # type: ignore[arg-type]
    (row,) = await store.energy(q)
    assert (row.energy_wh, row.returned_energy_wh, row.estimated) == (0.15, 0.005, False)


# -- a lost reply, on Redis ------------------------------------------------------------------------


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
async def proxied(ports: list[int]) -> AsyncIterator[tuple[RedisStore, list[FaultProxy]]]:
    """A store whose every connection goes through a proxy per node (as in
    test_commit_faults)."""
    async with AsyncExitStack() as stack:
        proxies = [await stack.enter_async_context(FaultProxy(("127.0.0.1", p))) for p in ports]
        remap = {("127.0.0.1", p): proxy.address for p, proxy in zip(ports, proxies, strict=True)}
        options: dict[str, Any] = {}
        if len(ports) > 1:
            options["address_remap"] = lambda address: remap.get(address, address)
        url = "redis://" + ",".join(f"127.0.0.1:{p.port}" for p in proxies) + "/0"
        store = await stack.enter_async_context(RedisStore(url, client_options=options))
        yield store, proxies


@pytest.mark.parametrize("times", [1, 10**6])
async def test_a_lost_reply_then_a_retry_stores_once(node_ports: list[int], times: int) -> None:
    """The reply to the replacement's script is lost after it ran (once: redis-py retries; or
    every time until the call fails, then the caller calls again): stored once, seed hours
    included."""
    ports = node_ports
    truth_url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/0?prefix=twin"
    async with proxied(ports) as (store, proxies), open_store(truth_url) as twin:
        await store.commit(Batch(slots=history()))
        await twin.commit(Batch(slots=truth()))
        for proxy in proxies:
            proxy.drop_reply("EVAL", "EVALSHA", times=times)
        try:
            await store.replace_estimated(measured())
        except StoreError:
            assert times > 1
        assert sum(p.fired for p in proxies) >= 1
        for proxy in proxies:
            proxy.heal()
        await store.replace_estimated(measured())  # the caller's retry after an unknown outcome
        for q in queries():
            assert await store.energy(q) == await twin.energy(q), q
        assert await seed_hours(store) == await seed_hours(twin)
        assert await store.replace_estimated(measured()) == 0


async def test_commits_racing_a_replacement_leave_every_rollup_consistent(store: Store) -> None:
    """Commits adding to the estimated slots while they are replaced: each lands wholly before
    (overwritten with the rest of the estimate) or after (added to the measured value), and
    15-minute, hour, day and local-day answers agree."""
    await store.use_local_zone(ZONE, wait=True)
    t0 = ts("2026-06-01T00:00")
    chans = [(DEV, "switch:0"), (PRO, "em:0")]
    await store.commit(
        Batch(
            slots=[
                SlotEnergy(d, c, t0 + 900 * i, 1_000, 0, True) for d, c in chans for i in range(96)
            ]
        )
    )
    deltas = [
        Batch(slots=[SlotEnergy(d, c, t0 + 900 * i, 1, 0) for d, c in chans for i in range(96)])
        for _ in range(20)
    ]
    repl = [SlotEnergy(d, c, t0 + 900 * i, 500, 0) for d, c in chans for i in range(96)]

    async def commits() -> None:
        for b in deltas:
            await store.commit(b)

    _, taken = await asyncio.gather(commits(), store.replace_estimated(repl))
    assert taken == 2 * 96
    day = (date(2026, 6, 1), date(2026, 6, 2))
    sums: dict[tuple[str, str], dict[str | None, int]] = {}
    wide = day[1] + timedelta(days=1)  # local days of ZONE holding all of the UTC day
    shapes = [("15min", "UTC", day[1]), ("hour", "UTC", day[1]), ("day", "UTC", day[1])]
    shapes += [("hour", ZONE, wide), ("day", ZONE, wide), ("month", ZONE, wide)]
    for by, tz, end in shapes:
        query = EnergyQuery(by=by, tz=tz, start=day[0], end=end, group="device")  # type: ignore[arg-type]
        rows = await store.energy(query)
        assert not any(r.estimated for r in rows)
        per: dict[str | None, int] = {}
        for r in rows:
            per[r.device] = per.get(r.device, 0) + round(r.energy_wh * 1000)
        sums[(by, tz)] = per
    assert len(set(map(str, sums.values()))) == 1, sums
    slots15 = await store.energy(
        EnergyQuery(by="15min", tz="UTC", start=day[0], end=day[1])  # type: ignore[arg-type]
    )
    for r in slots15:  # the measured 500 plus the deltas committed after the replacement
        assert 500 <= round(r.energy_wh * 1000) <= 520
