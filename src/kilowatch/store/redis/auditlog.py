"""The audit log on Redis: an entries hash, a time index, an actions hash and one index per
device, all in the hash tag ``{kw:audit}`` (see :mod:`.keys`), each write one atomic script."""

from __future__ import annotations

from collections.abc import Sequence

from kilowatch.store import records
from kilowatch.store.protocol import AuditEntry
from kilowatch.store.redis.connection import Connection
from kilowatch.store.redis.lua import AUDIT_ADD_LUA, AUDIT_DROP_LUA, AUDIT_READ_LUA

DROP_PER_CALL = 1000
"""Entries one retention script call deletes (it is called again while there are more)."""


class AuditLog:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        k = conn.keys
        self._keys = [k.audit("entries"), k.audit("ts"), k.audit("actions")]
        self._device_head = k.audit("device:")

    async def append(self, entries: Sequence[AuditEntry]) -> int:
        """Add the entries whose id is new (one script call); how many were added."""
        checked = records.audit_check(entries)  # UnstorableError before anything is sent
        if not checked:
            return 0
        argv: list[object] = [records.AUDIT_ENTRIES, self._device_head]
        for entry, raw in checked:
            devices = list(dict.fromkeys(entry.devices))
            argv += [entry.id, repr(float(entry.ts)), entry.action, raw, len(devices), *devices]
        conn = self._conn
        added = await conn.call(
            "cannot append to the audit log",
            conn.client.eval(AUDIT_ADD_LUA, len(self._keys), *self._keys, *argv),
        )
        return int(added)

    async def newest(
        self, limit: int, device: str | None, action: str | None, before: float | None
    ) -> list[AuditEntry]:
        if limit <= 0:
            return []
        index = self._keys[1] if device is None else self._device_head + device
        keys = [self._keys[0], index, self._keys[2]]
        top = "+inf" if before is None else f"({float(before)!r}"
        wanted = "0" if action is None else "1"
        conn = self._conn
        raws = await conn.call(
            "cannot read the audit log",
            conn.client.eval(AUDIT_READ_LUA, 3, *keys, top, limit, wanted, action or ""),
        )
        return [records.audit_loads(raw) for raw in raws]

    async def drop_before(self, cut: float) -> int:
        """Retention: the entries older than ``cut`` deleted; how many."""
        conn = self._conn
        dropped = 0
        while True:
            n = int(
                await conn.call(
                    "cannot drop old audit entries",
                    conn.client.eval(
                        AUDIT_DROP_LUA, 3, *self._keys, repr(float(cut)), self._device_head,
                        DROP_PER_CALL,
                    ),
                )
            )  # fmt: skip
            dropped += n
            if n < DROP_PER_CALL:
                return dropped


__all__ = ["AuditLog"]
