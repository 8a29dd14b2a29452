"""kilowatch.broker: the MQTT broker a home's devices talk to.

- ``mosquitto``: the managed mosquitto (:class:`ManagedMosquitto`): a config kilowatch writes,
  supervised, reloaded without a restart; ``credentials``: per-device users and their topics
  (ACLs); ``tls``: a local CA and the broker's certificate; ``passwords``: the password hashes
  every broker here reads and writes.
- ``embedded/``: kilowatch's own small MQTT 3.1.1 broker, the fallback where mosquitto is absent.

See docs/broker.md.
"""

from kilowatch.broker.embedded import EmbeddedBroker, server_tls_context
from kilowatch.broker.mosquitto import (
    MOSQUITTO_MISSING,
    Listener,
    ManagedMosquitto,
    find_mosquitto,
)
from kilowatch.broker.passwords import mosquitto_hash, scrypt_hash, verify_password

__all__ = [
    "MOSQUITTO_MISSING",
    "EmbeddedBroker",
    "Listener",
    "ManagedMosquitto",
    "find_mosquitto",
    "mosquitto_hash",
    "scrypt_hash",
    "server_tls_context",
    "verify_password",
]
