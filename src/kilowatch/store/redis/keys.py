"""Key names and layout of the Redis store; the full table is in docs/storage.md.

``P`` is the URL's ``?prefix=`` (default ``energy``, the seed's):

- ``P:kw:{D|C}:s:<utc day start>`` hash per channel and UTC day: field ``<n>`` = import mWh of the
  day's slot ``n`` (0..95), ``<n>e`` = export mWh, ``<n>x`` = ``1`` when estimated, ``<n>c`` the
  deltas added (> 0: the slot has data).
- ``P:kw:{D|C}:h:<utc month start>`` hash per channel and UTC month: the same per UTC hour (``n`` =
  hour of the month), kept in the same transaction; read by day/month decompositions and
  local-day rebuilds.
- ``P:kw:{D|C}:hb:<utc month start>`` string per channel and UTC month: the same hours packed as
  signed 64-bit big-endian integers, four per hour ``n`` (``#4n`` import, ``#4n+1`` export,
  ``#4n+2`` deltas, ``#4n+3`` 1 when estimated), written by ``BITFIELD`` in the same transaction
  as the hour hash; read by queries whose buckets are whole UTC hours (see
  :mod:`kilowatch.store.redis.columns` for stores written before they existed, and
  ``P:kw:format``).
- ``P:kw:{D|C}:d:<utc year start>`` hash per channel and UTC year: ``n``, ``ne``, ``nc`` per day.
- ``P:kw:{D|C}:ld`` hash per channel: energy per local day ``L`` of the site's zone (``L``,
  ``Le``, ``Lc``), ``z`` the zone of its days, ``v`` a version every commit bumps; with
  ``P:kw:localdays`` (``zone``, ``ready``) naming the zone for every process. Day and month
  queries in that zone over whole local days read one script per channel (or per 250 channels
  on one server) instead of UTC day rows corrected by hours. See
  :mod:`kilowatch.store.redis.localdays`.
- ``P:kw:{D|C}:rep:<sha1>`` a cluster's replay record of a replacement of estimated slots
  (:mod:`.repair`), until the seed hours took its differences.
- ``P:kw:{D|C}:ledger`` the channel's ledger state (JSON). ``{D|C}`` is a hash tag: on a cluster one
  channel's energy, local days and ledger state live in one slot and are committed in one
  MULTI/EXEC.
- ``P:<MAC>_<hour start>`` the seed's hourly hash (``fw_ver``, ``hourly_energy_usage``,
  ``hourly_ret_energy_usage``, ``id``, ``mac``, ``operational``, ``timestamp``) plus our marker
  field ``kw``; ``device:<MAC>`` the seed's device hash.
- ``P:kw:device:{D}:registry`` hash per registered device: the fleet registry's fields (``script``
  as JSON), in the device's hash slot; ``P:kw:registry`` the set of registered ids. With them the
  seed's ``device:<MAC>`` (``id``, ``mac``, ``model``, ``gen``, ``fw_ver``, ``app``, ``name``,
  ``address``, ``prefix``, ``room``) and ``script:<MAC>`` (``name``, ``version``, ``sha256``,
  ``script_id``, ``deployed_at``, ``id``), without the prefix (see :mod:`.registry`).
- ``P:kw:seed`` sorted set indexing hourly hashes written by someone else (an EMQX sink): member
  ``<device id>\\t<key>``, score = hour start (see :mod:`kilowatch.store.redis.seed`).
- ``P:kw:power:{D}:<channel>:<yyyymmdd>`` string per channel and UTC day: the minute means of
  power packed as signed 64-bit big-endian integers, two per minute ``n`` of the day (``#2n`` the
  mean in mW, ``#2n+1`` the samples; 0: no value), written by ``BITFIELD SET`` in the commit
  (values replace), expiring :data:`~kilowatch.store.records.POWER_TTL_S` after its last write;
  ``P:kw:power:{D}`` the set of the device's channels with power. In the device's hash tag.
- ``P:kw:{kw:audit}:entries`` hash id -> JSON of the audit log, ``P:kw:{kw:audit}:ts`` sorted set
  of ids by time, ``P:kw:{kw:audit}:actions`` hash id -> action, ``P:kw:{kw:audit}:device:<D>``
  sorted set of a device's ids by time: one hash tag, so a script writes them atomically on a
  cluster too.
- ``P:kw:fence:<lane>`` (one server) or ``P:kw:fence:{<tag>}:<lane>`` (a cluster: one per hash
  slot, ``<tag>`` a hash tag of that slot) the sequence number of the last commit of the writer
  ``<lane>`` applied there; expires a day after that commit (see :data:`~.lua.COMMIT_LUA`).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from kilowatch.model.slots import SLOT_SECONDS
from kilowatch.query.periods import Plan

DAY = 86400
MARKER = "kw"
"""Field kilowatch adds to the seed hashes it writes, so the index knows they are ours."""
SEP = "\t"
"""Between device and channel (or device and key) in the members of kilowatch's sets."""


class Keys:
    """The names of the store's keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seed_re = re.compile(re.escape(prefix) + r":([0-9A-Fa-f]{12})_(\d+)$")
        """A seed hourly hash key; groups: the MAC and the hour start."""

    def kw(self, *parts: str) -> str:
        """``P:kw:<parts joined by :>``."""
        return ":".join((self.prefix, "kw", *parts))

    def chan(self, device: str, channel: str) -> str:
        """The head of a channel's keys, ``P:kw:{D|C}`` (its hash tag: one cluster slot)."""
        return self.kw("{" + device + "|" + channel + "}")

    def ld(self, device: str, channel: str) -> str:
        """The channel's local-day hash (in its hash tag: written in its commit transaction)."""
        return self.chan(device, channel) + ":ld"

    def dev(self, device: str) -> str:
        """The device record hash ``P:kw:device:{D}`` (the head of the device's other keys)."""
        return self.kw("device", "{" + device + "}")

    def registration(self, device: str) -> str:
        """The fleet registry's hash of ``device``, ``P:kw:device:{D}:registry``."""
        return self.dev(device) + ":registry"

    def power_channels(self, device: str) -> str:
        """The set of ``device``'s channels with power minutes, ``P:kw:power:{D}``."""
        return self.kw("power", "{" + device + "}")

    def power_day(self, device: str, channel: str, day: int) -> str:
        """A channel's power minutes of the UTC day starting at ``day``,
        ``P:kw:power:{D}:<channel>:<yyyymmdd>``."""
        return f"{self.power_channels(device)}:{channel}:{utc_date(day)}"

    def audit(self, part: str) -> str:
        """A key of the audit log, ``P:kw:{kw:audit}:<part>`` (``entries``, ``ts``, ``actions``,
        ``device:<D>``)."""
        return self.kw("{kw:audit}", part)

    def seed_key(self, mac: str, hour: int) -> str:
        """The seed's hourly hash key ``<prefix>:<MAC>_<hour start>``."""
        return f"{self.prefix}:{mac}_{hour}"

    def floor(self, slot: int | None = None) -> str:
        """The writer floor: ``P:kw:floor`` on one server, ``P:kw:floor:{<tag>}`` in hash slot
        ``slot`` of a cluster (see :meth:`~.writes.Writer.claim`)."""
        if slot is None:
            return self.kw("floor")
        return self.kw("floor", "{" + slot_tag(slot) + "}")

    def fence(self, lane: str, slot: int | None = None) -> str:
        """The commit fence of writer ``lane``: ``P:kw:fence:<lane>`` on one server, or in hash
        slot ``slot`` of a cluster ``P:kw:fence:{<tag>}:<lane>``."""
        if slot is None:
            return self.kw("fence", lane)
        return self.kw("fence", "{" + slot_tag(slot) + "}", lane)


def seed_device_key(mac: str) -> str:
    """The seed's device hash ``device:<MAC>`` (no prefix: the seed's tools read it so)."""
    return f"device:{mac}"


def seed_script_key(mac: str) -> str:
    """The seed's hash of the script deployed to a device, ``script:<MAC>`` (no prefix)."""
    return f"script:{mac}"


_SLOT_TAGS: list[str] = []


def slot_tag(slot: int) -> str:
    """A short hash tag whose keys live in cluster hash slot ``slot``.

    The table of all 16 384 is built on first use, from the decimal numbers in order (about
    170 000 CRC16s, ~0.1 s): any key of a slot can be given a fence beside it."""
    if not _SLOT_TAGS:
        table: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
        while missing:
            tag = str(n)
            at = key_slot(tag.encode())
            if table[at] is None:
                table[at] = tag
                missing -= 1
            n += 1
        _SLOT_TAGS.extend(t for t in table if t is not None)
    return _SLOT_TAGS[slot]


def key_text(raw: bytes | str) -> str:
    """A key as SCAN returns it, as text."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN ``MATCH`` pattern (device ids may hold ``[*?``)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


@functools.lru_cache(maxsize=64)
def utc_date(day: int) -> str:
    """``yyyymmdd`` of the UTC day of unix time ``day``."""
    return datetime.fromtimestamp(day, UTC).strftime("%Y%m%d")


def year_start(ts: int) -> int:
    return int(datetime(datetime.fromtimestamp(ts, UTC).year, 1, 1, tzinfo=UTC).timestamp())


def month_start(ts: int) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def bases(p: Plan, step: int) -> list[int]:
    """Start of every UTC day (slot resolution) or UTC month (hour resolution) the range touches."""
    if step == SLOT_SECONDS:
        return list(range(p.start - p.start % DAY, p.end, DAY))
    out = []
    t = month_start(p.start)
    while t < p.end:
        out.append(t)
        t = month_start(t + 32 * DAY)
    return out


def rollup_field(t: int, level: int) -> tuple[str, str]:
    """The rollup hash (key suffix) and field that hold the ``level``-long bucket starting at ``t``:
    days in per-year hashes, hours in per-month hashes, slots in per-day hashes."""
    if level == DAY:
        base, kind = year_start(t), "d"
    elif level == 3600:
        base, kind = month_start(t), "h"
    else:
        base, kind = t - t % DAY, "s"
    return f"{kind}:{base}", str((t - base) // level)
