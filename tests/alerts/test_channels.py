"""kilowatch.alerts.channels against real local receivers: a webhook receiver that checks the
signature with its own code, an SMTP server (aiosmtpd), an ntfy-like topic."""

from __future__ import annotations

from kilowatch.alerts.channels import RetryPolicy, Sender, payload, sign, verify
from kilowatch.alerts.config import Channel, new_webhook_secret
from kilowatch.alerts.state import Notification

from .receivers import HOST, NtfyReceiver, SmtpReceiver, WebhookReceiver, check_signature

FAST = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)
NOTE = Notification(
    id="msg_2Kq", ts=1_760_000_000.0, rule="oven", device="plug-1", transition="firing",
    message="plug-1 switch:0 draws 2100 W, above 2000 W", value=2100.0, rule_name="Oven on",
    channels=("hook",),
)  # fmt: skip


def hook(url: str, secret: str) -> Channel:
    return Channel("hook", "webhook", url=url, secret=secret)


def mail(port: int, *recipients: str) -> Channel:
    return Channel(
        "mail", "email", smtp_host=HOST, smtp_port=port, smtp_security="none",
        sender="kilowatch@example.org", recipients=recipients or ("ops@example.org",),
    )  # fmt: skip


def test_signature_matches_the_standard_webhooks_example() -> None:
    # the example of the Standard Webhooks specification's reference libraries
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,bad v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert verify(secret, headers, body, now=1614265330 + 10)
    assert not verify(secret, headers, body, now=1614265330 + 3600)  # a replay, too late
    assert not verify(secret, headers, body + b" ", now=1614265330)


async def test_webhook_retries_with_one_id_and_a_fresh_signature_per_attempt() -> None:
    secret = new_webhook_secret()
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    async with WebhookReceiver(secret, fail_first=2) as rx, Sender(policy=FAST, sleep=sleep) as tx:
        result = await tx.deliver(hook(rx.url, secret), NOTE)
    assert result.ok and result.attempts == 3
    assert [a.status for a in rx.attempts] == [500, 500, 200]
    assert all(a.verified for a in rx.attempts)
    assert {a.headers["webhook-id"] for a in rx.attempts} == {"msg_2Kq"}
    assert rx.accepted[0].json() == payload(NOTE)
    assert rx.accepted[0].json()["type"] == "alert.firing"
    assert len(waits) == 2 and 0.005 <= waits[0] <= 0.01 and 0.01 <= waits[1] <= 0.02


async def test_webhook_wrong_secret_is_refused_and_not_retried() -> None:
    async with WebhookReceiver(new_webhook_secret()) as rx, Sender(policy=FAST) as tx:
        result = await tx.deliver(hook(rx.url, new_webhook_secret()), NOTE)
    assert not result.ok and result.attempts == 1 and "HTTP 401" in (result.error or "")
    assert not rx.attempts[0].verified


async def test_webhook_429_is_retried_and_gives_up_after_the_attempts() -> None:
    secret = new_webhook_secret()
    receiver = WebhookReceiver(secret, fail_first=99, fail_status=429)
    async with receiver as rx, Sender(policy=FAST) as tx:
        result = await tx.deliver(hook(rx.url, secret), NOTE)
    assert not result.ok and result.attempts == 4 and len(rx.attempts) == 4


async def test_webhook_unreachable_is_retried() -> None:
    async with WebhookReceiver(new_webhook_secret()) as rx:
        url = rx.url
    async with Sender(policy=FAST) as tx:  # the receiver is gone: connection refused
        result = await tx.deliver(hook(url, new_webhook_secret()), NOTE)
    assert not result.ok and result.attempts == 4 and "ClientConnectorError" in (result.error or "")


async def test_receiver_signature_check_fails_on_tampering() -> None:
    secret = new_webhook_secret()
    async with WebhookReceiver(secret) as rx, Sender(policy=FAST) as tx:
        assert (await tx.deliver(hook(rx.url, secret), NOTE)).ok
    got = rx.accepted[0]
    assert check_signature(secret, got.headers, got.body)
    assert not check_signature(secret, got.headers, got.body.replace(b"2100", b"2101"))


async def test_email_through_a_real_smtp_server() -> None:
    async with SmtpReceiver() as smtp, Sender(policy=FAST) as tx:
        result = await tx.deliver(mail(smtp.port, "a@example.org", "b@example.org"), NOTE)
    assert result.ok and result.attempts == 1
    (msg,) = smtp.messages
    assert msg["Subject"] == "[kilowatch] FIRING: Oven on - plug-1"
    assert msg["Message-ID"] == "<msg_2Kq@kilowatch.alerts>"
    assert msg["X-Envelope-To"] == "a@example.org, b@example.org"
    assert "draws 2100 W" in msg.get_payload()


async def test_email_transient_451_is_retried_and_550_is_not() -> None:
    receiver = SmtpReceiver(busy_first=1, refuse={"gone@example.org"})
    async with receiver as smtp, Sender(policy=FAST) as tx:
        ok = await tx.deliver(mail(smtp.port), NOTE)
        refused = await tx.deliver(mail(smtp.port, "gone@example.org"), NOTE)
    assert ok.ok and ok.attempts == 2 and len(smtp.messages) == 1
    assert not refused.ok and refused.attempts == 1 and "refused" in (refused.error or "")


async def test_ntfy_push_headers_and_token() -> None:
    resolved = Notification(
        id="n2", ts=NOTE.ts, rule="oven", device="plug-1", transition="resolved",
        message="plug-1 back to 10 W", rule_name="Oven on — kitchen",
    )  # fmt: skip
    async with NtfyReceiver(fail_first=1) as rx, Sender(policy=FAST) as tx:
        channel = Channel("push", "ntfy", url=rx.url, token="tk_123")
        result = await tx.deliver(channel, resolved)
    assert result.ok and result.attempts == 2
    got = rx.accepted[0]
    assert got.body == b"plug-1 back to 10 W"
    assert got.headers["priority"] == "3" and got.headers["tags"] == "white_check_mark"
    assert got.headers["authorization"] == "Bearer tk_123"
    assert got.headers["title"].startswith("=?UTF-8?B?")  # the dash is not latin-1


async def test_ntfy_404_is_not_retried() -> None:
    async with NtfyReceiver(fail_first=9, fail_status=404) as rx, Sender(policy=FAST) as tx:
        result = await tx.deliver(Channel("push", "ntfy", url=rx.url), NOTE)
    assert not result.ok and result.attempts == 1 and len(rx.attempts) == 1
