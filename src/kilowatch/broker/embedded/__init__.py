"""The embedded MQTT 3.1.1 broker: kilowatch's fallback where mosquitto is not installed.

``async with EmbeddedBroker(port=0) as broker: ...`` runs an in-memory broker in the current event
loop: ``server`` (the listeners, sessions and routing), ``connection`` (one client's asyncio
protocol), ``session`` (a client's subscriptions and queue), ``auth`` (users and password files),
``acl`` (per-device topic rules).
See docs/broker.md for what it supports and when to use mosquitto instead.
"""

from kilowatch.broker.embedded.acl import Acl
from kilowatch.broker.embedded.auth import Authenticator, load_password_file
from kilowatch.broker.embedded.server import (
    DEFAULT_MAX_INFLIGHT_MESSAGES,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_MAX_QUEUED_MESSAGES,
    DEFAULT_PORT,
    DEFAULT_SESSION_EXPIRY_S,
    BrokerStats,
    EmbeddedBroker,
    server_tls_context,
)

__all__ = [
    "DEFAULT_MAX_INFLIGHT_MESSAGES",
    "DEFAULT_MAX_PACKET_SIZE",
    "DEFAULT_MAX_QUEUED_MESSAGES",
    "DEFAULT_PORT",
    "DEFAULT_SESSION_EXPIRY_S",
    "Acl",
    "Authenticator",
    "BrokerStats",
    "EmbeddedBroker",
    "load_password_file",
    "server_tls_context",
]
