"""Secrets never reach a log: a filter for aioshelly's loggers.

aioshelly's ``WsRPC`` logs every frame it sends and every call's params at DEBUG (``send(...)``,
``result(...)``): with DEBUG on, ``MQTT.SetConfig``'s ``pass``, ``Shelly.SetAuth``'s ``ha1``, the
digest ``auth`` object and a private key uploaded with ``Shelly.PutTLSClientKey`` would be written
out. :class:`RedactSecrets`, installed on those loggers when the LAN transport is imported, replaces
them in each record's arguments before any handler formats it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

SECRET_KEYS = frozenset({"pass", "password", "ha1", "auth"})
"""Keys whose values are secrets wherever they appear in a frame (§5, §7.1)."""
PRIVATE_KEY_MARK = "PRIVATE KEY"
"""A string holding this is (a chunk of) a PEM private key: redacted whole."""
REDACTED = "***"
AIOSHELLY_LOGGERS = (
    "aioshelly.rpc_device.wsrpc",
    "aioshelly.common",
    "aioshelly.rpc_device.device",
)


def redact(value: Any) -> Any:
    """``value`` with every secret replaced by ``***``; containers are copied, never changed."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED if k in SECRET_KEYS and v is not None else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str) and PRIVATE_KEY_MARK in value:
        return REDACTED
    if hasattr(value, "params") and hasattr(value, "method"):
        return f"{value.method}({redact(value.params)})"  # aioshelly's RPCCall
    return value


class RedactSecrets(logging.Filter):
    """Rewrites a record's arguments through :func:`redact`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = redact(record.args)
        return True


def install(names: tuple[str, ...] = AIOSHELLY_LOGGERS) -> None:
    """Put one :class:`RedactSecrets` on each logger (a logger's filters see only the records
    created on it, so each aioshelly module's logger needs its own); idempotent."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


__all__ = ["REDACTED", "RedactSecrets", "install", "redact"]
