"""A commit's commands, and how they reach the server: one atomic, idempotent script call
(:data:`~.lua.COMMIT_LUA`) for the whole batch on a server, one per hash slot on a cluster."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.crc import key_slot

from kilowatch.store.redis.connection import Command, Connection
from kilowatch.store.redis.lua import COMMIT_LUA, COMMIT_MERGEABLE, COMMIT_OPS, COMMIT_SUBSCRIPTS

FENCE_TTL_S = 86400
"""A fence expires this long after the last commit that set it: a command delayed longer than
that (TCP gives up on a connection within ~15 minutes) would be applied again."""
COMMIT_SHA = hashlib.sha1(COMMIT_LUA.encode()).hexdigest()
"""The name Redis gives :data:`~.lua.COMMIT_LUA` (``EVALSHA``)."""


class Ops:
    """Commands of one commit, remembered with their key so a cluster can group them by slot.

    ``op(method, key, *args)`` with ``method`` one of :data:`~.lua.COMMIT_OPS` (as redis-py
    names them; ``hset`` and ``zadd`` also take a mapping as their last argument), or ``eval``
    of a script of :data:`~.lua.COMMIT_SUBSCRIPTS` (``op("eval", key, script, *argv)``)."""

    def __init__(self) -> None:
        self.items: list[Command] = []

    def __call__(self, method: str, key: str, *args: Any) -> None:
        self.items.append((method, key, args))


def encode(
    fence: str, floor: str, items: Sequence[Command], seq: int, generation: int
) -> tuple[list[str], list[Any]]:
    """``KEYS`` and ``ARGV`` of :data:`~.lua.COMMIT_LUA` for ``items`` behind ``fence``.

    An op on the same key and of a mergeable kind as the one before it joins it; an op whose
    arguments are all numbers or names without blanks goes as one string (count 0)."""
    index: dict[str, int] = {fence: 1, floor: 2}
    keys = [fence, floor]
    ops: list[tuple[str, int, list[Any]]] = []
    last_code, last_key = "", ""
    for method, key, args in items:
        code, flat = _flatten(method, args)
        if code == last_code and key == last_key and code in COMMIT_MERGEABLE:
            ops[-1][2].extend(flat)
            continue
        at = index.get(key)
        if at is None:
            at = index[key] = len(keys) + 1
            keys.append(key)
        ops.append((code, at, flat))
        last_code, last_key = code, key
    argv: list[Any] = [seq, FENCE_TTL_S, generation]
    for code, at, flat in ops:
        if not flat or _joinable(flat):  # no arguments: an empty string of them
            argv += (f"{code}{at}:0", " ".join(map(str, flat)))
        else:
            argv.append(f"{code}{at}:{len(flat)}")
            argv += flat
    return keys, argv


_BLANK = re.compile(r"\s")


def _joinable(args: Sequence[Any]) -> bool:
    """Whether Lua's ``gmatch('%S+')`` gives ``args`` back from them joined by spaces: numbers,
    and strings that are not empty and hold no whitespace (Python's ``\\s`` is wider than
    Lua's: a string it refuses is merely sent on its own)."""
    for arg in args:
        if isinstance(arg, str):
            if not arg or _BLANK.search(arg):
                return False
        elif isinstance(arg, bool) or not isinstance(arg, int | float):
            return False
    return bool(args)


def _flatten(method: str, args: tuple[Any, ...]) -> tuple[str, list[Any]]:
    if method == "eval":
        return COMMIT_SUBSCRIPTS[args[0]], list(args[1:])
    code = COMMIT_OPS[method]
    if args and isinstance(args[-1], dict):
        mapping: dict[Any, Any] = args[-1]
        pairs = list(args[:-1])
        for name, value in mapping.items():
            pairs += (value, name) if code == "Z" else (name, value)  # ZADD: score first
        return code, pairs
    return code, list(args)


async def execute(conn: Connection, ops: Ops, *, lane: str, seq: int, generation: int = 0) -> None:
    """Apply ``ops`` as commit number ``seq`` of writer ``lane``, each group at most once.

    On a server the whole batch is one script call; on a cluster one per hash slot (a channel's
    energy and ledger state share a slot), at most :data:`~.connection.TRANSACTIONS_IN_FLIGHT` at
    once. A slot whose call failed does not stop the others (each is atomic on its own, and
    fenced: committing the batch again applies only the slots that did not get it); the first
    error is raised once all ended."""
    if not ops.items:
        return
    if not conn.is_cluster:
        await _run(conn, conn.keys.fence(lane), conn.keys.floor(), ops.items, seq, generation)
        return
    groups: dict[int, list[Command]] = {}
    for item in ops.items:
        groups.setdefault(key_slot(item[1].encode()), []).append(item)

    async def bounded(slot: int, group: list[Command]) -> None:
        async with conn.transactions:
            fence, floor = conn.keys.fence(lane, slot), conn.keys.floor(slot)
            await _run(conn, fence, floor, group, seq, generation)

    # every slot's call is awaited, even after one failed; then the first error
    results = await asyncio.gather(
        *(bounded(slot, g) for slot, g in groups.items()), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _run(
    conn: Connection, fence: str, floor: str, items: Sequence[Command], seq: int, generation: int
) -> None:
    keys, argv = encode(fence, floor, items, seq, generation)
    client = conn.client
    try:
        await client.evalsha(COMMIT_SHA, len(keys), *keys, *argv)
    except redis_errors.NoScriptError:
        # a node that never saw it, or restarted: load it (on every primary of a cluster) and
        # call it again. NOSCRIPT means nothing ran, and the call is fenced anyway
        await client.script_load(COMMIT_LUA)
        await client.evalsha(COMMIT_SHA, len(keys), *keys, *argv)
