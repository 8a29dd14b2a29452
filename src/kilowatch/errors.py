"""The one error hierarchy of kilowatch.

Every package translates foreign exceptions (paho, redis-py, sqlite3, argon2, uvicorn) into one of
these at its boundary, with ``raise ... from err``. Errors carry structured attributes, not just
text, and their message says what happened, with the evidence, and what to do. The tree::

    KilowatchError
    ├── ConfigError            a setting (flag, KILOWATCH_* variable, TOML) is missing or invalid
    ├── DecodeError            a message could not be turned into readings (``reason`` slug)
    ├── LedgerStateError       a saved ledger state cannot be read (``key``, ``detail``)
    ├── StoreError             the store could not be opened, read or written (retrying may help)
    │   ├── InvalidQueryError  an energy query is malformed (zone, range, bucket)
    │   └── UnstorableError    a record no store can hold (too deep, not JSON, out of range): its
    │                          content is at fault, so retrying never helps (``detail``)
    ├── BrokerError            the MQTT broker could not be started or reached
    │   └── ProtocolError      a client broke MQTT's rules (``reason`` slug)
    │       └── PacketTooLargeError
    ├── DeviceError            a device could not do what was asked (``device``)
    │   ├── DeviceConnectionError  unreachable: refused, reset, no route, offline
    │   ├── DeviceTimeoutError     no answer within the bounded wait (``seconds``)
    │   ├── InvalidAuthError       the device wants a password, or another one
    │   └── RpcCallError           the device answered with an error (``code``, ``message``)
    ├── FleetError             a fleet operation cannot start: a bad profile, bad TLS material,
    │                          a script the device cannot hold (``subject``)
    ├── DeliveryError          an alert notification was not delivered (``channel``, ``retryable``)
    └── Problem                an HTTP answer of the web API that is not a success (RFC 9457)

No other module of kilowatch defines an exception class (tests/test_architecture.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class KilowatchError(Exception):
    """Base class of every error kilowatch raises on purpose."""


class ConfigError(KilowatchError):
    """A setting (flag, environment variable, TOML file) is missing or invalid."""


class DecodeError(KilowatchError):
    """A message could not be turned into readings.

    ``reason`` is a short, stable slug used to count dead letters (``invalid_json``,
    ``unknown_topic``...).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LedgerStateError(KilowatchError):
    """A saved ledger state cannot be read (corrupt, or written by a newer kilowatch)."""

    def __init__(self, key: tuple[str, str], detail: str) -> None:
        super().__init__(
            f"saved ledger state of {key[0]} {key[1]} is unreadable ({detail}); upgrade "
            "kilowatch if a newer version wrote it, or delete that channel's state to restart it "
            "from its next reading (its stored energy is kept)"
        )
        self.key = key
        self.detail = detail


class StoreError(KilowatchError):
    """The store could not be opened, read or written."""


class InvalidQueryError(StoreError):
    """An energy query is malformed: unknown time zone, empty or reversed range, unknown bucket."""


class UnstorableError(StoreError):
    """A record cannot be stored because of what it holds, whatever the store's state: JSON nested
    deeper than the encoder allows, a value JSON cannot hold, an integer out of the store's range.

    Retrying the same write can never succeed (unlike a plain :class:`StoreError`: the store is
    down, full or locked). ``detail`` is the encoder's or the store's own complaint.
    """

    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class BrokerError(KilowatchError):
    """The MQTT broker (embedded or external) could not be started or reached."""


class ProtocolError(BrokerError):
    """A client sent something MQTT 3.1.1 forbids; the broker closes that client's connection.

    ``reason`` is a short, stable slug (``malformed``, ``packet_too_large``) for counters and logs.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PacketTooLargeError(ProtocolError):
    """The client announced a packet larger than the broker's ``max_packet_size``."""


class DeviceError(KilowatchError):
    """A Shelly device could not do what was asked. ``device`` names it (its id, or its address
    while the id is not known yet)."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device


class DeviceConnectionError(DeviceError):
    """The device cannot be reached: connection refused or reset, no route, rebooting, offline."""


class DeviceTimeoutError(DeviceError):
    """The device did not answer within ``seconds`` (every device wait is bounded)."""

    def __init__(self, device: str, message: str, *, seconds: float) -> None:
        super().__init__(device, message)
        self.seconds = seconds


class InvalidAuthError(DeviceError):
    """The device has a password (digest auth, ``Shelly.SetAuth``) and none or a wrong one was
    given."""


class RpcCallError(DeviceError):
    """The device answered the call with an error frame: ``code`` and ``message`` are the device's
    own (``-105 Argument 'id', value 3 not found!``; ``404 No handler for X``), ``method`` the
    call's."""

    def __init__(self, device: str, method: str, code: int, message: str) -> None:
        super().__init__(device, f"{method} failed: {code} {message}")
        self.method = method
        self.code = code
        self.message = message


class FleetError(KilowatchError):
    """A fleet operation cannot start or go on because of its input: an invalid profile, TLS
    material a device would refuse, a script larger than the device can hold. ``subject`` is what
    is at fault (a file, a device id)."""

    def __init__(self, subject: str, message: str) -> None:
        super().__init__(f"{subject}: {message}")
        self.subject = subject


class DeliveryError(KilowatchError):
    """An alert notification was not delivered through a channel (webhook, e-mail, push).
    ``retryable`` is false when trying again cannot help (a 4xx other than 408/429, a refused
    recipient); the sender retries the others with backoff."""

    def __init__(self, channel: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel
        self.retryable = retryable


PROBLEM_TYPE_BASE = "https://kilowatch.dev/problems/"
"""Problem ``type`` URIs are identifiers (RFC 9457 §3.1.1), not fetched; docs/api.md lists them."""

_TITLES = {
    400: "Bad request",
    401: "Login required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Invalid parameters",
    429: "Too many requests",
    503: "Store unavailable",
}


class Problem(KilowatchError):  # noqa: N818 - RFC 9457 calls it a problem
    """An answer of the web API that is not a success: raised anywhere in a route, rendered by
    ``kilowatch.web.problems`` as an RFC 9457 problem body (``application/problem+json``)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _TITLES.get(status, "error").lower().replace(" ", "-")
        self.title = title or _TITLES.get(status, "Error")
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str) -> dict[str, Any]:
        return {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extra,
        }


__all__ = [
    "PROBLEM_TYPE_BASE",
    "BrokerError",
    "ConfigError",
    "DecodeError",
    "DeliveryError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceTimeoutError",
    "FleetError",
    "InvalidAuthError",
    "InvalidQueryError",
    "KilowatchError",
    "LedgerStateError",
    "PacketTooLargeError",
    "Problem",
    "ProtocolError",
    "RpcCallError",
    "StoreError",
    "UnstorableError",
]
