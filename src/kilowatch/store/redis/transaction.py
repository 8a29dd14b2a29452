"""A commit's commands and their MULTI/EXEC: one on a server, one per hash slot on a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.crc import key_slot

from kilowatch.store.redis.connection import Command, Connection


class Ops:
    """Commands of one commit, remembered with their key so a cluster can group them by slot."""

    def __init__(self) -> None:
        self.items: list[Command] = []

    def __call__(self, method: str, key: str, *args: Any) -> None:
        self.items.append((method, key, args))


async def execute(conn: Connection, ops: Ops) -> None:
    """Run ``ops`` atomically: the whole batch in one MULTI/EXEC on a server; on a cluster one
    per hash slot (a channel's energy and ledger state share a slot), at most
    :data:`~.connection.TRANSACTIONS_IN_FLIGHT` at once. A slot whose transaction failed does not
    stop the others (each is atomic on its own); the first error is raised once all ended."""
    client = conn.client
    if not ops.items:
        return
    if not conn.is_cluster:
        await _exec_group(client, ops.items)
        return
    groups: dict[int, list[Command]] = {}
    for item in ops.items:
        groups.setdefault(key_slot(item[1].encode()), []).append(item)

    async def bounded(group: list[Command]) -> None:
        async with conn.transactions:
            await _exec_group(client, group)

    # every slot's transaction is awaited, even after one failed (as gather without
    # return_exceptions did not: it left the rest running unowned); then the first error
    results = await asyncio.gather(*(bounded(g) for g in groups.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _exec_group(client: Any, items: Iterable[Command]) -> None:
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
