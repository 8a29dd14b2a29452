"""The fleet registry on Redis: a hash per registered device, ``P:kw:device:{D}:registry``, the
set of registered ids ``P:kw:registry``, and the seed's own keys, without the prefix:
``device:<MAC>`` (the device's info) and ``script:<MAC>`` (the script deployed to it).

The rules (what may be stored, how a registration merges) are :mod:`kilowatch.store.registry`'s.
A call reads what is stored in one pipelined round trip, merges in Python, and writes everything
in a second one: MULTI/EXEC on one server (all or nothing), a plain pipeline on a cluster, where
the seed keys live in other hash slots than the registry hash (each command is atomic on its
own; registering the same records again completes a call that failed midway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kilowatch.errors import UnstorableError
from kilowatch.store import registry
from kilowatch.store.protocol import Registration
from kilowatch.store.redis.connection import Connection
from kilowatch.store.redis.keys import seed_device_key, seed_script_key


class Registry:
    """Reads and writes the fleet registry of one Redis store."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._keys = conn.keys

    @property
    def _index(self) -> str:
        return self._keys.kw("registry")

    async def register(self, regs: Sequence[Registration]) -> None:
        """Merge ``regs`` into what is stored (see :meth:`Store.register`), with the seed's
        ``device:<MAC>`` and ``script:<MAC>`` hashes. :class:`UnstorableError` before anything
        is written for a record that cannot be stored."""
        registry.check(regs)
        if not regs:
            return
        ids = sorted({r.device for r in regs})
        stored = await self._read(ids)
        merged = dict(stored)
        cleared: dict[str, set[str]] = {d: set() for d in ids}
        for reg in regs:  # in order: a device named twice ends as the last one says
            merged[reg.device] = registry.merge(merged.get(reg.device), reg)
            cleared[reg.device].update(registry.cleared_seed_fields(reg))
        conn = self._conn
        pipe = conn.client.pipeline(transaction=not conn.is_cluster)
        for device in ids:
            reg = merged[device]
            key = self._keys.registration(device)
            pipe.delete(key)  # rewritten whole: a cleared field goes
            pipe.hset(key, mapping={"device": device, **registry.to_fields(reg)})
            self._seed_writes(pipe, stored.get(device), reg, cleared[device])
        pipe.sadd(self._index, *ids)
        await conn.call("cannot write the fleet registry", pipe.execute())

    def _seed_writes(
        self, pipe: Any, old: Registration | None, reg: Registration, cleared: set[str]
    ) -> None:
        """The seed keys of ``reg``, moved when its MAC changed (one command per key: on a
        cluster they are in different hash slots)."""
        mac = registry.seed_mac(reg)
        before = registry.seed_mac(old) if old is not None else None
        if before is not None and before != mac:
            pipe.delete(seed_device_key(before))
            pipe.delete(seed_script_key(before))
        if mac is None:
            return  # neither a MAC nor a Shelly id: the seed layout cannot name this device
        device_key = seed_device_key(mac)
        pipe.hset(device_key, mapping=registry.seed_device_fields(reg, mac))
        if cleared:
            pipe.hdel(device_key, *sorted(cleared))
        if reg.script is not None:
            script_key = seed_script_key(mac)
            pipe.delete(script_key)
            pipe.hset(script_key, mapping=registry.seed_script_fields(reg.device, reg.script))

    async def unregister(self, device: str) -> bool:
        """Delete ``device``'s registration and its seed keys; whether it was registered. Its
        energy and device record stay."""
        try:
            registry.check_device_id(device)
        except UnstorableError:
            return False  # no such id can be registered
        stored = (await self._read([device])).get(device)
        conn = self._conn
        pipe = conn.client.pipeline(transaction=not conn.is_cluster)
        pipe.delete(self._keys.registration(device))
        pipe.srem(self._index, device)
        mac = registry.seed_mac(stored) if stored is not None else None
        if mac is not None:
            pipe.delete(seed_device_key(mac))
            pipe.delete(seed_script_key(mac))
        deleted, removed, *_ = await conn.call("cannot unregister a device", pipe.execute())
        return bool(deleted or removed)

    async def all(self) -> list[Registration]:
        """Every registration, by device id."""
        conn = self._conn
        members = await conn.call(
            "cannot read the fleet registry", conn.client.smembers(self._index)
        )
        found = await self._read(sorted(m.decode() for m in members))
        return [found[d] for d in sorted(found)]

    async def get(self, device: str) -> Registration | None:
        return (await self._read([device])).get(device)

    async def _read(self, ids: list[str]) -> dict[str, Registration]:
        """The stored registrations of ``ids`` (one pipelined round trip); absent ones left out."""
        conn = self._conn
        got = await conn.call(
            "cannot read the fleet registry",
            conn.pipeline_read([("hgetall", self._keys.registration(d), ()) for d in ids]),
        )
        out: dict[str, Registration] = {}
        for device, raw in zip(ids, got, strict=True):
            if raw:
                values = {k.decode(): v for k, v in raw.items()}
                out[device] = registry.from_fields(device, values)
        return out


__all__ = ["Registry"]
