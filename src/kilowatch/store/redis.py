"""Redis backend (redis-py asyncio): one server or a Redis Cluster, in a layout that keeps the
seed's.

Key layout (``P`` = the URL's ``?prefix=``, default ``energy``; full table in docs/storage.md):

- ``P:kw:{D|C}:s:<utc day start>`` hash per channel and UTC day: field ``<n>`` = import mWh of the
  day's slot ``n`` (0..95), ``<n>e`` = export mWh, ``<n>x`` = ``1`` when estimated.
- ``P:kw:{D|C}:h:<utc month start>`` hash per channel and UTC month: the same per UTC hour (``n`` =
  hour of the month), kept in the same transaction; read by day/month decompositions and
  local-day rebuilds.
- ``P:kw:{D|C}:hb:<utc month start>`` string per channel and UTC month: the same hours packed as
  signed 64-bit big-endian integers, four per hour ``n`` (``#4n`` import, ``#4n+1`` export,
  ``#4n+2`` deltas, ``#4n+3`` 1 when estimated), written by ``BITFIELD`` in the same transaction
  as the hour hash; read by queries whose buckets are whole UTC hours (see :meth:`RedisStore.
  build_hour_columns` for stores written before they existed, and ``P:kw:format``).
- ``P:kw:{D|C}:ld`` hash per channel: energy per local day ``L`` of the site's zone (``L``,
  ``Le``, ``Lc``), ``z`` the zone of its days, ``v`` a version every commit bumps; with
  ``P:kw:localdays`` (``zone``, ``ready``) naming the zone for every process. Day and month
  queries in that zone over whole local days read one script per channel (or per 250 channels
  on one server) instead of UTC day rows corrected by hours. See :meth:`RedisStore.use_local_zone`.
- ``P:kw:{D|C}:ledger`` the channel's ledger state (JSON). ``{D|C}`` is a hash tag: on a cluster one
  channel's energy, local days and ledger state live in one slot and are committed in one
  MULTI/EXEC.
- ``P:<MAC>_<hour start>`` the seed's hourly hash (``fw_ver``, ``hourly_energy_usage``,
  ``hourly_ret_energy_usage``, ``id``, ``mac``, ``operational``, ``timestamp``) plus our marker
  field
  ``kw``; ``device:<MAC>`` the seed's device hash.
- ``P:kw:seed`` sorted set indexing hourly hashes written by someone else (an EMQX sink): member
  ``<device id>\\t<key>``, score = hour start. Refreshed by SCAN at open (in the background when
  the keyspace is large) and every :data:`SEED_REFRESH_S` (never on the query path); each key is
  classified once per process (see :meth:`RedisStore.refresh_seed_index`); queries read them as
  channel ``hourly``.

Queries compute the keys they need (one per channel and UTC day or month) and read them with one
pipelined round trip; buckets are computed in Python with :mod:`kilowatch.query.periods`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import itertools
import logging
import re
import sys
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import repeat
from operator import add as add_
from operator import mul
from types import TracebackType
from typing import Any, Self, TypeAlias
from zoneinfo import ZoneInfo

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from kilowatch.errors import StoreError
from kilowatch.model.messages import Event, LogLine, Reading
from kilowatch.model.slots import SLOT_SECONDS, ChannelKey
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.query.grouping import (
    HOURLY,
    Cells,
    Flat,
    Grouped,
    Rollup,
    add,
    coarser,
    grouped_flat,
    in_order,
    needs_names_rules,
    regroup,
    selected,
    shadow_hourly,
    sum_deltas,
)
from kilowatch.query.periods import Plan, offset_at, plan, segments, zone
from kilowatch.query.table import EnergyTable
from kilowatch.store import records
from kilowatch.store.protocol import Batch, DeadLetter, DeviceRecord
from kilowatch.store.url import RedisTarget, parse_redis

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""Socket connect timeout to a Redis node."""
OPEN_TIMEOUT_S = 10.0
"""Longest opening the store (connect, TLS handshake, first command) may take."""
SOCKET_TIMEOUT_S = 30.0
"""Longest a single Redis command (or pipeline) may take before the call fails."""
SEED_REFRESH_S = 60.0
"""How often externally written seed hashes are re-indexed (SCAN, off the query path)."""
SEED_REFRESH_SPACING = 20.0
"""The pause after a seed refresh is at least this many times as long as the refresh took."""
SCAN_COUNT = 1000
SEED_CHUNK = 1000
"""Keys classified (HMGET ``id``, marker) per pipelined round trip: each await stays short, so
closing the store cancels a refresh promptly (redis-py does not shield a pipeline's execution)."""
OPEN_INDEX_MAX_KEYS = 20_000
"""Largest keyspace (DBSIZE; a cluster's nodes summed) indexed before ``__aenter__`` returns;
above it the first refresh runs in the background (a cold index of ~400 000 hashes takes
seconds to minutes)."""
CLOSE_TIMEOUT_S = 5.0
"""Longest closing waits for the cancelled background refresh to finish."""

_DAY = 86400
_MARKER = "kw"
"""Field kilowatch adds to the seed hashes it writes, so the index knows they are ours."""
_SEP = "\t"
_HMGET_LUA = """
local fields = {}
for name in string.gmatch(ARGV[1], "%S+") do fields[#fields + 1] = name end
return redis.call('HMGET', KEYS[1], unpack(fields))
"""
"""HMGET of a space-separated field list (at most a few thousand fields: Lua's unpack limit)."""
_ROLLUP_LUA = """
local sums = {}
for b = 1, 3 * tonumber(ARGV[1]) do sums[b] = 0 end
local nkeys = #KEYS
for i = 1, nkeys do
  local names = {}
  for name in string.gmatch(ARGV[i + 1], "%S+") do names[#names + 1] = name end
  local values = redis.call('HMGET', KEYS[i], unpack(names))
  local j = 0
  for targets in string.gmatch(ARGV[nkeys + i + 1], "%S+") do
    j = j + 3
    local count = values[j]
    if count then
      local imp = tonumber(values[j - 2] or 0)
      local exp = tonumber(values[j - 1] or 0)
      local n = tonumber(count)
      for b, sign in string.gmatch(targets, "(%d+)([+-])") do
        local at = 3 * tonumber(b)
        if sign == '+' then
          sums[at + 1] = sums[at + 1] + imp
          sums[at + 2] = sums[at + 2] + exp
          sums[at + 3] = sums[at + 3] + n
        else
          sums[at + 1] = sums[at + 1] - imp
          sums[at + 2] = sums[at + 2] - exp
          sums[at + 3] = sums[at + 3] - n
        end
      end
    end
  end
end
return sums
"""
"""One channel's day/month buckets summed on the server from its rollup hashes (``KEYS``):
``ARGV[1]`` the bucket count, ``ARGV[i + 1]`` the field names to read from ``KEYS[i]`` (``n ne nc``
per rollup field ``n``), ``ARGV[#KEYS + i + 1]`` each field's buckets with their signs (e.g.
``3+4-``: adds to bucket 3, is taken from bucket 4). Returns ``import, export, deltas`` per bucket
(a bucket has data when deltas > 0)."""
_LD_ADD_LUA = """
local z = redis.call('HGET', KEYS[1], 'z')
if ARGV[1] == '' or (z and z ~= ARGV[1]) then
  redis.call('HSET', KEYS[1], 'z', '!')
  redis.call('HINCRBY', KEYS[1], 'v', 1)
  return 0
end
if not z then redis.call('HSET', KEYS[1], 'z', ARGV[1]) end
for name, by in string.gmatch(ARGV[2], "(%S+) (%S+)") do
  redis.call('HINCRBY', KEYS[1], name, by)
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
return 1
"""
"""A commit's share of one channel's local-day hash (``KEYS[1]``): ``ARGV[1]`` the zone the
committing process maintains (empty: none), ``ARGV[2]`` ``field increment`` pairs. The hash's ``z``
names the zone its days are in; a commit for another zone (a process that has not heard of a zone
change) or for none cannot add its energy there, so it marks the hash untrusted (``z = !``) and
queries take the general path for that channel until the next rebuild. Every call bumps ``v``, the
version a rebuild compares before it replaces the hash."""
_LD_WRITE_LUA = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
redis.call('UNLINK', KEYS[1])
redis.call('HSET', KEYS[1], 'z', ARGV[2], 'v', (tonumber(v) or 0) + 1)
for name, value in string.gmatch(ARGV[3], "(%S+) (%S+)") do
  redis.call('HSET', KEYS[1], name, value)
end
return 1
"""
"""Replace one channel's local-day hash (``KEYS[1]``) with recomputed days, unless a commit
changed it since the rebuild read its version ``v`` (``ARGV[1]``, empty for none): then 0, and the
rebuild reads again. ``ARGV[2]`` the zone, ``ARGV[3]`` ``field value`` pairs. ``v`` keeps growing
(never reset), so an old read can never match a newer hash."""
_LD_READY_LUA = """
if redis.call('HGET', KEYS[1], 'zone') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ready', '1')
return 1
"""
"""Mark the local days of zone ``ARGV[1]`` complete, unless the zone was changed meanwhile."""
_LD_READ_LUA = """
local first, count = tonumber(ARGV[2]), tonumber(ARGV[3])
local last, width = first + count - 1, 3 * count
local byte, sub = string.byte, string.sub
local names = nil
local out, m = {}, 0
for k = 1, #KEYS, 2 do
  local z = redis.call('HGET', KEYS[k], 'z')
  if not z then
    m = m + 1
    out[m] = -1
  elseif z ~= ARGV[1] then
    m = m + 1
    out[m] = 0
  else
    local est = redis.call('ZRANGEBYSCORE', KEYS[k + 1], ARGV[4], ARGV[5])
    out[m + 1] = 1
    out[m + 2] = #est
    m = m + 2
    for i = 1, #est do out[m + i] = tonumber(est[i]) end
    m = m + #est
    for i = m + 1, m + width do out[i] = 0 end
    if redis.call('HLEN', KEYS[k]) <= 2 * width + 8 then
      -- a small hash (a listpack: HMGET would scan it once per name): walk it once
      local h = redis.call('HGETALL', KEYS[k])
      for i = 1, #h, 2 do
        local name = h[i]
        local tail = byte(name, -1)
        local d, at
        if tail == 101 then d, at = tonumber(sub(name, 1, -2)), 2
        elseif tail == 99 then d, at = tonumber(sub(name, 1, -2)), 3
        elseif tail >= 48 and tail <= 57 then d, at = tonumber(name), 1
        end
        if d and d >= first and d <= last then
          out[m + 3 * (d - first) + at] = tonumber(h[i + 1])
        end
      end
    else
      if not names then
        names = {}
        for d = first, last do
          local n = tostring(d)
          names[#names + 1] = n
          names[#names + 1] = n .. 'e'
          names[#names + 1] = n .. 'c'
        end
      end
      local values = redis.call('HMGET', KEYS[k], unpack(names))
      for i = 1, width do out[m + i] = tonumber(values[i]) or 0 end
    end
    m = m + width
  end
end
return out
"""
"""Channels' local days ``[ARGV[2], ARGV[2] + ARGV[3])`` of zone ``ARGV[1]`` from their hashes,
with their estimated slots in ``[ARGV[4], ARGV[5]]`` (``KEYS``: hash and estimated set of each
channel), as integers. Per channel: ``1, e, <e estimated slots>, import, export, deltas`` per day
(0 where none); ``-1`` alone: no hash (the channel never had energy); ``0`` alone: the hash holds
another zone's days or is untrusted. Values are parsed on the server: no field list to pack per
channel, no ``int()`` per value in Python (hiredis reads integers in C). A hash of a few weeks is
a listpack, where HMGET scans the whole hash for each name (90 names: ~3x slower than one HGETALL
walked once); a long one is a hash table, where HMGET of the range's names is cheaper.
"""
LD_READ_CHUNK = 250
"""Channels per read script on one server (a cluster needs one per channel: one slot each).
redis-py packs every command in Python, so 500 channels in one script cost far less than 500
commands; the chunk bounds how long one script holds the server."""
_DROP_LUA = """
local limit = tonumber(ARGV[1])
local names = redis.call('HKEYS', KEYS[1])
local doomed, slots = {}, 0
for _, name in ipairs(names) do
  local tail = string.sub(name, -1)
  local n = tonumber(name)
  if not n then n = tonumber(string.sub(name, 1, -2)) end
  if n and n < limit then
    doomed[#doomed + 1] = name
    if tail == 'c' then slots = slots + 1 end
  end
end
if #doomed == #names then
  redis.call('UNLINK', KEYS[1])
else
  for i = 1, #doomed, 1000 do
    redis.call('HDEL', KEYS[1], unpack(doomed, i, math.min(i + 999, #doomed)))
  end
end
return slots
"""
"""Retention of one slot-day hash (``KEYS[1]``): delete slots ``0 .. ARGV[1] - 1`` (all their
fields); returns how many slots with data went."""
LD_REBUILD_ATTEMPTS = 20
"""Re-reads of one channel whose local days commits keep changing under the rebuild."""
FORMAT = 2
"""``P:kw:format``: 2 = every hour-month hash has its packed columns (``…:hb:<month>``)."""
_HB_WIDTH = 4
"""Packed integers per hour: import, export, deltas, estimated."""
_HB_BUILD_LUA = """
local h = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[2])
local args, m = {}, 0
local byte, sub = string.byte, string.sub
for i = 1, #h, 2 do
  local name = h[i]
  local tail = byte(name, -1)
  local n, at
  if tail == 101 then n, at = tonumber(sub(name, 1, -2)), 1
  elseif tail == 99 then n, at = tonumber(sub(name, 1, -2)), 2
  elseif tail == 120 then n, at = tonumber(sub(name, 1, -2)), 3
  else n, at = tonumber(name), 0
  end
  if n then
    args[m + 1] = 'SET'
    args[m + 2] = 'i64'
    args[m + 3] = '#' .. (4 * n + at)
    args[m + 4] = h[i + 1]
    m = m + 4
    if m >= 4000 then
      redis.call('BITFIELD', KEYS[2], unpack(args, 1, m))
      m = 0
    end
  end
end
if m > 0 then redis.call('BITFIELD', KEYS[2], unpack(args, 1, m)) end
return 1
"""
"""Rebuild one channel-month's packed hour columns (``KEYS[2]``) from its hour hash (``KEYS[1]``),
atomically: a commit (which adds to both in one transaction) lands wholly before or after, so it
counts once however the build and ingest interleave. Chunks of 1 000 ``SET``s stay under Lua's
``unpack`` limit."""
HB_BUILD_CHUNK = 200
"""Hour-month hashes packed per pipelined round trip of :meth:`RedisStore.build_hour_columns`."""
_LITTLE = sys.byteorder == "little"


class _Ops:
    """Commands of one commit, remembered with their key so a cluster can group them by slot."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, tuple[Any, ...]]] = []

    def __call__(self, method: str, key: str, *args: Any) -> None:
        self.items.append((method, key, args))


class RedisStore:
    """The Redis :class:`~kilowatch.store.protocol.Store`; open with ``open_store("redis://...")``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.target: RedisTarget = parse_redis(url)
        self.prefix = self.target.prefix
        # Any: redis-py's annotations give RedisCluster none of the command methods it has
        self._client: Any = None
        self._seed_re = re.compile(re.escape(self.prefix) + r":([0-9A-Fa-f]{12})_(\d+)$")
        self._macs: dict[str, tuple[str | None, str | None]] = {}
        """device -> (mac, fw_ver), for the seed hashes kilowatch writes."""
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._known: set[str] = set()
        """Seed-layout keys already classified (ours, indexed external, or not a seed hash)."""
        self._next_known: set[str] | None = None
        """The next generation of ``_known`` while a refresh's SCAN runs (keys it saw)."""
        self._seed_ids_known: set[str] = set()
        self._index_lock = asyncio.Lock()
        self._closing = False
        self.seed_key_reads = 0
        """How many keys refreshes have HMGET to classify them (for tests and benchmarks)."""
        self._ld_zone: str | None = None
        """The zone whose local days this process's commits maintain (ready or being rebuilt)."""
        self._ld_ready = False
        """Whether the last look at ``P:kw:localdays`` found :attr:`_ld_zone` complete."""
        self._ld_task: asyncio.Task[None] | None = None
        self._ld_task_zone: str | None = None
        self._ld_task_full = False
        """Whether :attr:`_ld_task` rebuilds every channel (else it repairs a few)."""
        self._ld_error: StoreError | None = None
        self._hb_ready = False
        """Whether every hour hash is known to have its packed columns (``P:kw:format``)."""
        self._hb_task: asyncio.Task[None] | None = None
        self.build_hour_columns_at_open = True
        """Start :meth:`build_hour_columns` in the background when opening a store written by an
        earlier kilowatch (tests turn it off to look at the store before the build)."""

    # -- keys ------------------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, "kw", *parts))

    def _chan(self, device: str, channel: str) -> str:
        return self._k("{" + device + "|" + channel + "}")

    def _ld(self, device: str, channel: str) -> str:
        """The channel's local-day hash (in its hash tag: written in its commit transaction)."""
        return self._chan(device, channel) + ":ld"

    def _dev(self, device: str) -> str:
        return self._k("device", "{" + device + "}")

    def seed_key(self, mac: str, hour: int) -> str:
        """The seed's hourly hash key ``<prefix>:<MAC>_<hour start>``."""
        return f"{self.prefix}:{mac}_{hour}"

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError("the Redis store is not open; use `async with open_store(url)`")
        return self._client

    async def __aenter__(self) -> Self:
        t = self.target
        self._closing = False
        common: dict[str, Any] = {
            "username": t.username,
            "password": t.password,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
        }
        if t.tls:
            common["ssl"] = True
            common.update(t.tls_options)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                if t.cluster:
                    nodes = [ClusterNode(h, p) for h, p in t.hosts]
                    self._client = RedisCluster(startup_nodes=nodes, **common)
                    await self._client.initialize()
                else:
                    host, port = t.hosts[0]
                    self._client = Redis(host=host, port=port, db=t.db, **common)
                    await self._client.ping()
                big = await self._keyspace_size() > OPEN_INDEX_MAX_KEYS
                await self._read_local_state()
                needs_build = await self._read_format()
            if not big:
                await self.refresh_seed_index()
        except TimeoutError as err:
            await self._close()
            raise StoreError(
                f"cannot open the Redis store at {_safe(self.url)}: no answer within "
                f"{OPEN_TIMEOUT_S:g} s; check host and port, and whether the server speaks TLS "
                "(rediss://) or not (redis://)"
            ) from err
        except (redis_errors.RedisError, OSError) as err:
            await self._close()
            raise _error(f"cannot open the Redis store at {_safe(self.url)}", err) from err
        if big:
            log.info(
                "more than %d keys in %s: indexing externally written seed hours in the "
                "background; until it finishes, queries miss external hours not indexed before",
                OPEN_INDEX_MAX_KEYS,
                _safe(self.url),
            )
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._refresher = self._tasks.create_task(self._refresh_loop(first=big))
        if needs_build and self.build_hour_columns_at_open:
            self._hb_task = self._tasks.create_task(self._build_in_background())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
            # bounded: every await of a refresh is one short command or chunk, so the
            # cancellation lands quickly; the timeout only guards against a hung server
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.wait([self._refresher])
            except TimeoutError:
                log.warning("seed index refresh did not stop; closing its connections")
                await self._close()  # fails the read it is stuck in
            self._refresher = None
        await self._stop_rebuild()
        await self._stop_task(self._hb_task, "the hour-column build")
        self._hb_task = None
        if self._tasks is not None:
            await self._tasks.__aexit__(None, None, None)
            self._tasks = None
        await self._close()

    async def _close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await self._client.aclose()
            self._client = None

    async def _refresh_loop(self, *, first: bool) -> None:
        if not first:
            await asyncio.sleep(SEED_REFRESH_S)
        while True:
            took = 0.0
            try:
                started = asyncio.get_running_loop().time()
                total = await self.refresh_seed_index()
                took = asyncio.get_running_loop().time() - started
                if first:
                    log.info("seed index ready: %d external hours (%.1f s)", total, took)
                    first = False
            except StoreError as err:
                self._stop_point()
                log.warning("seed index refresh failed: %s", err)
            if not self._hb_ready:  # another process may have finished the build
                with contextlib.suppress(StoreError):
                    await self._read_format()
            self._stop_point()
            # a SCAN of a big keyspace takes seconds of the server's (and our) time: keep it to
            # a small share (a refresh that took 2 s waits 60 s; one that took 10 s, 200 s)
            await asyncio.sleep(max(SEED_REFRESH_S, SEED_REFRESH_SPACING * took))

    def _stop_point(self) -> None:
        """Raise CancelledError when the store is closing or the task was cancelled.

        Python 3.11's ``asyncio.wait_for`` (which redis-py wraps around every socket write) drops a
        cancellation that arrives as the write completes, so a refresh checks between chunks too.
        """
        task = asyncio.current_task()
        if self._closing or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    async def _keyspace_size(self) -> int:
        got = await self.client.dbsize()
        # RedisCluster answers with the sum over primaries, or a per-node mapping
        return sum(int(v) for v in got.values()) if isinstance(got, dict) else int(got)

    # -- packed hour columns ---------------------------------------------------------------------

    async def _read_format(self) -> bool:
        """Read ``P:kw:format`` and adopt it; ``True``: the store has energy written by an earlier
        kilowatch (hour hashes without packed columns), which :meth:`build_hour_columns` must
        pack before whole-hour queries may read them. A store without energy (no channel) is
        marked at once: every commit from now on writes both."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._k("format"))
        pipe.scard(self._k("channels"))
        raw, channels = await self._call("cannot read the store format", pipe.execute())
        if raw is not None and raw.isdigit() and int(raw) >= FORMAT:
            self._hb_ready = True
            return False
        if not channels:
            await self._call("cannot mark the store format", self.client.set(
                self._k("format"), FORMAT
            ))  # fmt: skip
            self._hb_ready = True
            return False
        self._hb_ready = False
        return True

    async def build_hour_columns(self) -> int:
        """Pack every hour-month hash into its ``…:hb:<month>`` columns, then mark the store
        (``P:kw:format`` = :data:`FORMAT`) so whole-hour queries read the columns; until then
        they read the hashes (``HGETALL``). Returns how many hashes were packed.

        Needed once for a store written by an earlier kilowatch; runs in the background at open
        when the marker is missing (:attr:`build_hour_columns_at_open`). One SCAN finds the hour
        hashes; each is packed by :data:`_HB_BUILD_LUA`, atomic per hash, so commits racing the
        build count once: a hash created after the SCAN passed it was written only by commits
        that wrote its columns too. Running it twice (two processes) is harmless."""
        pattern = _glob_escape(self._k("")) + "*:h:*"
        packed = 0
        todo: list[str] = []
        try:
            async for raw in self.client.scan_iter(match=pattern, count=SCAN_COUNT, _type="HASH"):
                self._stop_point()
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if key.rpartition(":h:")[2].isdigit():
                    todo.append(key)
                if len(todo) >= HB_BUILD_CHUNK:
                    packed += await self._pack_hours(todo)
                    todo = []
            packed += await self._pack_hours(todo)
            await self.client.set(self._k("format"), FORMAT)
        except (redis_errors.RedisError, OSError) as err:
            raise _error("cannot build the packed hour columns", err) from err
        self._hb_ready = True
        return packed

    async def _pack_hours(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            head, _, month = key.rpartition(":h:")
            pipe.eval(_HB_BUILD_LUA, 2, key, f"{head}:hb:{month}")
        await pipe.execute()
        self._stop_point()
        return len(keys)

    async def _build_in_background(self) -> None:
        """:meth:`build_hour_columns` as a task: errors are logged (queries keep reading the
        hashes; the next open tries again), never raised into the store's task group."""
        try:
            started = asyncio.get_running_loop().time()
            n = await self.build_hour_columns()
            log.info(
                "packed hour columns built from %d hour hashes (%.1f s)",
                n, asyncio.get_running_loop().time() - started,
            )  # fmt: skip
        except StoreError as err:
            log.warning("%s; whole-hour queries keep reading the hour hashes", err)

    async def _stop_task(self, task: asyncio.Task[None] | None, what: str) -> None:
        if task is None or task.done():
            return
        task.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.wait([task])
        except TimeoutError:
            log.warning("%s did not stop within %g s", what, CLOSE_TIMEOUT_S)

    # -- the seed index --------------------------------------------------------------------------

    async def refresh_seed_index(self) -> int:
        """Index hourly hashes an external sink wrote in the seed layout (``P:<MAC>_<hour>``).

        SCANs the keyspace; runs at open and every :data:`SEED_REFRESH_S`, never on the query
        path. Each key is classified once per process: keys kilowatch commits are known at commit
        time, keys already in the index are loaded from it, and only keys never seen before are
        read (HMGET ``id`` and the marker, :data:`SEED_CHUNK` per pipelined round trip); only new
        members are added. Returns how many external hourly hashes are indexed after the refresh.
        """
        async with self._index_lock:
            try:
                return await self._refresh()
            except (redis_errors.RedisError, OSError) as err:
                raise _error("cannot index the seed's hourly hashes", err) from err
            finally:
                self._next_known = None

    async def _refresh(self) -> int:
        client = self.client
        if not self._known:
            await self._load_indexed()
        # a new generation: keys that no longer exist are forgotten when the SCAN completes
        seen: set[str] = set()
        self._next_known = seen
        todo: list[str] = []
        async for raw in client.scan_iter(
            match=f"{self.prefix}:*_*", count=SCAN_COUNT, _type="HASH"
        ):
            self._stop_point()
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key in self._known:
                seen.add(key)
            elif self._seed_re.match(key):
                todo.append(key)
                if len(todo) >= SEED_CHUNK:
                    await self._classify(todo)
                    todo = []
        await self._classify(todo)
        self._known = seen
        return int(await client.zcard(self._k("seed")))

    async def _load_indexed(self) -> None:
        """Remember the keys a previous run already indexed (ZSCAN: short awaits)."""
        async for member, _ in self.client.zscan_iter(self._k("seed"), count=SCAN_COUNT):
            self._stop_point()
            device, _, key = member.decode().partition(_SEP)
            self._known.add(key)
            self._seed_ids_known.add(device)

    async def _classify(self, keys: list[str]) -> None:
        if not keys:
            return
        self.seed_key_reads += len(keys)
        found = await self._pipeline_read([("hmget", k, ("id", _MARKER)) for k in keys])
        members: dict[str, float] = {}
        for key, (dev, marker) in zip(keys, found, strict=True):
            if marker is None and dev is not None:
                m = self._seed_re.match(key)
                assert m is not None
                members[dev.decode() + _SEP + key] = int(m.group(2))
            # else ours (its energy is in the channel keys) or not a seed hash: known either way
        if members:
            await self.client.zadd(self._k("seed"), members)
            ids = {m.split(_SEP, 1)[0] for m in members} - self._seed_ids_known
            if ids:
                await self.client.sadd(self._k("seed-ids"), *sorted(ids))
                self._seed_ids_known |= ids
        self._known.update(keys)
        if self._next_known is not None:
            self._next_known.update(keys)
        self._stop_point()

    def _mark_known(self, keys: Iterable[str]) -> None:
        """Seed hashes kilowatch just committed (with its marker): never read to classify."""
        self._known.update(keys)
        if self._next_known is not None:
            self._next_known.update(keys)

    # -- writes ----------------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in MULTI/EXEC (on a cluster: one MULTI/EXEC per hash slot, see docs)."""
        try:
            await self._known_macs({s.device for s in batch.slots}, batch)
            ops = self._commit_ops(batch)
            await self._exec(ops)
            self._mark_known(k for m, k, _ in ops.items if m == "hincrbyfloat")
        except (redis_errors.RedisError, OSError) as err:
            raise _error("commit to Redis failed", err) from err

    async def _known_macs(self, devices: set[str], batch: Batch) -> None:
        for u in batch.devices:
            mac, fw = self._macs.get(u.device, (None, None))
            self._macs[u.device] = (u.mac or mac, u.fw_ver or fw)
        missing = sorted(d for d in devices if d not in self._macs)
        if not missing:
            return
        found = await self._pipeline_read(
            [("hmget", self._dev(d), ("mac", "fw_ver")) for d in missing]
        )
        for device, (mac, fw) in zip(missing, found, strict=True):
            self._macs[device] = (
                mac.decode() if mac else None,
                fw.decode() if fw else None,
            )

    def _commit_ops(self, batch: Batch) -> _Ops:
        op = _Ops()
        seed: dict[tuple[str, int], list[int]] = {}
        slots = sum_deltas(batch.slots)
        for (device, channel, slot), (imp, exp, est, n) in slots.items():
            ch = self._chan(device, channel)
            day = slot - slot % _DAY
            _add_fields(op, f"{ch}:s:{day}", str((slot - day) // SLOT_SECONDS), imp, exp, est, n)
            if est:
                op("zadd", f"{ch}:est", {str(slot): slot})
        hours = coarser(slots, 3600)
        columns: dict[str, list[Any]] = {}
        for (device, channel, hour), (imp, exp, est, n) in hours.items():
            month = _month_start(hour)
            ch = self._chan(device, channel)
            at = (hour - month) // 3600
            _add_fields(op, f"{ch}:h:{month}", str(at), imp, exp, est, n)
            _add_columns(columns.setdefault(f"{ch}:hb:{month}", []), at, imp, exp, est, n)
            if "/" not in channel and channel != HOURLY:
                acc = seed.setdefault((device, hour), [0, 0])
                acc[0] += imp
                acc[1] += exp
        for key, args in columns.items():  # one BITFIELD per channel-month
            op("bitfield", key, *args)
        for (device, channel, day), (imp, exp, _, n) in coarser(hours, _DAY).items():
            year = _year_start(day)
            key = f"{self._chan(device, channel)}:d:{year}"
            _add_fields(op, key, str((day - year) // _DAY), imp, exp, 0, n)
        self._local_day_ops(op, slots)
        for (device, channel), state in batch.ledger_states.items():
            op("set", f"{self._chan(device, channel)}:ledger", records.dumps(state))
            op("sadd", self._k("ledgers"), device + _SEP + channel)
        self._seed_ops(op, seed)
        channels = {(s.device, s.channel) for s in batch.slots} | {
            (r.device, r.channel) for r in batch.latest
        }
        for device, channel in sorted(channels):
            op("sadd", self._k("channels"), device + _SEP + channel)
            op("sadd", self._dev(device) + ":channels", channel)
        devices = {d for d, _ in channels} | {u.device for u in batch.devices}
        devices |= {e.device for e in batch.events} | {x.device for x in batch.logs}
        if devices:
            op("sadd", self._k("devices"), *sorted(devices))
        for u in batch.devices:
            self._device_ops(op, u.device, records.update_values(u), u.last_seen)
        newest: dict[ChannelKey, Reading] = {}
        for r in batch.latest:
            old = newest.get((r.device, r.channel))
            if old is None or r.ts >= old.ts:
                newest[(r.device, r.channel)] = r
        for (device, channel), r in newest.items():
            op("hset", self._dev(device) + ":latest", channel, records.reading_dumps(r))
        self._list_ops(
            op,
            "events",
            [(e.device, records.event_dumps(e)) for e in batch.events],
            records.EVENTS_PER_DEVICE,
            records.EVENTS_OVERALL,
        )
        self._list_ops(
            op,
            "logs",
            [(x.device, records.log_dumps(x)) for x in batch.logs],
            records.LOGS_PER_DEVICE,
            records.LOGS_OVERALL,
        )
        if batch.dead_letters:
            key = self._k("deadletters")
            op("lpush", key, *[records.dead_letter_dumps(d) for d in batch.dead_letters])
            op("ltrim", key, 0, records.DEAD_LETTERS - 1)
            for d in batch.dead_letters:
                op("hincrby", self._k("deadletter-counts"), d.reason, 1)
        return op

    def _local_day_ops(self, op: _Ops, slots: Rollup) -> None:
        """The batch's energy per channel and local day of the maintained zone, added by
        :data:`_LD_ADD_LUA` in the channel's transaction (so the local days never disagree with
        the slots after a crash). Without a zone the script only marks existing days untrusted."""
        zone_name = self._ld_zone
        per_channel: dict[tuple[str, str], list[str]] = {}
        if zone_name is None:
            for device, channel, _ in slots:
                per_channel.setdefault((device, channel), [])
        else:
            for (device, channel, day), (imp, exp, _, n) in _by_local_day(
                zone(zone_name), slots
            ).items():
                per_channel.setdefault((device, channel), []).append(_ld_pairs(day, imp, exp, n))
        for (device, channel), pairs in sorted(per_channel.items()):
            op("eval", self._ld(device, channel), _LD_ADD_LUA, zone_name or "", " ".join(pairs))

    def _seed_ops(self, op: _Ops, seed: dict[tuple[str, int], list[int]]) -> None:
        for (device, hour), (imp, exp) in sorted(seed.items()):
            mac, fw = self._macs.get(device, (None, None))
            mac = records.mac_of(device, mac)
            if mac is None:
                continue  # no MAC known or derivable: the seed layout cannot name this device
            key = self.seed_key(mac, hour)
            op("hincrbyfloat", key, "hourly_energy_usage", imp / 1000)
            op("hincrbyfloat", key, "hourly_ret_energy_usage", exp / 1000)
            op("hset", key, {
                "fw_ver": fw or "", "id": device, "mac": mac, "operational": "true",
                "timestamp": hour, _MARKER: "1",
            })  # fmt: skip

    def _device_ops(
        self, op: _Ops, device: str, values: dict[str, Any], last_seen: float | None
    ) -> None:
        key = self._dev(device)
        if last_seen is not None:
            op("hsetnx", key, "first_seen", last_seen)
        if values:
            op("hset", key, values)
        mac = records.mac_of(device, values.get("mac") or self._macs.get(device, (None, None))[0])
        seed = {k: values[k] for k in ("fw_ver", "model", "name", "ip") if k in values}
        if mac is not None and (seed or "mac" in values):
            op("hset", f"device:{mac}", {"id": device, "mac": mac, **seed})

    def _list_ops(
        self, op: _Ops, name: str, items: Sequence[tuple[str, bytes]], per_device: int, overall: int
    ) -> None:
        if not items:
            return
        per: dict[str, list[bytes]] = {}
        for device, raw in items:
            per.setdefault(device, []).append(raw)
        for device, raws in per.items():
            key = f"{self._dev(device)}:{name}"
            op("lpush", key, *raws)
            op("ltrim", key, 0, per_device - 1)
        op("lpush", self._k(name), *[raw for _, raw in items])
        op("ltrim", self._k(name), 0, overall - 1)

    async def _exec(self, ops: _Ops) -> None:
        client = self.client
        if not ops.items:
            return
        if isinstance(client, RedisCluster):
            # one transaction per hash slot: a channel's energy and ledger state share a slot
            groups: dict[int, list[tuple[str, str, tuple[Any, ...]]]] = {}
            for item in ops.items:
                groups.setdefault(key_slot(item[1].encode()), []).append(item)
            await asyncio.gather(*(self._exec_group(client, g) for g in groups.values()))
        else:
            await self._exec_group(client, ops.items)

    @staticmethod
    async def _exec_group(client: Any, items: Iterable[tuple[str, str, tuple[Any, ...]]]) -> None:
        pipe = client.pipeline(transaction=True)
        for method, key, args in items:
            kwargs: dict[str, Any] = {}
            if method == "eval":  # (script, *argv): the key goes between script and argv
                pipe.eval(args[0], 1, key, *args[1:])
                continue
            if method == "bitfield":  # redis-py's bitfield() is a builder: send it raw
                pipe.execute_command("BITFIELD", key, *args)
                continue
            if args and isinstance(args[-1], dict):
                kwargs["mapping"], args = args[-1], args[:-1]
            getattr(pipe, method)(key, *args, **kwargs)
        await pipe.execute()

    async def _pipeline_read(self, cmds: Sequence[tuple[str, str, tuple[Any, ...]]]) -> list[Any]:
        if not cmds:
            return []
        pipe = self.client.pipeline(transaction=False)
        for method, key, args in cmds:
            getattr(pipe, method)(key, *args)
        return list(await pipe.execute())

    async def set_device_label(
        self, device: str, *, label: str | None = None, room: str | None = None
    ) -> None:
        key = self._dev(device)
        try:
            pipe = self.client.pipeline(transaction=True)
            for name, value in (("label", label), ("room", room)):
                if value == "":
                    pipe.hdel(key, name)
                elif value is not None:
                    pipe.hset(key, name, value)
            await pipe.execute()
            await self.client.sadd(self._k("devices"), device)
        except (redis_errors.RedisError, OSError) as err:
            raise _error("cannot save the device label", err) from err

    async def put_meta(self, key: str, value: Any) -> None:
        raw = records.dumps(value)
        try:
            await self.client.hset(self._k("meta"), key, raw)
        except (redis_errors.RedisError, OSError) as err:
            raise _error("cannot save a setting", err) from err

    # -- local days ------------------------------------------------------------------------------

    async def use_local_zone(self, tz: str, *, wait: bool = False) -> None:
        """Keep energy per local day of ``tz`` (see :meth:`Store.use_local_zone`).

        The choice lives in ``P:kw:localdays`` (``zone``, ``ready``) so every process opening the
        store maintains the same zone. A new zone is stored not ready; commits maintain its days
        at once, and a background task rebuilds each channel's days from its slots, then marks
        the zone ready. ``wait``: return when the rebuild is done (:class:`StoreError` if it
        failed)."""
        zone(tz)  # InvalidQueryError for an unknown zone, before anything is stored
        if self._tasks is None:
            raise StoreError("the Redis store is not open; use `async with open_store(url)`")
        current, ready = await self._read_local_state()
        running = self._ld_task is not None and not self._ld_task.done()
        if current == tz and ready:
            if running and self._ld_task_zone != tz:
                await self._stop_rebuild()
            return
        if not (running and self._ld_task_zone == tz and self._ld_task_full):
            await self._stop_rebuild()
            await self._call(
                "cannot save the local zone",
                self.client.hset(self._k("localdays"), mapping={"zone": tz, "ready": "0"}),
            )
            self._ld_zone, self._ld_ready, self._ld_error = tz, False, None
            self._ld_task_zone, self._ld_task_full = tz, True
            self._ld_task = self._tasks.create_task(self._rebuild_local_days(tz))
        task = self._ld_task
        if wait and task is not None:
            await asyncio.wait([task])
            if self._ld_error is not None and self._ld_task is task:
                raise self._ld_error
            if task.cancelled() or not (self._ld_ready and self._ld_zone == tz):
                raise StoreError(f"the rebuild of local days in {tz} was stopped before it ended")

    async def local_days_zone(self) -> str | None:
        """The zone whose local days are complete, as stored in Redis now (another process may
        have chosen it)."""
        current, ready = await self._read_local_state()
        return current if ready else None

    async def _read_local_state(self) -> tuple[str | None, bool]:
        """Read ``P:kw:localdays`` and adopt it: commits maintain the stored zone."""
        raw_zone, raw_ready = await self._call(
            "cannot read the local zone",
            self.client.hmget(self._k("localdays"), ["zone", "ready"]),
        )
        current = raw_zone.decode() if raw_zone else None
        self._ld_zone, self._ld_ready = current, current is not None and raw_ready == b"1"
        return current, self._ld_ready

    async def _stop_rebuild(self) -> None:
        # bounded like the seed refresh: every await of a rebuild is one short round trip
        task, self._ld_task = self._ld_task, None
        await self._stop_task(task, "the local-day rebuild")

    async def _rebuild_local_days(self, tz: str) -> None:
        """The rebuild task: every channel's local days from its slots, then ``ready``. Errors
        are kept for a waiting caller and logged, never raised into the store's task group."""
        try:
            started = asyncio.get_running_loop().time()
            pairs = await self._pairs("channels")
            years = await self._day_hash_years(None)
            for device, channel in pairs:
                self._stop_point()
                await self._rebuild_channel(zone(tz), device, channel, years)
            marked = await self._call(
                "cannot mark the local days ready",
                self.client.eval(_LD_READY_LUA, 1, self._k("localdays"), tz),
            )
            self._ld_ready = bool(marked) and self._ld_zone == tz
            log.info(
                "local days of %s built for %d channels (%.1f s)",
                tz, len(pairs), asyncio.get_running_loop().time() - started,
            )  # fmt: skip
        except StoreError as err:
            self._ld_error = err
            log.warning("rebuilding the local days of %s failed: %s", tz, err)
        except (redis_errors.RedisError, OSError) as err:
            self._ld_error = _error(f"rebuilding the local days of {tz} failed", err)
            log.warning("%s", self._ld_error)

    def _repair_local_days(self, tz: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Rebuild, in the background, channels whose local days a query found untrusted (a
        process that did not know the zone committed to them): without this nothing would, as
        choosing the ready zone again does nothing. Not while another rebuild runs."""
        if self._tasks is None or (self._ld_task is not None and not self._ld_task.done()):
            return
        log.info("rebuilding the local days of %d channels in %s", len(pairs), tz)
        self._ld_task_zone, self._ld_task_full = tz, False
        self._ld_task = self._tasks.create_task(self._rebuild_some(tz, list(pairs)))

    async def _rebuild_some(self, tz: str, pairs: list[tuple[str, str]]) -> None:
        try:
            years = await self._day_hash_years(None)
            for device, channel in pairs:
                self._stop_point()
                await self._rebuild_channel(zone(tz), device, channel, years)
        except (StoreError, redis_errors.RedisError, OSError) as err:
            log.warning("rebuilding the local days of %d channels failed: %s", len(pairs), err)

    async def _day_hash_years(self, chan: str | None) -> dict[str, set[int]]:
        """UTC years of each channel's day hashes (``<channel key>:d:<year start>``), found by one
        SCAN of the keyspace (``chan``: of that channel's keys only, for a re-read). A rebuild
        cannot know otherwise which days a channel has data on."""
        glob = _glob_escape(chan) if chan else _glob_escape(self._k("")) + "*"
        out: dict[str, set[int]] = {}
        async for raw in self.client.scan_iter(match=glob + ":d:*", count=SCAN_COUNT):
            self._stop_point()
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            head, _, year = key.rpartition(":d:")
            if year.isdigit():
                out.setdefault(head, set()).add(int(year))
        return out

    async def _rebuild_channel(
        self, tz: ZoneInfo, device: str, channel: str, years: dict[str, set[int]]
    ) -> None:
        """Replace one channel's local days with sums of its slots, exactly once.

        Read the hash's version, the channel's slots, then write with :data:`_LD_WRITE_LUA`,
        which refuses if a commit bumped the version meanwhile (a commit's energy would be
        counted twice, or lost): then read again, SCANning for this channel's day hashes in
        case the commit started a new year."""
        ch, ld = self._chan(device, channel), self._ld(device, channel)
        known = years.get(ch, set())
        for attempt in range(LD_REBUILD_ATTEMPTS):
            if attempt:
                known = (await self._day_hash_years(ch)).get(ch, set())
            version = await self._call("cannot read local days", self.client.hget(ld, "v"))
            slots = await self._channel_slots(device, channel, sorted(known))
            days = _by_local_day(tz, slots)
            packed = " ".join(_ld_pairs(d, imp, exp, n) for (_, _, d), (imp, exp, _, n) in sorted(
                days.items()
            ))  # fmt: skip
            expect = version.decode() if version is not None else ""
            done = await self._call(
                "cannot write local days",
                self.client.eval(_LD_WRITE_LUA, 1, ld, expect, tz.key, packed),
            )
            if done:
                return
        raise StoreError(
            f"local days of {device} {channel} kept changing during {LD_REBUILD_ATTEMPTS} "
            "rebuild attempts; run use_local_zone again when ingest is quieter"
        )

    async def _channel_slots(self, device: str, channel: str, years: Sequence[int]) -> Rollup:
        """Every stored slot of the channel in ``years`` (UTC year starts), as a rollup; before
        its first slot, its hours (whose slots retention dropped, see :meth:`drop_slots_before`)
        keyed by the hour's start, so each goes whole to the local day it starts in (exact
        where the zone's offsets are whole hours, as on SQLite)."""
        ch = self._chan(device, channel)
        got = await self._call(
            "cannot read day rollups",
            self._pipeline_read([("hgetall", f"{ch}:d:{y}", ()) for y in years]),
        )
        days = sorted(
            y + int(name[:-1]) * _DAY
            for y, fields in zip(years, got, strict=True)
            for name, value in fields.items()
            if name.endswith(b"c") and int(value) > 0
        )
        got = await self._call(
            "cannot read slots", self._pipeline_read([("hgetall", f"{ch}:s:{d}", ()) for d in days])
        )
        out: Rollup = {}
        for day, fields in zip(days, got, strict=True):
            for n, cell in _parse_counted(fields).items():
                out[(device, channel, day + n * SLOT_SECONDS)] = cell
        first_hour = min((k[2] for k in out), default=2**62) // 3600 * 3600
        months = sorted({_month_start(d) for d in days if d < first_hour})
        got = await self._call(
            "cannot read hour rollups",
            self._pipeline_read([("hgetall", f"{ch}:h:{m}", ()) for m in months]),
        )
        for month, fields in zip(months, got, strict=True):
            for n, cell in _parse_counted(fields).items():
                if month + n * 3600 < first_hour:
                    out[(device, channel, month + n * 3600)] = cell
        return out

    async def drop_slots_before(self, before: int) -> int:
        """Retention: delete the slots before ``before`` (rounded down to a whole UTC hour);
        hours, days, local days and the estimated index stay. One SCAN finds the slot-day hashes
        (``P:kw:{D|C}:s:<day>``); each is cut by :data:`_DROP_LUA`, atomically, and the count of
        slots it held before the cut is returned."""
        cut = before - before % 3600
        pattern = _glob_escape(self._k("")) + "*:s:*"
        dropped = 0
        todo: list[tuple[str, int]] = []
        try:
            async for raw in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                _, _, day = key.rpartition(":s:")
                if day.isdigit() and int(day) < cut:
                    todo.append((key, min(96, (cut - int(day)) // SLOT_SECONDS)))
                if len(todo) >= SEED_CHUNK:
                    dropped += await self._drop(todo)
                    todo = []
            dropped += await self._drop(todo)
        except (redis_errors.RedisError, OSError) as err:
            raise _error("cannot drop old slots", err) from err
        return dropped

    async def _drop(self, todo: Sequence[tuple[str, int]]) -> int:
        if not todo:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, limit in todo:
            pipe.eval(_DROP_LUA, 1, key, limit)
        return sum(int(n) for n in await pipe.execute())

    # -- reads -----------------------------------------------------------------------------------

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except (redis_errors.RedisError, OSError) as err:
            raise _error(what, err) from err

    async def _pairs(self, name: str) -> list[tuple[str, str]]:
        raw = await self._call("cannot list channels", self.client.smembers(self._k(name)))
        out = []
        for member in raw:
            device, _, channel = member.decode().partition(_SEP)
            out.append((device, channel))
        return sorted(out)

    async def load_ledger_states(self) -> dict[ChannelKey, dict[str, Any]]:
        pairs = await self._pairs("ledgers")
        got = await self._call(
            "cannot read ledger states",
            self._pipeline_read([("get", f"{self._chan(d, c)}:ledger", ()) for d, c in pairs]),
        )
        return {pair: records.loads(raw) for pair, raw in zip(pairs, got, strict=True) if raw}

    async def energy(self, query: EnergyQuery) -> list[EnergyRow]:
        return (await self.energy_table(query)).rows()

    async def energy_table(self, query: EnergyQuery) -> EnergyTable:
        p = plan(query.by, query.tz, query.start, query.end)
        pairs = [pc for pc in await self._pairs("channels") if selected(query, *pc)]
        seed_cmds = await self._seed_reads(query, p)
        if not seed_cmds and (
            query.group == "channel" or not needs_names_rules(c for _, c in pairs)
        ):
            # no externally written hours and no "Names" rule to apply: sums on the server
            if p.by in ("day", "month"):
                table = await self._local_days_table(p, query, pairs)
                if table is not None:
                    return table
                return EnergyTable.from_flat(p, await self._rollup_flat(p, query, pairs))
            if p.keys_are_starts and query.group == "channel":
                return await self._scan_table(p, pairs)
        seed_devices = {device for _, (device, _) in seed_cmds}
        if p.by in ("day", "month"):
            cells = await self._rollup_cells(p, pairs)
            # raw data only where the hourly rules need hours: devices with an hourly channel
            per_device: dict[str, set[str]] = {}
            for device, channel in pairs:
                per_device.setdefault(device, set()).add(channel)
            needy = {
                d
                for d, chans in per_device.items()
                if (HOURLY in chans or d in seed_devices)
                and (query.group != "channel" or d in seed_devices)
            }
            scan_pairs = [pc for pc in pairs if pc[0] in needy]
        else:
            cells, scan_pairs = {}, pairs
        raw, seed_got = await self._scan_raw(p, scan_pairs, [c for c, _ in seed_cmds])
        step = 3600 if p.whole_hours else SLOT_SECONDS
        seed_raw = _seed_rows(raw, seed_cmds, seed_got, step, p)
        if p.keys_are_starts:
            for device, channel, ts, imp, exp, est in raw:
                cells[(device, channel, ts)] = [imp, exp, int(est)]  # one row per bucket
        elif p.by not in ("day", "month"):
            for device, channel, ts, imp, exp, est in raw:
                add(cells, device, channel, p.key(ts), imp, exp, est)
        for device, channel, ts, imp, exp, est in seed_raw:
            add(cells, device, channel, p.key(ts), imp, exp, est)
        shadow = _shadow(p, raw + seed_raw, cells) if query.group != "channel" else {}
        return EnergyTable.from_flat(p, grouped_flat(query, cells, shadow))

    async def _local_days_table(
        self, p: Plan, query: EnergyQuery, pairs: Sequence[tuple[str, str]]
    ) -> EnergyTable | None:
        """Day and month rows from the channels' local-day hashes: one HMGET per channel of the
        range's days (``None``: they cannot answer, take another path).

        They answer when the query's zone is the maintained one and complete (checked in the same
        round trip, so a zone another process changed is noticed), each bucket is made of whole
        local days, and every channel's hash holds that zone's days (``z``; see
        :data:`_LD_ADD_LUA`)."""
        tz = query.tz
        if tz != self._ld_zone:
            return None
        cuts = [p.start, *p.bounds[1:-1], p.end] if p.by == "month" else [p.start, p.end]
        local = _local_day_bounds(p, cuts)
        if local is None:
            return None
        first, width = local[0], local[-1] - local[0]
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._k("localdays"), ["zone", "ready"])
        chunk = 1 if isinstance(self.client, RedisCluster) else LD_READ_CHUNK
        for at in range(0, len(pairs), chunk):
            keys = [
                f"{self._chan(d, c)}:{kind}"
                for d, c in pairs[at : at + chunk]
                for kind in ("ld", "est")
            ]
            pipe.eval(_LD_READ_LUA, len(keys), *keys, tz, first, width, p.start, p.end - 1)
        got = await self._call("energy query failed", pipe.execute())
        raw_zone, raw_ready = got[0]
        if raw_zone is None or raw_zone.decode() != tz or raw_ready != b"1":
            self._ld_zone = raw_zone.decode() if raw_zone else None
            self._ld_ready = False
            return None
        # per output group: [imports, exports, counts, estimated], one entry per local day
        groups: dict[tuple[str | None, str | None], list[list[int]]] = {}
        values = list(itertools.chain.from_iterable(got[1:]))
        i = 0
        stale: list[tuple[str, str]] = []
        for device, channel in pairs:
            status = values[i]
            if status != 1:
                i += 1
                if status == 0:  # untrusted or another zone's days
                    stale.append((device, channel))
                continue  # (-1: no local-day hash: the channel never had energy)
            e = values[i + 1]
            estimated = values[i + 2 : i + 2 + e]
            i += 2 + e + 3 * width
            body = values[i - 3 * width : i]
            g = (
                device if query.group != "total" else None,
                channel if query.group == "channel" else None,
            )
            acc = groups.get(g)
            if acc is None:
                acc = groups[g] = [body[0::3], body[1::3], body[2::3], [0] * width]
            else:
                for k in range(3):
                    acc[k] = list(map(add_, acc[k], body[k::3]))
            for slot in estimated:  # few: one offset look-up each
                acc[3][_local_day(p.tz, slot) - first] = 1
        if stale:
            self._repair_local_days(tz, stale)
            return None  # the general path answers meanwhile
        if p.by == "day":
            return _bucket_table(p, groups, range(first, first + width))
        # months: sum each group's days between the month bounds
        spans = [(a - first, b - first) for a, b in itertools.pairwise(local)]
        for acc in groups.values():
            acc[:3] = [[sum(col[a:b]) for a, b in spans] for col in acc[:3]]
            acc[3] = [int(any(acc[3][a:b])) for a, b in spans]
        return _bucket_table(p, groups, range(len(spans)))

    async def _scan_table(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> EnergyTable:
        """15-minute (or whole-hour) rows by channel, column by column when one channel has data
        (a year by hour is 8 760 rows: no tuple per row), else merged and sorted."""
        got = await self._scan_columns(p, pairs)
        with_data = {(device, channel) for device, channel, *_ in got}
        if len(with_data) > 1:
            return EnergyTable.from_flat(p, _scan_rows(got))
        if not with_data:
            return EnergyTable(p)
        keys: list[int] = []
        imports: list[int] = []
        exports: list[int] = []
        estimated: list[int] = []
        for _, _, starts, imps, exps, ests in got:  # hashes in time order: the keys ascend
            keys += starts
            imports += imps
            exports += exps
            estimated += ests
        device, channel = next(iter(with_data))
        n = len(keys)
        return EnergyTable(p, keys, [device] * n, [channel] * n, imports, exports, estimated)

    async def _scan_columns(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> list[Columns]:
        """Per channel and slot-day/hour-month hash: its slots (hours) in range as columns
        (starts, imports, exports, estimated), in time order.

        Each hash is read whole (``HGETALL``: hiredis parses it and redis-py pairs it into a dict
        in C) and picked apart by ``map``/``compress`` over remembered field names. A Lua script
        parsing the names on the server cost more: a year of hours is ~26 000 fields, and the
        server's string work per field was most of the query."""
        step = 3600 if p.whole_hours else SLOT_SECONDS
        kind = "h" if step == 3600 else "s"
        if kind == "h" and self._hb_ready:
            return await self._packed_columns(p, pairs)
        names = _field_names(kind)
        pipe = self.client.pipeline(transaction=False)
        jobs: list[tuple[str, str, int, int, int]] = []
        for device, channel in pairs:
            ch = self._chan(device, channel)
            for base in _bases(p, step):
                lo = max(0, -(-(p.start - base) // step))
                hi = min(len(names[0]), -(-(p.end - base) // step))
                pipe.hgetall(f"{ch}:{kind}:{base}")
                jobs.append((device, channel, base, lo, hi))
        got = await self._call("energy query failed", pipe.execute()) if jobs else []
        out: list[Columns] = []
        imp_names, exp_names, count_names, est_names = names
        compress = itertools.compress
        for (device, channel, base, lo, hi), fields in zip(jobs, got, strict=True):
            if not fields:
                continue
            get = fields.get
            present = list(map(get, count_names[lo:hi]))  # None where the slot has no data
            at = list(compress(range(lo, hi), present))
            if not at:
                continue
            zero = repeat(b"0")
            out.append((
                device,
                channel,
                list(map(add_, repeat(base), map(mul, at, repeat(step)))),
                list(map(int, map(get, compress(imp_names[lo:hi], present), zero))),
                list(map(int, map(get, compress(exp_names[lo:hi], present), zero))),
                list(map(int, map(fields.__contains__, compress(est_names[lo:hi], present)))),
            ))  # fmt: skip
        return out

    async def _packed_columns(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> list[Columns]:
        """:meth:`_scan_columns` for whole hours from the packed columns (``…:hb:<month>``): one
        ``GET`` per channel and month (a year is ~290 KB instead of ~26 000 hash fields the server
        must send and hiredis parse), decoded by ``array.frombytes`` and picked by slices and
        ``compress`` over the deltas column (an hour has data when its deltas are > 0, as its
        ``nc`` field exists in the hash) -- all C loops."""
        width, size = _HB_WIDTH, 31 * 24
        pipe = self.client.pipeline(transaction=False)
        jobs: list[tuple[str, str, int, int, int]] = []
        for device, channel in pairs:
            ch = self._chan(device, channel)
            for base in _bases(p, 3600):
                lo = max(0, -(-(p.start - base) // 3600))
                hi = min(size, -(-(p.end - base) // 3600))
                pipe.get(f"{ch}:hb:{base}")
                jobs.append((device, channel, base, lo, hi))
        got = await self._call("energy query failed", pipe.execute()) if jobs else []
        out: list[Columns] = []
        compress = itertools.compress
        for (device, channel, base, lo, hi), raw in zip(jobs, got, strict=True):
            if not raw or hi <= lo:
                continue
            values = array.array("q")
            values.frombytes(raw[: len(raw) - len(raw) % 8])
            if _LITTLE:
                values.byteswap()  # BITFIELD's integers are big-endian
            values.extend(repeat(0, -len(values) % width))
            a, b = lo * width, hi * width
            counts = values[a + 2 : b : width]
            at = list(compress(range(lo, hi), counts))
            if not at:
                continue
            out.append((
                device,
                channel,
                list(map(add_, repeat(base), map(mul, at, repeat(3600)))),
                list(compress(values[a:b:width], counts)),
                list(compress(values[a + 1 : b : width], counts)),
                list(compress(values[a + 3 : b : width], counts)),
            ))  # fmt: skip
        return out

    async def _rollup_flat(
        self, p: Plan, query: EnergyQuery, pairs: Sequence[tuple[str, str]]
    ) -> list[Flat]:
        """Day and month rows, each channel's buckets summed on the server (:data:`_ROLLUP_LUA`)
        from the same signed rollup fields as :meth:`_rollup_cells`; grouped here."""
        keys = p.keys()
        index = {k: i for i, k in enumerate(keys)}
        wanted: dict[str, dict[str, list[str]]] = {}
        for key, level, lo, hi, sign in p.terms():
            for t in range(lo, hi, level):
                suffix, field = _rollup_field(t, level)
                fields = wanted.setdefault(suffix, {})
                fields.setdefault(field, []).append(f"{index[key]}{'+' if sign > 0 else '-'}")
        suffixes = list(wanted)
        names = [
            " ".join(f"{name} {name}e {name}c" for name in fields) for fields in wanted.values()
        ]
        targets = [
            " ".join("".join(uses) for uses in fields.values()) for fields in wanted.values()
        ]
        packed = [*names, *targets]
        pipe = self.client.pipeline(transaction=False)
        for device, channel in pairs:
            ch = self._chan(device, channel)
            pipe.eval(
                _ROLLUP_LUA, len(suffixes), *[f"{ch}:{x}" for x in suffixes], len(keys), *packed
            )
            pipe.zrangebyscore(f"{ch}:est", p.start, p.end - 1)
        got = await self._call("energy query failed", pipe.execute()) if pairs else []
        grouped: Grouped = {}
        for i, (device, channel) in enumerate(pairs):
            sums, est = got[2 * i], got[2 * i + 1]
            marked = {p.key(int(raw)) for raw in est}
            d = device if query.group != "total" else None
            c = channel if query.group == "channel" else None
            for b in range(len(keys)):
                if sums[3 * b + 2] <= 0:
                    continue
                key = keys[b]
                x = int(key in marked)
                acc = grouped.get((key, d, c))
                if acc is None:
                    grouped[(key, d, c)] = [sums[3 * b], sums[3 * b + 1], x]
                else:
                    acc[0] += sums[3 * b]
                    acc[1] += sums[3 * b + 1]
                    acc[2] |= x
        return in_order(grouped)

    async def _scan_raw(
        self,
        p: Plan,
        pairs: Sequence[tuple[str, str]],
        extra: Sequence[tuple[str, str, tuple[Any, ...]]],
    ) -> tuple[list[tuple[str, str, int, int, int, bool]], list[Any]]:
        """Every slot (or hour) of ``pairs`` in the range, plus the results of ``extra`` reads."""
        step = 3600 if p.whole_hours else SLOT_SECONDS
        cmds: list[tuple[str, str, tuple[Any, ...]]] = []
        bases: list[tuple[str, str, int]] = []
        for device, channel in pairs:
            ch = self._chan(device, channel)
            for base in _bases(p, step):
                cmds.append(("hgetall", f"{ch}:{'h' if step == 3600 else 's'}:{base}", ()))
                bases.append((device, channel, base))
        got = await self._call("energy query failed", self._pipeline_read([*cmds, *extra]))
        raw: list[tuple[str, str, int, int, int, bool]] = []
        for (device, channel, base), fields in zip(bases, got, strict=False):
            if fields:
                raw += _parse(device, channel, base, step, fields, p)
        return raw, got[len(cmds) :]

    async def _rollup_cells(self, p: Plan, pairs: Sequence[tuple[str, str]]) -> Cells:
        """Day and month buckets from signed day, hour and slot rollups (``periods.decompose``):
        one HMGET per channel and rollup hash, of exactly the fields needed."""
        # which fields of which hash each bucket needs, with its sign: the same for every channel.
        # Neighbouring buckets share fields (one adds the hours the other takes away): read once.
        wanted: dict[str, dict[str, list[tuple[int, int]]]] = {}
        for key, level, lo, hi, sign in p.terms():
            for t in range(lo, hi, level):
                suffix, field = _rollup_field(t, level)
                fields = wanted.setdefault(suffix, {})
                fields.setdefault(field, []).append((key, sign))
        # one argument per HMGET (a field list that _HMGET_LUA splits): redis-py packs every
        # argument in Python, and these lists are the same hundreds of fields for every channel
        plans = [
            (suffix, list(fields.values()), " ".join(
                f for name in fields for f in (name, name + "e", name + "c")
            ).encode())
            for suffix, fields in wanted.items()
        ]  # fmt: skip
        pipe = self.client.pipeline(transaction=False)
        for device, channel in pairs:
            ch = self._chan(device, channel)
            for suffix, _, packed in plans:
                pipe.eval(_HMGET_LUA, 1, f"{ch}:{suffix}", packed)
            pipe.zrangebyscore(f"{ch}:est", p.start, p.end - 1)
        got = await self._call("energy query failed", pipe.execute()) if pairs else []
        sums: dict[tuple[str, str, int], list[int]] = {}
        estimated: list[tuple[str, str, list[bytes]]] = []
        i = 0
        for device, channel in pairs:
            for _, uses, _ in plans:
                values = got[i]
                i += 1
                for j, targets in enumerate(uses):
                    count = values[3 * j + 2]
                    if count is None:
                        continue
                    imp, exp, n = int(values[3 * j] or 0), int(values[3 * j + 1] or 0), int(count)
                    for key, sign in targets:
                        acc = sums.get((device, channel, key))
                        if acc is None:
                            acc = sums[(device, channel, key)] = [0, 0, 0]
                        acc[0] += sign * imp
                        acc[1] += sign * exp
                        acc[2] += sign * n
            estimated.append((device, channel, got[i]))
            i += 1
        cells: Cells = {k: [v[0], v[1], 0] for k, v in sums.items() if v[2] > 0}
        for device, channel, slots in estimated:
            for raw in slots:
                cell = cells.get((device, channel, p.key(int(raw))))
                if cell is not None:
                    cell[2] = 1
        return cells

    async def _seed_reads(
        self, query: EnergyQuery, p: Plan
    ) -> list[tuple[tuple[str, str, tuple[Any, ...]], tuple[str, int]]]:
        if query.channels and HOURLY not in query.channels:
            return []
        members = await self._call(
            "cannot read the seed index",
            self.client.zrangebyscore(self._k("seed"), p.start - 3599, p.end - 1, withscores=True),
        )
        out = []
        for member, score in members:
            device, _, key = member.decode().partition(_SEP)
            if query.devices and device not in query.devices:
                continue
            cmd = ("hmget", key, ("hourly_energy_usage", "hourly_ret_energy_usage", _MARKER))
            out.append((cmd, (device, int(score))))
        return out

    async def devices(self) -> list[DeviceRecord]:
        names = await self._call("cannot list devices", self.client.smembers(self._k("devices")))
        seed_ids = await self._seed_ids()
        ids = sorted({n.decode() for n in names} | seed_ids)
        found = [await self._device(d, d in seed_ids) for d in ids]
        return [d for d in found if d is not None]

    async def _seed_ids(self) -> set[str]:
        ids = await self._call(
            "cannot read the seed index", self.client.smembers(self._k("seed-ids"))
        )
        return {i.decode() for i in ids}

    async def device(self, device: str) -> DeviceRecord | None:
        return await self._device(device, device in await self._seed_ids())

    async def _device(self, device: str, seeded: bool) -> DeviceRecord | None:
        key = self._dev(device)
        values, channels, known = await self._call(
            "cannot read a device",
            self._pipeline_read(
                [
                    ("hgetall", key, ()),
                    ("smembers", key + ":channels", ()),
                    ("sismember", self._k("devices"), (device,)),
                ]
            ),
        )
        if not known and not seeded:
            return None
        names = {c.decode() for c in channels} | ({HOURLY} if seeded else set())
        decoded = {k.decode(): v.decode() for k, v in values.items()}
        return records.device_record(device, decoded, sorted(names))

    async def latest(self, device: str | None = None) -> list[Reading]:
        if device is None:
            names = await self._call(
                "cannot list devices", self.client.smembers(self._k("devices"))
            )
            devices = sorted(n.decode() for n in names)
        else:
            devices = [device]
        got = await self._call(
            "cannot read latest readings",
            self._pipeline_read([("hgetall", self._dev(d) + ":latest", ()) for d in devices]),
        )
        return [records.reading_loads(values[c]) for values in got for c in sorted(values)]

    async def _list(self, key: str, limit: int) -> list[bytes]:
        if limit <= 0:
            return []
        got = await self._call("cannot read a list", self.client.lrange(key, 0, limit - 1))
        return list(got)

    async def events(self, device: str | None = None, limit: int = 100) -> list[Event]:
        key = self._k("events") if device is None else f"{self._dev(device)}:events"
        return [records.event_loads(r) for r in await self._list(key, limit)]

    async def logs(self, device: str | None = None, limit: int = 100) -> list[LogLine]:
        key = self._k("logs") if device is None else f"{self._dev(device)}:logs"
        return [records.log_loads(r) for r in await self._list(key, limit)]

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [
            records.dead_letter_loads(r) for r in await self._list(self._k("deadletters"), limit)
        ]

    async def dead_letter_counts(self) -> dict[str, int]:
        got = await self._call(
            "cannot read dead letter counts", self.client.hgetall(self._k("deadletter-counts"))
        )
        return {k.decode(): int(v) for k, v in got.items()}

    async def get_meta(self, key: str) -> Any | None:
        raw = await self._call("cannot read a setting", self.client.hget(self._k("meta"), key))
        return None if raw is None else records.loads(raw)


def _add_fields(op: _Ops, key: str, n: str, imp: int, exp: int, est: int, count: int) -> None:
    if imp or not exp:
        op("hincrby", key, n, imp)  # even 0: an all-zero slot still has data (zero energy)
    if exp:
        op("hincrby", key, n + "e", exp)
    if est:
        op("hset", key, n + "x", 1)
    op("hincrby", key, n + "c", count)  # deltas that landed here: > 0 means "has data"


def _add_columns(args: list[Any], at: int, imp: int, exp: int, est: int, count: int) -> None:
    """``BITFIELD`` subcommands adding one hour to its packed columns (hour ``at`` of the month;
    layout in the module docstring). The deltas are always added: they mark the hour as having
    data, as ``nc`` does in the hash."""
    i = _HB_WIDTH * at
    if imp:
        args += ("INCRBY", "i64", f"#{i}", imp)
    if exp:
        args += ("INCRBY", "i64", f"#{i + 1}", exp)
    args += ("INCRBY", "i64", f"#{i + 2}", count)
    if est:
        args += ("SET", "i64", f"#{i + 3}", 1)


def _by_local_day(tz: ZoneInfo, slots: Rollup) -> Rollup:
    """``slots`` (keyed by slot start) summed per local day number of ``tz``: ``(slot +
    offset) // 86400``, exactly :meth:`Plan.key` for ``by="day"``. Offsets come from the zone's
    segments over the slots' span (a handful of look-ups), not one look-up per slot."""
    if not slots:
        return {}
    starts = [k[2] for k in slots]
    segs = segments(tz, min(starts), max(starts) + SLOT_SECONDS)
    seg_starts = [seg.start for seg in segs]

    def local_day(slot: int) -> int:
        return (slot + segs[bisect_right(seg_starts, slot) - 1].offset) // _DAY

    return regroup(slots, local_day)


def _ld_pairs(day: int, imp: int, exp: int, n: int) -> str:
    """``field value`` pairs of one local day (import always: a zero day still has data)."""
    return f"{day} {imp} {day}e {exp} {day}c {n}" if exp else f"{day} {imp} {day}c {n}"


def _local_day(tz: ZoneInfo, ts: int) -> int:
    return (ts + offset_at(tz, ts)) // _DAY


def _local_midnight(tz: ZoneInfo, day: int) -> int:
    d = date(1970, 1, 1) + timedelta(days=day)
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())


def _local_day_bounds(p: Plan, instants: Sequence[int]) -> list[int] | None:
    """The local day number starting at each of ``instants`` (the range's ends, month bounds),
    or ``None`` when one is not where a local day starts, or the range holds a backward
    change across midnight (local days not in time order): then local-day sums are not the
    plan's buckets."""
    tz = p.tz
    out = []
    for t in instants:
        day = _local_day(tz, t)
        if _local_midnight(tz, day) != t or _local_day(tz, t - SLOT_SECONDS) >= day:
            return None
        out.append(day)
    for seg in p.segments[1:]:
        if _local_day(tz, seg.start - SLOT_SECONDS) > _local_day(tz, seg.start):
            return None
    return out


Columns: TypeAlias = tuple[str, str, list[int], list[int], list[int], list[int]]
"""One hash's rows of one channel: ``(device, channel, starts, imports, exports, estimated)``."""


@functools.cache
def _field_names(kind: str) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    """Field names ``n``, ``ne``, ``nc``, ``nx`` of every slot of a day (``s``) or hour of a
    month (``h``) hash, as bytes (the keys of a hash as redis-py returns it)."""
    size = 96 if kind == "s" else 31 * 24
    return (
        [b"%d" % n for n in range(size)],
        [b"%de" % n for n in range(size)],
        [b"%dc" % n for n in range(size)],
        [b"%dx" % n for n in range(size)],
    )


def _scan_rows(got: Sequence[Columns]) -> list[Flat]:
    flat: list[Flat] = []
    for device, channel, starts, imps, exps, ests in got:
        flat += zip(starts, repeat(device), repeat(channel), imps, exps, ests)
    flat.sort()  # (start, device, channel) are unique: the documented row order
    return flat


def _bucket_table(
    p: Plan, groups: dict[tuple[str | None, str | None], list[list[int]]], keys: Sequence[int]
) -> EnergyTable:
    """Rows of per-group bucket sums (``[imports, exports, counts, estimated]``, one entry per
    bucket of ``keys``), in the documented order: by bucket, then device, then channel; buckets
    without deltas left out. Transposed by ``zip`` and filtered by ``compress`` (C loops): the
    500-device month is 15 000 rows."""
    order = sorted(groups, key=lambda g: (g[0] or "", g[1] or ""))
    if not order:
        return EnergyTable(p)
    columns = [groups[g] for g in order]

    def bucket_major(k: int) -> list[int]:
        return list(itertools.chain.from_iterable(zip(*(c[k] for c in columns), strict=True)))

    imports, exports, counts, estimated = (bucket_major(k) for k in range(4))
    keep = list(map(bool, counts))
    n = len(order)
    pick = itertools.compress
    return EnergyTable(
        p,
        list(pick(itertools.chain.from_iterable(map(repeat, keys, repeat(n))), keep)),
        list(pick(itertools.chain.from_iterable(repeat([g[0] for g in order], len(keys))), keep)),
        list(pick(itertools.chain.from_iterable(repeat([g[1] for g in order], len(keys))), keep)),
        list(pick(imports, keep)),
        list(pick(exports, keep)),
        list(pick(estimated, keep)),
    )


def _parse_counted(fields: dict[bytes, bytes]) -> dict[int, list[int]]:
    """A slot or hour hash as ``n -> [import, export, 0, deltas]`` of the entries with data."""
    per: dict[int, list[int]] = {}
    for name, value in fields.items():
        tail = name[-1:]
        if tail == b"x":
            continue
        if tail in (b"e", b"c"):
            per.setdefault(int(name[:-1]), [0, 0, 0, 0])[1 if tail == b"e" else 3] = int(value)
        else:
            per.setdefault(int(name), [0, 0, 0, 0])[0] = int(value)
    return {n: cell for n, cell in per.items() if cell[3] > 0}


def _rollup_field(t: int, level: int) -> tuple[str, str]:
    """The rollup hash (key suffix) and field that hold the ``level``-long bucket starting at ``t``:
    days in per-year hashes, hours in per-month hashes, slots in per-day hashes."""
    if level == _DAY:
        base, kind = _year_start(t), "d"
    elif level == 3600:
        base, kind = _month_start(t), "h"
    else:
        base, kind = t - t % _DAY, "s"
    return f"{kind}:{base}", str((t - base) // level)


def _year_start(ts: int) -> int:
    return int(datetime(datetime.fromtimestamp(ts, UTC).year, 1, 1, tzinfo=UTC).timestamp())


def _month_start(ts: int) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def _bases(p: Plan, step: int) -> list[int]:
    """Start of every UTC day (slot resolution) or UTC month (hour resolution) the range touches."""
    if step == SLOT_SECONDS:
        return list(range(p.start - p.start % _DAY, p.end, _DAY))
    out = []
    t = _month_start(p.start)
    while t < p.end:
        out.append(t)
        t = _month_start(t + 32 * _DAY)
    return out


def _parse(
    device: str, channel: str, base: int, step: int, fields: dict[bytes, bytes], p: Plan
) -> list[tuple[str, str, int, int, int, bool]]:
    values: dict[int, list[int]] = {}
    for name, value in fields.items():
        tail = name[-1:]
        if tail == b"c":
            continue
        if tail in (b"e", b"x"):
            n = int(name[:-1])
            cell = values.setdefault(n, [0, 0, 0])
            if tail == b"e":
                cell[1] = int(value)
            else:
                cell[2] = 1
        else:
            values.setdefault(int(name), [0, 0, 0])[0] = int(value)
    out = []
    for n, (imp, exp, est) in values.items():
        ts = base + n * step
        if p.start <= ts < p.end:
            out.append((device, channel, ts, imp, exp, bool(est)))
    return out


def _seed_rows(
    raw: list[tuple[str, str, int, int, int, bool]],
    seed_cmds: Sequence[tuple[Any, tuple[str, int]]],
    got: Sequence[Any],
    step: int,
    p: Plan,
) -> list[tuple[str, str, int, int, int, bool]]:
    """Externally written hours as channel ``hourly``; hours kilowatch itself holds for that
    device's
    ``hourly`` channel win (the same script message, seen by both kilowatch and an EMQX sink)."""
    ours = {(d, ts // 3600 * 3600) for d, c, ts, *_ in raw if c == HOURLY}
    out: list[tuple[str, str, int, int, int, bool]] = []
    for (_, (device, hour)), (imp, exp, marker) in zip(seed_cmds, got, strict=True):
        if marker is not None or imp is None or (device, hour) in ours:
            continue
        imp_mwh, exp_mwh = _mwh(imp), _mwh(exp)
        parts = 1 if step == 3600 else 3600 // SLOT_SECONDS
        # an hour read at slot resolution is spread evenly (remainder on the first slot)
        for i in range(parts):
            ts = hour + i * (3600 // parts)
            if p.start <= ts < p.end:
                a = imp_mwh // parts + (imp_mwh % parts if i == 0 else 0)
                b = exp_mwh // parts + (exp_mwh % parts if i == 0 else 0)
                out.append((device, HOURLY, ts, a, b, parts > 1 and not _whole(p, hour)))
    return out


def _whole(p: Plan, hour: int) -> bool:
    """Whether one bucket holds the whole UTC hour (so spreading it over slots changes nothing)."""
    return p.start <= hour and hour + 3600 <= p.end and p.key(hour) == p.key(hour + 3600 - 900)


def _mwh(value: bytes | None) -> int:
    if value is None:
        return 0
    try:
        return round(float(value) * 1000)
    except ValueError:
        return 0


def _shadow(
    p: Plan, raw: list[tuple[str, str, int, int, int, bool]], cells: Cells
) -> dict[tuple[str, int], list[int]]:
    covered: dict[str, set[int]] = {}
    for device, channel, ts, *_ in raw:
        if channel != HOURLY:
            covered.setdefault(device, set()).add(ts // 3600 * 3600)
    hourly = [(d, ts, imp, exp) for d, c, ts, imp, exp, _ in raw if c == HOURLY and d in covered]
    return shadow_hourly(p, hourly, covered)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN ``MATCH`` pattern (device ids may hold ``[*?``)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def _error(what: str, err: BaseException) -> StoreError:
    hint = ""
    if isinstance(
        err, redis_errors.AuthenticationError | redis_errors.AuthenticationWrongNumberOfArgsError
    ):
        hint = "; check the password in the store URL (redis://:password@host:port/0)"
    elif isinstance(err, redis_errors.ConnectionError | OSError):
        hint = "; is redis-server running there? check host and port of the store URL"
    elif isinstance(err, redis_errors.ResponseError) and "MOVED" in str(err):
        hint = "; this server is part of a cluster: list several nodes in the URL"
    out = StoreError(f"{what}: {err}{hint}")
    out.__cause__ = err
    return out


__all__ = ["SEED_REFRESH_S", "RedisStore"]
