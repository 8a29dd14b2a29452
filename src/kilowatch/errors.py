"""The one error hierarchy of kilowatch.

Every package translates foreign exceptions (paho, redis-py, sqlite3, httpx, aiohttp) into one of
these at its boundary, with ``raise ... from err``. Errors carry structured attributes, not just
text, and their message says what happened, with the evidence, and what to do.
"""

from __future__ import annotations


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


class StoreError(KilowatchError):
    """The store could not be opened, read or written."""


class BrokerError(KilowatchError):
    """The MQTT broker (embedded or external) could not be started or reached."""


class DeviceError(KilowatchError):
    """Talking to a device failed."""


class DeviceConnectionError(DeviceError):
    """The device could not be reached (refused, reset, DNS, TLS)."""


class DeviceTimeoutError(DeviceError):
    """The device did not answer within the allowed time."""


class InvalidAuthError(DeviceError):
    """The device refused our credentials (HTTP 401 / RPC error 401)."""


class RpcCallError(DeviceError):
    """The device answered an RPC call with an error frame ``{"code": .., "message": ..}``."""

    def __init__(self, code: int, message: str, *, method: str | None = None) -> None:
        where = f"{method}: " if method else ""
        super().__init__(f"{where}RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.method = method


__all__ = [
    "BrokerError",
    "ConfigError",
    "DecodeError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceTimeoutError",
    "InvalidAuthError",
    "KilowatchError",
    "RpcCallError",
    "StoreError",
]
