"""The embedded MQTT 3.1.1 broker (``kilowatch serve --broker embedded``).

``async with EmbeddedBroker(port=0) as broker: ...`` runs an in-memory broker in the current event
loop; see ``docs/broker.md`` for what it supports and when to use mosquitto instead.
"""

from kilowatch.broker.auth import Authenticator, hash_password, load_password_file, verify_password
from kilowatch.broker.server import (
    DEFAULT_MAX_INFLIGHT_MESSAGES,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_MAX_QUEUED_MESSAGES,
    DEFAULT_PORT,
    DEFAULT_SESSION_EXPIRY_S,
    BrokerStats,
    EmbeddedBroker,
    server_tls_context,
)
from kilowatch.mqtt.topics import SubscriptionTree, is_valid_filter, topic_matches

__all__ = [
    "DEFAULT_MAX_INFLIGHT_MESSAGES",
    "DEFAULT_MAX_PACKET_SIZE",
    "DEFAULT_MAX_QUEUED_MESSAGES",
    "DEFAULT_PORT",
    "DEFAULT_SESSION_EXPIRY_S",
    "Authenticator",
    "BrokerStats",
    "EmbeddedBroker",
    "SubscriptionTree",
    "hash_password",
    "is_valid_filter",
    "load_password_file",
    "server_tls_context",
    "topic_matches",
    "verify_password",
]
