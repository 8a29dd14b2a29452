"""Delivering notifications: a signed webhook (Standard Webhooks), e-mail over SMTP, ntfy-style
HTTP push; each with bounded, jittered exponential retries.

One attempt raises :class:`DeliveryError` when it fails; ``retryable=False`` when trying again
cannot help (an HTTP 4xx other than 408 and 429, a 5xx SMTP reply, a refused login or recipient,
a channel that is not configured right). :meth:`Sender.deliver` retries the others up to
:attr:`RetryPolicy.attempts` times and returns a :class:`DeliveryResult`, never raising.

The webhook (https://www.standardwebhooks.com): a POST of the JSON body with the headers
``webhook-id`` (the notification's id, the same on every retry, so a receiver drops repeats),
``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature`` =
``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) where ``key`` is the base64-decoded
part of the channel's ``whsec_`` secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
import aiosmtplib

from kilowatch.alerts.config import Channel, webhook_key
from kilowatch.alerts.state import DeliveryResult, Notification
from kilowatch.errors import ConfigError, DeliveryError

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0
"""One webhook or push attempt, connect to last byte."""
SMTP_TIMEOUT_S = 20.0
"""One SMTP conversation."""
RETRYABLE_HTTP = frozenset({408, 429})
"""4xx answers worth retrying: Request Timeout, Too Many Requests (RFC 9110 §15.5.9, RFC 6585)."""
USER_AGENT = "kilowatch-alerts"
NTFY_PRIORITY = {"firing": "4", "repeat": "4", "resolved": "3", "test": "3"}
"""ntfy priorities: 4 high, 3 default (https://docs.ntfy.sh/publish/#message-priority)."""
NTFY_TAGS = {
    "firing": "warning",
    "repeat": "warning",
    "resolved": "white_check_mark",
    "test": "bell",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``attempts`` tries; before try *n* + 1 a wait of ``d/2 + random(0, d/2)`` with
    ``d = min(cap_s, base_s * 2**(n-1))`` ("equal jitter": never no wait, never in step with
    other senders). The defaults wait about 1, 2, 4, 8 s: a receiver has some 15 s to recover."""

    attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        d = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        return d / 2 + rand() * d / 2


def payload(n: Notification) -> dict[str, Any]:
    """The JSON body of a webhook (and what a test of the shape reads)."""
    return {
        "type": n.event_type,
        "timestamp": datetime.fromtimestamp(n.ts, UTC).isoformat(),
        "id": n.id,
        "rule": n.rule,
        "rule_name": n.rule_name,
        "device": n.device,
        "transition": n.transition,
        "value": n.value,
        "message": n.message,
        "ts": n.ts,
    }


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for one attempt (``v1,<base64>``)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: dict[str, str], body: bytes, *, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver checks (docs/alerts.md shows it): one of the header's ``v1,`` signatures
    matches and the timestamp is within ``tolerance_s`` of ``now`` (replays are refused)."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        given = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, sig) for sig in given)


def subject(n: Notification) -> str:
    what = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED", "test": "TEST"}
    state = what.get(n.transition, n.transition.upper())
    return f"[kilowatch] {state}: {n.rule_name or n.rule} - {n.device}"


def email_message(channel: Channel, n: Notification) -> EmailMessage:
    """The e-mail of a notification; its ``Message-ID`` is the notification's id, the same on
    every retry."""
    msg = EmailMessage()
    msg["Subject"] = subject(n)
    msg["From"] = channel.sender or ""
    msg["To"] = ", ".join(channel.recipients)
    msg["Date"] = format_datetime(datetime.fromtimestamp(n.ts, UTC))
    msg["Message-ID"] = f"<{n.id}@kilowatch.alerts>"
    value = "" if n.value is None else f"\nValue: {n.value:g}"
    when = datetime.fromtimestamp(n.ts, UTC).isoformat(timespec="seconds")
    msg.set_content(
        f"{n.message}\n\nRule: {n.rule_name or n.rule} ({n.rule})\nDevice: {n.device}\n"
        f"State: {n.transition}\nTime: {when}{value}\n"
    )
    return msg


class Sender:
    """Sends notifications through channels. ``async with Sender() as sender``: it owns one HTTP
    client session. ``sleep`` and ``rand`` are injectable for tests."""

    def __init__(
        self,
        *,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, channel: Channel, n: Notification) -> DeliveryResult:
        """Send ``n`` through ``channel`` with retries; what became of it (never raises but
        for cancellation)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.send_once(channel, n)
            except DeliveryError as err:
                last = attempt >= self.policy.attempts or not err.retryable
                log.warning(
                    "alert delivery failed notification=%s channel=%s attempt=%d retry=%s error=%s",
                    n.id, channel.name, attempt, not last, err,
                )  # fmt: skip
                if last:
                    return DeliveryResult(channel.name, False, attempt, str(err))
                await self._sleep(self.policy.delay(attempt, self._rand))
            else:
                log.info(
                    "alert delivered notification=%s channel=%s transition=%s attempts=%d",
                    n.id, channel.name, n.transition, attempt,
                )  # fmt: skip
                return DeliveryResult(channel.name, True, attempt)

    async def send_once(self, channel: Channel, n: Notification) -> None:
        """One attempt; :class:`DeliveryError` if it failed."""
        try:
            if channel.kind == "webhook":
                await self._webhook(channel, n)
            elif channel.kind == "ntfy":
                await self._ntfy(channel, n)
            elif channel.kind == "email":
                await self._email(channel, n)
            else:
                raise DeliveryError(
                    channel.name, f"unknown channel kind {channel.kind!r}", retryable=False
                )
        except ConfigError as err:
            raise DeliveryError(channel.name, str(err), retryable=False) from None

    # -- HTTP --------------------------------------------------------------------------------

    async def _post(self, channel: Channel, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            raise RuntimeError("use Sender as an async context manager")
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                text = (await resp.text(errors="replace"))[:200]
                retryable = resp.status >= 500 or resp.status in RETRYABLE_HTTP
                raise DeliveryError(
                    channel.name,
                    f"{url} answered HTTP {resp.status}{': ' + text if text else ''}",
                    retryable=retryable,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise DeliveryError(channel.name, f"{url}: {type(err).__name__}: {err}") from err

    async def _webhook(self, channel: Channel, n: Notification) -> None:
        body = json.dumps(payload(n), separators=(",", ":")).encode()
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": n.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(channel.secret or "", n.id, timestamp, body),
        }
        await self._post(channel, channel.url or "", body, headers)

    async def _ntfy(self, channel: Channel, n: Notification) -> None:
        headers = {
            # header values must be latin-1: ntfy reads RFC 2047 encoded words too
            "Title": _header_text(subject(n).removeprefix("[kilowatch] ")),
            "Priority": NTFY_PRIORITY.get(n.transition, "3"),
            "Tags": NTFY_TAGS.get(n.transition, "bell"),
            "X-Kilowatch-Id": n.id,
        }
        if channel.token:
            headers["Authorization"] = f"Bearer {channel.token}"
        await self._post(channel, channel.url or "", n.message.encode(), headers)

    # -- SMTP --------------------------------------------------------------------------------

    async def _email(self, channel: Channel, n: Notification) -> None:
        security = channel.smtp_security
        try:
            await aiosmtplib.send(
                email_message(channel, n),
                hostname=channel.smtp_host,
                port=channel.smtp_port,
                username=channel.username,
                password=channel.password,
                use_tls=security == "tls",
                start_tls=security == "starttls",
                timeout=SMTP_TIMEOUT_S,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            raise DeliveryError(
                channel.name, f"recipients refused: {err}", retryable=False
            ) from err
        except aiosmtplib.SMTPResponseException as err:
            # 4xx replies are transient by SMTP's own definition (RFC 5321 §4.2.1), 5xx are not
            raise DeliveryError(
                channel.name,
                f"{channel.smtp_host}:{channel.smtp_port} replied {err.code} {err.message}",
                retryable=not 500 <= err.code < 600,
            ) from err
        except (aiosmtplib.SMTPException, TimeoutError, OSError, ssl.SSLError) as err:
            raise DeliveryError(
                channel.name,
                f"{channel.smtp_host}:{channel.smtp_port}: {type(err).__name__}: {err}",
            ) from err


TEST_POLICY = RetryPolicy(attempts=2, base_s=1.0, cap_s=2.0)
"""A test notification is tried twice: someone is waiting for the answer."""


def trial_notification(channel: str, now: float, *, source: str = "") -> Notification:
    """A notification of type ``alert.test`` for ``channel`` (``source``: who asks)."""
    host = source or socket.gethostname()
    return Notification(
        id=f"test_{uuid.uuid4().hex}",
        ts=now,
        rule="test",
        device=host,
        transition="test",
        message=f"kilowatch test notification from {host} through channel {channel}",
        rule_name="Test notification",
        channels=(channel,),
    )


async def send_test(
    channel: Channel, *, source: str = "", policy: RetryPolicy = TEST_POLICY
) -> DeliveryResult:
    """Send a test notification through ``channel`` now (``kilowatch alerts test``, the Alerts
    page's test button); what became of it. Nothing is recorded in the history."""
    async with Sender(policy=policy) as sender:
        return await sender.deliver(
            channel, trial_notification(channel.name, time.time(), source=source)
        )


def _header_text(text: str) -> str:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="
    return text


__all__ = [
    "HTTP_TIMEOUT_S",
    "RETRYABLE_HTTP",
    "SMTP_TIMEOUT_S",
    "TEST_POLICY",
    "RetryPolicy",
    "Sender",
    "email_message",
    "payload",
    "send_test",
    "sign",
    "subject",
    "trial_notification",
    "verify",
]
