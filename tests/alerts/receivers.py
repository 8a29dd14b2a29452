"""Real local receivers for alert notifications, on loopback ports the OS hands out (subnet
127.0.91.0/24): a webhook receiver that checks Standard Webhooks signatures with its own code, an
ntfy-like push receiver, and an SMTP server (aiosmtpd). Each can fail its first attempts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.91.1"


@dataclass
class Attempt:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


def check_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's own check (as docs/alerts.md tells a receiver to write it)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for sig in headers.get("webhook-signature", "").split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


class _HttpReceiver:
    def __init__(
        self, *, fail_first: int = 0, fail_first_per_id: int = 0, fail_status: int = 500
    ) -> None:
        self.fail_first = fail_first
        self.fail_first_per_id = fail_first_per_id
        self.fail_status = fail_status
        self.attempts: list[Attempt] = []
        self.received = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{HOST}:{port}/hook"
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        return True

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        msg_id = headers.get("webhook-id")
        tried = sum(a.headers.get("webhook-id") == msg_id for a in self.attempts)
        failing = len(self.attempts) < self.fail_first or tried < self.fail_first_per_id
        verified = self.verify(headers, body)
        status = self.fail_status if failing else (200 if verified else 401)
        self.attempts.append(Attempt(headers, body, status, verified))
        if status == 200:
            self.received.set()
        return web.Response(status=status, text="failing on purpose" if failing else "ok")

    @property
    def accepted(self) -> list[Attempt]:
        return [a for a in self.attempts if a.status == 200]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.accepted) < count:
                self.received.clear()
                await self.received.wait()


class WebhookReceiver(_HttpReceiver):
    """Accepts a POST only with a valid signature of ``secret`` (else 401); fails the first
    ``fail_first`` attempts, and the first ``fail_first_per_id`` of each ``webhook-id``, with
    ``fail_status``. ``ids``: the distinct accepted ``webhook-id``s."""

    def __init__(self, secret: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.secret = secret

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        return check_signature(self.secret, headers, body)

    @property
    def ids(self) -> list[str]:
        seen: list[str] = []
        for a in self.accepted:
            if a.headers["webhook-id"] not in seen:
                seen.append(a.headers["webhook-id"])
        return seen


class NtfyReceiver(_HttpReceiver):
    """An ntfy-like topic: records what is posted (message body, Title, Priority, Tags)."""


@dataclass
class _Handler:
    refuse: set[str] = field(default_factory=set)
    """Recipients answered with 550."""
    busy_first: int = 0
    """The first N messages are answered 451 (a transient failure)."""
    messages: list[Message] = field(default_factory=list)
    busy: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.busy < self.busy_first:
            self.busy += 1
            return "451 4.3.0 try again later"
        content = envelope.content or b""
        msg = message_from_bytes(content.encode() if isinstance(content, str) else content)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        self.event.set()
        return "250 Message accepted"


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) in this event loop, on a loopback port the OS picks."""

    def __init__(self, *, refuse: set[str] | None = None, busy_first: int = 0) -> None:
        self.handler = _Handler(refuse=refuse or set(), busy_first=busy_first)
        self._server: asyncio.Server | None = None
        self.host = HOST
        self.port = 0

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="mail.test", loop=loop), HOST, 0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def messages(self) -> list[Message]:
        return self.handler.messages

    @property
    def ids(self) -> list[str]:
        return list(dict.fromkeys(str(m["Message-ID"]) for m in self.messages))

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.handler.event.clear()
                await self.handler.event.wait()
