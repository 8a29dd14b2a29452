"""A TCP proxy that breaks a Redis connection on purpose, for the tests of what a commit does when
its outcome is unknown.

It sits between a client and one redis-server (one proxy per node of a cluster), forwards bytes
both ways and follows the RESP protocol in both directions, so it knows which reply answers which
command. Faults (each armed by a method, each counted in :attr:`FaultProxy.fired` when it
happens):

- :meth:`~FaultProxy.drop_reply`: the next command with one of the given names is forwarded and
  runs; once the server's reply to it is complete, the reply is swallowed and the client's
  connection cut (replies to earlier commands reach the client first). The client cannot tell
  whether the command ran.
- :meth:`~FaultProxy.cut_after`: after ``n`` more bytes from clients (counted over all the
  proxy's connections), the connection that carries them is cut mid-stream: a command split by
  the cut never reaches the server whole.
- :meth:`~FaultProxy.stall`: nothing moves in either direction for ``seconds`` (on every
  connection, or only on those open now, so a client that reconnects gets through at once);
  what clients sent meanwhile still reaches the server afterwards, even from a client that gave
  up and closed its connection: a late command, as a slow network delivers it.
  :meth:`~FaultProxy.settled` waits until every held byte went on.
- :meth:`~FaultProxy.refuse`: the node is down: every connection is cut and new ones are closed
  at once, until :meth:`~FaultProxy.heal`.

Loopback only; used by tests (tests/store/test_commit_faults.py), never by kilowatch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

CHUNK = 65536
"""Bytes read from a socket at once."""
_LINE_TYPES = frozenset(b"+-:_,#(")
"""RESP types whose value is the rest of the line (simple string, error, integer, RESP3 null,
double, boolean, big number)."""
_BULK_TYPES = frozenset(b"$=!")
"""RESP types followed by a length and that many bytes (bulk string, verbatim string, bulk
error)."""
_AGGREGATE_TYPES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2}
"""RESP aggregate types and how many values each of their count stands for (a map: two)."""
_RESP_FIRST = frozenset(b"*$+-:_,#(=!~>%|")
"""First bytes of a RESP value: anything else starts an inline command."""


def _line_end(buf: bytes | bytearray, pos: int) -> int | None:
    end = buf.find(b"\r\n", pos)
    return None if end < 0 else end


def resp_value_end(buf: bytes | bytearray, pos: int) -> int | None:
    """Where the RESP value starting at ``buf[pos]`` ends (the index after it), or ``None`` if
    ``buf`` does not hold all of it yet. RESP2 and RESP3; an attribute (``|``) is skipped along
    with the value it annotates."""
    if pos >= len(buf):
        return None
    kind = buf[pos]
    end = _line_end(buf, pos)
    if end is None:
        return None
    if kind in _LINE_TYPES:
        return end + 2
    size = int(buf[pos + 1 : end])
    if kind in _BULK_TYPES:
        if size < 0:
            return end + 2
        stop = end + 2 + size + 2
        return stop if stop <= len(buf) else None
    if kind == ord("|"):
        at: int | None = end + 2
        for _ in range(2 * size + 1):  # the attribute's pairs, then the value itself
            assert at is not None
            at = resp_value_end(buf, at)
            if at is None:
                return None
        return at
    per = _AGGREGATE_TYPES.get(kind)
    if per is None:
        raise ValueError(f"not RESP: type byte {bytes([kind])!r} at {pos}")
    at = end + 2
    for _ in range(max(size, 0) * per):
        nxt = resp_value_end(buf, at)
        if nxt is None:
            return None
        at = nxt
    return at


def command_name(buf: bytes | bytearray, pos: int, end: int) -> str:
    """The upper-case name of the command ``buf[pos:end]`` (a RESP array of bulk strings, or an
    inline command)."""
    if buf[pos] != ord("*"):
        return bytes(buf[pos:end]).split(None, 1)[0].decode(errors="replace").upper()
    head = _line_end(buf, pos)
    assert head is not None
    size_end = _line_end(buf, head + 2)
    assert size_end is not None
    size = int(buf[head + 3 : size_end])
    return bytes(buf[size_end + 2 : size_end + 2 + size]).decode(errors="replace").upper()


def _value_end(buf: bytes | bytearray, pos: int) -> int | None:
    """:func:`resp_value_end`, or the end of an inline command's line."""
    if buf[pos] in _RESP_FIRST:
        return resp_value_end(buf, pos)
    end = _line_end(buf, pos)
    return None if end is None else end + 2


class _Stream:
    """One direction of one connection, cut into whole RESP values as its bytes arrive."""

    def __init__(self, *, named: bool) -> None:
        self.named = named
        self.buf = bytearray()
        self.base = 0
        """Stream offset of ``buf[0]``: where the value not yet complete starts."""
        self.count = 0
        """Whole values seen so far: the index of the next one."""

    def feed(self, data: bytes) -> list[tuple[int, int, str]]:
        """Add ``data``; every value it completes, as ``(index, start offset, command name)``
        (the name only when ``named``)."""
        self.buf += data
        out = []
        pos = 0
        while pos < len(self.buf):
            end = _value_end(self.buf, pos)
            if end is None:
                break
            name = command_name(self.buf, pos, end) if self.named else ""
            out.append((self.count, self.base + pos, name))
            self.count += 1
            pos = end
        del self.buf[:pos]
        self.base += pos
        return out


class _Link:
    """One client connection and its own connection to the server."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.commands = _Stream(named=True)
        self.replies = _Stream(named=False)
        self.doomed: set[int] = set()
        """Indexes of the commands whose reply is swallowed (and the link cut)."""
        self.cut = False
        self.flowing = asyncio.Event()
        """Cleared while the link is stalled."""
        if not proxy.stalling_new:
            self.flowing.set()

    def close(self) -> None:
        self.cut = True
        for writer in (self.client_writer, self.server_writer):
            with contextlib.suppress(Exception):
                writer.close()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._upstream())
                tg.create_task(self._downstream())
        finally:
            self.close()

    async def _upstream(self) -> None:
        """Client to server: commands named and counted, a cut's byte budget spent."""
        proxy = self.proxy
        try:
            while data := await self.client_reader.read(CHUNK):
                async with proxy.holding():
                    await self.flowing.wait()
                if self.cut:
                    return
                budget = proxy.cut_budget
                if budget is not None and len(data) >= budget:
                    proxy.cut_budget = None
                    proxy.fired += 1
                    self.server_writer.write(data[:budget])
                    with contextlib.suppress(OSError):
                        await self.server_writer.drain()
                    self.close()
                    return
                if budget is not None:
                    proxy.cut_budget = budget - len(data)
                for index, _, name in self.commands.feed(data):
                    proxy.commands[name] += 1
                    if proxy.drop[name] > 0:
                        proxy.drop[name] -= 1
                        self.doomed.add(index)
                self.server_writer.write(data)
                await self.server_writer.drain()
        except OSError:
            pass
        finally:
            # only now, after all the client sent went on to the server: a late command runs
            with contextlib.suppress(Exception):
                self.server_writer.close()

    async def _downstream(self) -> None:
        """Server to client: replies forwarded, up to one that is to be swallowed."""
        proxy = self.proxy
        forwarded = 0
        try:
            while data := await self.server_reader.read(CHUNK):
                await self.flowing.wait()
                if self.cut:
                    return
                first = self.replies.base + len(self.replies.buf)
                for index, start, _ in self.replies.feed(data):
                    if index in self.doomed:
                        await self._forward(data, first, forwarded, start)
                        proxy.fired += 1
                        self.close()
                        return
                limit = first + len(data)
                if self.replies.count in self.doomed:
                    limit = self.replies.base  # hold back the start of a reply to swallow
                await self._forward(data, first, forwarded, limit)
                forwarded = max(forwarded, limit)
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                self.client_writer.close()

    async def _forward(self, data: bytes, first: int, forwarded: int, limit: int) -> None:
        """Send the client the bytes of ``data`` (which starts at stream offset ``first``) from
        offset ``forwarded`` (what went already) up to offset ``limit``."""
        lo, hi = max(forwarded - first, 0), limit - first
        if hi > lo:
            self.client_writer.write(data[lo:hi])
            await self.client_writer.drain()


class FaultProxy:
    """A proxy on a free loopback port in front of ``upstream`` (``(host, port)`` of a
    redis-server), with faults armed by its methods; an async context manager.

    ``commands`` counts every command name clients sent through it; ``fired`` counts the faults
    that happened (a test checks its fault did happen).
    """

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.commands: Counter[str] = Counter()
        self.fired = 0
        self.drop: Counter[str] = Counter()
        """Command name -> how many more of them get their reply swallowed."""
        self.cut_budget: int | None = None
        """Client bytes still forwarded before the cut (``None``: no cut armed)."""
        self.stalling_new = False
        """Whether a connection opened now starts stalled."""
        self.held = 0
        """Chunks from clients read but not yet sent on (stalled)."""
        self._changed = asyncio.Event()
        """Set when a stall ends or a held chunk goes on."""
        self.down = False
        self._stall: asyncio.TimerHandle | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- faults ----------------------------------------------------------------------------------

    def drop_reply(self, *commands: str, times: int = 1) -> None:
        """Swallow the replies to the next ``times`` commands named one of ``commands`` (e.g.
        ``"EVALSHA"``, ``"EXEC"``), each time cutting the client's connection once the reply
        (proof that the command ran) is complete."""
        for name in commands:
            self.drop[name.upper()] = times

    def cut_after(self, nbytes: int) -> None:
        """Cut the connection carrying the client byte ``nbytes`` from now (``0``: the next
        byte); the server gets the bytes before it only."""
        self.cut_budget = nbytes

    def stall(self, seconds: float, *, new_connections: bool = True) -> None:
        """Hold every byte in both directions for ``seconds`` from now, then deliver it;
        ``new_connections=False``: only on the connections open now (a client that reconnects
        gets through while its old connection's bytes are still held)."""
        if self._stall is not None:
            self._stall.cancel()
        self.stalling_new = new_connections
        for link in self._links:
            link.flowing.clear()
        self._stall = asyncio.get_running_loop().call_later(seconds, self._resume)

    async def settled(self) -> None:
        """Wait until no stall is on and every byte a client sent before went on to the server
        (a late command of a closed connection included)."""
        while True:
            self._changed.clear()
            if self._stall is None and not self.held:
                for _ in range(3):  # let pumps whose client still had bytes read them
                    await asyncio.sleep(0)
                if not self.held:
                    return
                continue
            await self._changed.wait()

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """Count a chunk as held while the body (waiting for a stall's end) runs."""
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            self._changed.set()

    def refuse(self) -> None:
        """Go down: cut every connection and close new ones at once, until :meth:`heal`."""
        self.down = True
        for link in list(self._links):
            link.close()

    def heal(self) -> None:
        """Disarm every fault; a stall ends now."""
        self.drop.clear()
        self.cut_budget = None
        self.down = False
        self._resume()

    def _resume(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self.stalling_new = False
        for link in self._links:
            link.flowing.set()
        self._changed.set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            link.close()
        await self._idle.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers += 1
        self._idle.clear()
        try:
            if self.down:
                writer.close()
                return
            try:
                server = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.close()
                return
            link = _Link(self, (reader, writer), server)
            self._links.add(link)
            try:
                await link.run()
            finally:
                self._links.discard(link)
        finally:
            self._handlers -= 1
            if not self._handlers:
                self._idle.set()


__all__ = ["FaultProxy", "command_name", "resp_value_end"]
