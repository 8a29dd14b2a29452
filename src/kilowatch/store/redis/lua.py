"""The Redis store's Lua scripts: each runs atomically on the server, on keys of one hash slot.

Their contracts (``KEYS``, ``ARGV``, the reply) are in the docstring under each; the modules that
run them say why a script and not commands (redis-py packs every argument in Python; a script keeps
a read-modify-write atomic against a racing commit).
"""

from __future__ import annotations

HMGET_LUA = """
local fields = {}
for name in string.gmatch(ARGV[1], "%S+") do fields[#fields + 1] = name end
return redis.call('HMGET', KEYS[1], unpack(fields))
"""
"""HMGET of a space-separated field list (at most a few thousand fields: Lua's unpack limit)."""

ROLLUP_LUA = """
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

LD_ADD_LUA = """
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

LD_WRITE_LUA = """
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

LD_READY_LUA = """
if redis.call('HGET', KEYS[1], 'zone') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ready', '1')
return 1
"""
"""Mark the local days of zone ``ARGV[1]`` complete, unless the zone was changed meanwhile."""

LD_READ_LUA = """
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

DROP_LUA = """
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

HB_BUILD_LUA = """
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

COMMIT_OPS = {
    "hincrby": "I",
    "hset": "H",
    "hsetnx": "N",
    "zadd": "Z",
    "sadd": "S",
    "lpush": "P",
    "ltrim": "T",
    "set": "V",
    "bitfield": "B",
    "seed_hour": "W",
    "expire": "E",
    "delete": "D",
    "power_minutes": "M",
}
"""The commands a commit is made of (:class:`~.transaction.Ops` names them like redis-py's
methods) and their one-letter codes in :data:`COMMIT_LUA`'s op list. ``seed_hour`` is ours: add
mWh to a seed hour hash (``kwi``, ``kwe``) and write its Wh fields as exact decimals; a hash an
earlier kilowatch wrote (marker ``kw``, float sums, no ``kwi``) starts from its sums rounded to
the mWh. ``expire`` sets a key's time to live (s); ``delete`` (no arguments) deletes it;
``power_minutes`` is ours too: ``<minute of the day> <mW> <samples>`` triples set in a power day
string (``BITFIELD SET i64`` of words ``2n`` and ``2n+1``: three numbers per minute to pack in
Python instead of eight arguments)."""
COMMIT_MERGEABLE = frozenset("IHSP")
"""Codes whose ops on the same key, one after the other, are one op with the arguments of both
(``HINCRBY k a 1; HINCRBY k b 2`` = ``I k a 1 b 2``; ``LPUSH k x; LPUSH k y`` = ``P k x y``)."""
COMMIT_SUBSCRIPTS = {LD_ADD_LUA: "L"}
"""Scripts a commit once ran with ``EVAL`` in its transaction, now functions of
:data:`COMMIT_LUA` (called with their own ``KEYS`` and ``ARGV``), by their code."""

_COMMIT_TEMPLATE = """
local seq = tonumber(ARGV[1])
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if floor > tonumber(ARGV[3]) then
  return redis.error_reply('KWSTALE writer generation ' .. ARGV[3] .. ' < ' .. floor)
end
local done = redis.call('GET', KEYS[1])
if done and tonumber(done) >= seq then return 0 end
-- The fence is the script's first write. Out of memory (maxmemory, noeviction) it fails here, so
-- the commit fails whole and is retried; once a script has written, Redis lets its later writes
-- through. Written last, a write that is not refused out of memory (DEL) could come first, let
-- the fence through and mark a commit done whose increments were refused: energy lost.
redis.call('SET', KEYS[1], seq, 'EX', ARGV[2])
local unpack, min, format, sub, find = unpack, math.min, string.format, string.sub, string.find
local failed = nil
local function call(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then failed = failed or reply.err end
  return reply
end
local function chunked(command, key, args, first, last)
  local step = 1000  -- whole tuples of 1, 2 or 4 arguments; under unpack's limit
  for at = first, last, step do
    call(command, key, unpack(args, at, min(at + step - 1, last)))
  end
end
local function wh(mwh)
  local sign = ''
  if mwh < 0 then sign, mwh = '-', -mwh end
  local frac = mwh % 1000
  local text = sign .. format('%.0f', (mwh - frac) / 1000)
  if frac == 0 then return text end
  return (string.gsub(text .. format('.%03d', frac), '0+$', ''))
end
local function mwh(text)
  local wh_value = tonumber(text)
  if not wh_value then return 0 end
  return format('%.0f', math.floor(wh_value * 1000 + 0.5))
end
%(functions)s
local i, n = 4, #ARGV
while i <= n do
  local head = ARGV[i]
  local colon = find(head, ':', 2, true)
  local code, key = sub(head, 1, 1), KEYS[tonumber(sub(head, 2, colon - 1))]
  local count = tonumber(sub(head, colon + 1))
  local args, a, last = ARGV, i + 1, i + count
  if count == 0 then  -- one argument follows: the op's arguments joined by spaces
    args, a, last = {}, 1, 0
    for word in string.gmatch(ARGV[i + 1], '%S+') do
      last = last + 1
      args[last] = word
    end
    count = 1
  end
  if code == 'I' then
    for at = a, last, 2 do call('HINCRBY', key, args[at], args[at + 1]) end
  elseif code == 'H' then chunked('HSET', key, args, a, last)
  elseif code == 'N' then call('HSETNX', key, args[a], args[a + 1])
  elseif code == 'Z' then chunked('ZADD', key, args, a, last)
  elseif code == 'S' then chunked('SADD', key, args, a, last)
  elseif code == 'P' then chunked('LPUSH', key, args, a, last)
  elseif code == 'T' then call('LTRIM', key, args[a], args[a + 1])
  elseif code == 'V' then call('SET', key, args[a])
  elseif code == 'B' then chunked('BITFIELD', key, args, a, last)
  elseif code == 'M' then
    local bf, m = {}, 0
    for at = a, last, 3 do
      local word = 2 * tonumber(args[at])
      bf[m + 1], bf[m + 2], bf[m + 3], bf[m + 4] = 'SET', 'i64', '#' .. word, args[at + 1]
      bf[m + 5], bf[m + 6], bf[m + 7], bf[m + 8] = 'SET', 'i64', '#' .. (word + 1), args[at + 2]
      m = m + 8
    end
    chunked('BITFIELD', key, bf, 1, m)
  elseif code == 'E' then call('EXPIRE', key, args[a])
  elseif code == 'D' then call('DEL', key)
  elseif code == 'W' then
    if call('HEXISTS', key, 'kwi') == 0 and call('HGET', key, 'kw') == '1' then
      -- ours, from a kilowatch that added floats: its sums so far become the mWh to add to
      local old = call('HMGET', key, 'hourly_energy_usage', 'hourly_ret_energy_usage')
      if type(old) == 'table' and not old.err then
        call('HSET', key, 'kwi', mwh(old[1]), 'kwe', mwh(old[2]))
      end
    end
    local imp = call('HINCRBY', key, 'kwi', args[a])
    local exp = call('HINCRBY', key, 'kwe', args[a + 1])
    if type(imp) == 'number' and type(exp) == 'number' then
      call('HSET', key, 'hourly_energy_usage', wh(imp), 'hourly_ret_energy_usage', wh(exp))
    end
  elseif subscripts[code] then
    local ok, err = pcall(subscripts[code], {key}, {unpack(args, a, last)})
    if not ok then
      failed = failed or (type(err) == 'table' and err.err) or tostring(err)
    end
  else
    failed = failed or ('unknown commit op ' .. code)
  end
  i = i + 1 + count
end
if failed then return redis.error_reply('commit applied but for: ' .. failed) end
return 1
"""


def _commit_lua() -> str:
    functions = ["local subscripts = {}"]
    for body, code in COMMIT_SUBSCRIPTS.items():
        functions.append(f"subscripts['{code}'] = function(KEYS, ARGV)\n{body.strip()}\nend")
    return _COMMIT_TEMPLATE.replace("%(functions)s", "\n".join(functions))


COMMIT_LUA = _commit_lua()
RAISE_FLOOR_LUA = """
local floor = tonumber(redis.call('GET', KEYS[1]) or '0')
if floor < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
"""Raise a floor (``KEYS[1]``) to a writer's generation (``ARGV[1]``), never lower it: two
processes starting at once leave the newer generation's floor."""
"""One commit's share of one group of keys (a whole batch on one server, one hash slot's on a
cluster), applied at most once: run atomically by the server, so a retry -- ours, or redis-py's
after a lost reply -- of a commit that already got through changes nothing.

``KEYS[1]`` the group's fence (``P:kw:fence:...``, see :meth:`~.keys.Keys.fence`): the sequence
number of the last commit of this writer applied to the group. ``KEYS[2]`` the group's floor
(``P:kw:floor...``, see :meth:`~.keys.Keys.floor`): the generation of the newest writer that
loaded the ledger states; a writer of an older generation is refused (``KWSTALE``) before anything
is written, so a command of a process that was replaced, delivered late, cannot add what its
successor counts again. ``KEYS[3..]`` every key the ops touch. ``ARGV[1]`` this commit's sequence
number, ``ARGV[2]`` the fence's expiry (s), ``ARGV[3]`` the writer's generation, then the ops,
each a head ``<code><key index (into KEYS)>:<argument count>`` and its arguments (codes:
:data:`COMMIT_OPS`, :data:`COMMIT_SUBSCRIPTS`); a count of 0: one argument follows, the op's
arguments joined by spaces (numbers and names without blanks: one string for redis-py to pack
instead of dozens, which is most of a commit's cost in Python).

If the fence already holds this number or a later one the group was applied (or a later commit
overtook this one, see docs/storage.md) and the script returns 0 without writing. Else it applies
every op and sets the fence: 1. A command that fails (a key of the wrong type) does not stop the
others -- a script cannot be rolled back, and stopping halfway would leave a part applied that a
retry would apply again -- and the fence is still set; the reply is then that command's error
(the retry that follows is a no-op). Out of memory, the first write fails and so does every later
one (Redis refuses a script's writes only until its first one succeeds): nothing is applied.
Long argument runs go to one command in chunks under Lua's ``unpack`` limit."""

_SEED_FUNCTIONS = """
local format = string.format
local function int(x) return format('%.0f', x) end
local function wh(mwh)
  local sign = ''
  if mwh < 0 then sign, mwh = '-', -mwh end
  local frac = mwh % 1000
  local text = sign .. format('%.0f', (mwh - frac) / 1000)
  if frac == 0 then return text end
  return (string.gsub(text .. format('.%03d', frac), '0+$', ''))
end
local function mwh(text)
  local wh_value = tonumber(text)
  if not wh_value then return '0' end
  return format('%.0f', math.floor(wh_value * 1000 + 0.5))
end
local function seed_add(key, di, de)
  if redis.call('HGET', key, 'kw') ~= '1' then return 0 end
  if redis.call('HEXISTS', key, 'kwi') == 0 then
    local old = redis.call('HMGET', key, 'hourly_energy_usage', 'hourly_ret_energy_usage')
    redis.call('HSET', key, 'kwi', mwh(old[1]), 'kwe', mwh(old[2]))
  end
  local imp = redis.call('HINCRBY', key, 'kwi', int(di))
  local exp = redis.call('HINCRBY', key, 'kwe', int(de))
  redis.call('HSET', key, 'hourly_energy_usage', wh(imp), 'hourly_ret_energy_usage', wh(exp))
  return 1
end
"""
"""Lua shared by the replacement scripts: ``int`` (a number as exact integer text: Redis turns a
Lua number into ``%.14g`` text), ``wh``/``mwh`` as in :data:`COMMIT_LUA`, and ``seed_add``: add
mWh to one of *our* seed hour hashes (marker ``kw``; an external or missing one is left alone:
its energy is not the channels')."""

REPLACE_LUA = (
    _SEED_FUNCTIONS
    + """
local zone, rep = ARGV[1], tonumber(ARGV[2])
if rep > 0 then
  local nonce = redis.call('HGET', KEYS[rep], '.nonce')
  if nonce then
    local out = {0, nonce}
    local h = redis.call('HGETALL', KEYS[rep])
    for i = 1, #h, 2 do
      if h[i] ~= '.nonce' then out[#out + 1] = h[i]; out[#out + 1] = h[i + 1] end
    end
    return out
  end
end
-- first every read: a key of the wrong type fails the script before anything is written
local todo = {}
for i = 5, #ARGV do
  local a = {}
  for word in string.gmatch(ARGV[i], '%S+') do a[#a + 1] = word end
  local s, f = KEYS[tonumber(a[1])], a[2]
  local got = redis.call('HMGET', s, f .. 'x', f, f .. 'e')
  if got[1] then
    a.di = tonumber(a[13]) - (tonumber(got[2]) or 0)
    a.de = tonumber(a[14]) - (tonumber(got[3]) or 0)
    todo[#todo + 1] = a
  end
end
local hours, hour_list, lds, seeds, seed_list = {}, {}, {}, {}, {}
for _, a in ipairs(todo) do
  local s, f, h = KEYS[tonumber(a[1])], a[2], KEYS[tonumber(a[3])]
  local hb, at = KEYS[tonumber(a[4])], a[5]
  local d, dat, est, slot = KEYS[tonumber(a[6])], a[7], KEYS[tonumber(a[8])], tonumber(a[9])
  local di, de = a.di, a.de
  redis.call('HSET', s, f, a[13], f .. 'e', a[14])
  redis.call('HDEL', s, f .. 'x')
  redis.call('ZREM', est, a[9])
  local i4 = 4 * tonumber(at)
  redis.call('HINCRBY', h, at, int(di))
  redis.call('HINCRBY', h, at .. 'e', int(de))
  redis.call('BITFIELD', hb, 'INCRBY', 'i64', '#' .. i4, int(di),
             'INCRBY', 'i64', '#' .. (i4 + 1), int(de))
  redis.call('HINCRBY', d, dat, int(di))
  redis.call('HINCRBY', d, dat .. 'e', int(de))
  local hour = slot - slot % 3600
  local hk = a[3] .. ' ' .. a[4] .. ' ' .. at .. ' ' .. a[8] .. ' ' .. int(hour)
  if not hours[hk] then hours[hk] = true; hour_list[#hour_list + 1] = {h, hb, at, est, hour} end
  local ld = a[10]
  if not lds[ld] then lds[ld] = {} end
  local day = lds[ld][a[11]]
  if not day then day = {0, 0}; lds[ld][a[11]] = day end
  day[1], day[2] = day[1] + di, day[2] + de
  if a[12] ~= '0' then
    local acc = seeds[a[12]]
    if not acc then acc = {0, 0}; seeds[a[12]] = acc; seed_list[#seed_list + 1] = a[12] end
    acc[1], acc[2] = acc[1] + di, acc[2] + de
  end
end
-- an hour stays estimated while another of its slots is (the index keeps the ones retention cut)
for _, x in ipairs(hour_list) do
  if redis.call('ZCOUNT', x[4], int(x[5]), int(x[5] + 3599)) == 0 then
    redis.call('HDEL', x[1], x[3] .. 'x')
    redis.call('BITFIELD', x[2], 'SET', 'i64', '#' .. (4 * tonumber(x[3]) + 3), 0)
  end
end
-- the local days as a commit keeps them (LD_ADD_LUA): another zone's, or none, is untrusted
for ld, days in pairs(lds) do
  local key = KEYS[tonumber(ld)]
  local z = redis.call('HGET', key, 'z')
  if zone == '' or (z and z ~= zone) then
    redis.call('HSET', key, 'z', '!')
  else
    if not z then redis.call('HSET', key, 'z', zone) end
    for name, sums in pairs(days) do
      redis.call('HINCRBY', key, name, int(sums[1]))
      redis.call('HINCRBY', key, name .. 'e', int(sums[2]))
    end
  end
  redis.call('HINCRBY', key, 'v', 1)
end
if rep == 0 then
  for _, name in ipairs(seed_list) do
    local sums = seeds[name]
    seed_add(KEYS[tonumber(name)], sums[1], sums[2])
  end
  return {#todo}
end
local out = {#todo, ARGV[3]}
if #seed_list > 0 then
  redis.call('HSET', KEYS[rep], '.nonce', ARGV[3])
  for _, name in ipairs(seed_list) do
    local sums = seeds[name]
    local value = int(sums[1]) .. ' ' .. int(sums[2])
    redis.call('HSET', KEYS[rep], name, value)
    out[#out + 1] = name
    out[#out + 1] = value
  end
  redis.call('EXPIRE', KEYS[rep], tonumber(ARGV[4]))
end
return out
"""
)
"""Measured energy for the estimated slots of one group of channels (all of a device's on one
server, with its seed hour hashes; one channel on a cluster), atomically: a slot's "is it
estimated" is read in the same script that replaces it.

``ARGV[1]`` the zone whose local days the process keeps (empty: none), ``ARGV[2]`` the index in
``KEYS`` of the channel's replay record (0 on one server: the seed hashes are in ``KEYS`` and
written here), ``ARGV[3]`` a fresh nonce, ``ARGV[4]`` the record's expiry (s), then one argument
per slot: ``s f h hb at d dat est slot ld lday seed imp exp`` -- the ``KEYS`` indexes of its
slot-day hash, hour hash, hour columns, day hash, estimated set and local-day hash, with its field
in each (``f``, ``at``, ``dat``, ``lday``), its start, its seed (a ``KEYS`` index on one server,
the hour on a cluster, ``0``: none) and its measured import and export mWh.

A slot whose ``<f>x`` is set takes the amounts, loses the mark and leaves the estimated set; the
hour, its columns, the day, the local day and the seed hour take the difference; the hour's mark
goes when no slot of it is left in the estimated set. Returns ``{slots replaced}`` on one server.
On a cluster the seed hours live in other hash slots: the differences are kept in the replay
record (``.nonce`` and ``<hour> = "di de"``) and returned, ``{replaced, nonce, hour, "di de",
...}``, for :data:`SEED_ADD_LUA` to apply; while the record exists the script only returns it
(``replaced`` 0), so a retry after a lost reply finishes the seed hours and replaces nothing
twice."""

SEED_ADD_LUA = (
    _SEED_FUNCTIONS
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
seed_add(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
redis.call('SET', KEYS[2], 1, 'EX', tonumber(ARGV[3]))
return 1
"""
)
"""Add a replacement's difference (``ARGV[1]`` import, ``ARGV[2]`` export mWh) to a seed hour
hash (``KEYS[1]``) once: ``KEYS[2]`` is a fence beside it (same hash slot) named by the replay's
nonce, kept ``ARGV[3]`` seconds."""

REPLAY_DONE_LUA = """
if redis.call('HGET', KEYS[1], '.nonce') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
"""Drop a channel's replay record (``KEYS[1]``) once its seed hours are done, if it is still the
one of nonce ``ARGV[1]``."""

_AUDIT_DROP_FUNCTION = """
local function drop(ids)
  for _, id in ipairs(ids) do
    local body = redis.call('HGET', KEYS[1], id)
    if body then
      local ok, entry = pcall(cjson.decode, body)
      if ok and type(entry) == 'table' and type(entry.devices) == 'table' then
        for _, device in ipairs(entry.devices) do
          redis.call('ZREM', ARGV[2] .. tostring(device), id)
        end
      end
    end
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
"""

AUDIT_ADD_LUA = (
    _AUDIT_DROP_FUNCTION
    + """
local i, added = 3, 0
while i <= #ARGV do
  local id, ts, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 4])
  if redis.call('HSETNX', KEYS[1], id, ARGV[i + 3]) == 1 then
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    redis.call('ZADD', KEYS[2], ts, id)
    for d = 1, n do redis.call('ZADD', ARGV[2] .. ARGV[i + 4 + d], ts, id) end
    added = added + 1
  end
  i = i + 5 + n
end
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if added > 0 and over > 0 then drop(redis.call('ZRANGE', KEYS[2], 0, over - 1)) end
return added
"""
)
"""Append audit entries atomically, each at most once (by id). ``KEYS``: the entries hash (id ->
JSON), the time index (sorted set, score = ts) and the actions hash (id -> action), all in the
hash tag ``{kw:audit}``. ``ARGV[1]`` how many entries to keep, ``ARGV[2]`` the head of the
per-device indexes (``<head><device>``: sorted sets in the same hash tag), then per entry ``id ts
action json n device1 .. devicen``. An id stored already is skipped; then the oldest entries
beyond the bound go, from every index (their devices read from their JSON). Returns how many
were added."""

AUDIT_DROP_LUA = (
    _AUDIT_DROP_FUNCTION
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[3])
drop(ids)
return #ids
"""
)
"""Retention of the audit log: at most ``ARGV[3]`` entries older than ``ARGV[1]`` deleted, oldest
first (``KEYS`` and ``ARGV[2]`` as in :data:`AUDIT_ADD_LUA`); returns how many (call again while
it returns ``ARGV[3]``)."""

AUDIT_READ_LUA = """
local out, offset, page = {}, 0, 500
local limit, wanted, action = tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local dotted = action .. '.'
while #out < limit do
  local ids = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[1], '-inf', 'LIMIT', offset, page)
  if #ids == 0 then break end
  offset = offset + #ids
  local keep = ids
  if wanted then
    local actions = redis.call('HMGET', KEYS[3], unpack(ids))
    keep = {}
    for k = 1, #ids do
      local a = actions[k]
      if a and (a == action or string.sub(a, 1, #dotted) == dotted) then
        keep[#keep + 1] = ids[k]
      end
    end
  end
  if #keep > 0 then
    local bodies = redis.call('HMGET', KEYS[1], unpack(keep))
    for k = 1, #keep do
      if bodies[k] and #out < limit then out[#out + 1] = bodies[k] end
    end
  end
end
return out
"""
"""The newest audit entries (JSON), newest first: ``KEYS`` the entries hash, the index to walk
(the time index, or a device's) and the actions hash; ``ARGV[1]`` the highest score (``+inf`` or
``(<before>``), ``ARGV[2]`` how many at most, ``ARGV[3]`` ``1`` to keep only the action
``ARGV[4]`` and those below it (``fleet`` keeps ``fleet.adopt``). Walks the index in pages of 500
in one atomic call: a filter on a rare action reads at most the whole (bounded) log."""

LIST_DROP_LUA = """
local cut = tonumber(ARGV[1])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local keep, dropped = {}, 0
for i = 1, #items do
  local ok, item = pcall(cjson.decode, items[i])
  if ok and type(item) == 'table' and type(item.ts) == 'number' and item.ts < cut then
    dropped = dropped + 1
  else
    keep[#keep + 1] = items[i]
  end
end
if dropped > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
return dropped
"""
"""Retention of an event or log list (``KEYS[1]``, newest first, at most 10 000 items): the items
older than ``ARGV[1]`` removed wherever they are (a device's backlog arrives late, so a list is not
in time order), the others kept in their order; an item that cannot be read is kept. Returns how
many went."""
