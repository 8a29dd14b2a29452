"""Per-user topic rules for the embedded broker: the managed mosquitto's ``acl_file``, enforced.

The rules come from :func:`kilowatch.broker.credentials.topic_rules`, the function that writes
mosquitto's ``acl_file``, so both brokers let a device do the same: publish under its own topics,
subscribe to its own RPC and command topics; kilowatch's own user does everything. Users the rules
do not name (``--mqtt-user``, the password file's, anonymous clients on loopback) are not
restricted, as before. A revoked device's user name is refused at CONNECT.

Decisions are cached per user and topic, so a device publishing to its few topics costs one dict
look-up per PUBLISH.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kilowatch.broker.credentials import Credential, TopicRule, topic_rules

# Distinct topics remembered per user before the cache starts over: a device publishes to a few
# dozen; this bounds the memory a client publishing to ever new topics can take.
MAX_CACHED_TOPICS = 4096


def filter_covers(pattern: str, topic_filter: str) -> bool:
    """Whether every topic ``topic_filter`` matches is also matched by ``pattern``.

    For a topic name (no wildcards) this is plain matching; ``a/#`` covers ``a``, ``a/+/c`` and
    ``a/#``; ``a/+`` covers ``a/b`` and ``a/+`` but not ``a/#``.
    """
    wanted = topic_filter.split("/")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(wanted):
            return False
        if level == "+":
            if wanted[i] == "#":
                return False
        elif wanted[i] != level:
            return False
    return len(wanted) == len(levels)


class UserAcl:
    """One user's rule, with its decisions cached (one instance per user, shared by its
    connections)."""

    __slots__ = ("_published", "publish", "subscribe", "user")

    def __init__(self, rule: TopicRule) -> None:
        self.user = rule.user
        self.publish = rule.publish
        self.subscribe = rule.subscribe
        self._published: dict[str, bool] = {}

    def may_publish(self, topic: str) -> bool:
        """Whether the user may publish on the topic name ``topic``."""
        allowed = self._published.get(topic)
        if allowed is None:
            if len(self._published) >= MAX_CACHED_TOPICS:
                self._published.clear()
            allowed = self._published[topic] = any(filter_covers(p, topic) for p in self.publish)
        return allowed

    def may_subscribe(self, topic_filter: str) -> bool:
        """Whether everything ``topic_filter`` matches is a topic the user may read."""
        return any(filter_covers(p, topic_filter) for p in self.subscribe)


class Acl:
    """Who may publish and subscribe where, and the users' password hashes.

    ``Acl.from_credentials(records)`` is what ``kilowatch serve`` gives the embedded broker:
    ``EmbeddedBroker(..., acl=acl)``.

    Args:
        rules: each restricted user's topics (:func:`~kilowatch.broker.credentials.topic_rules`).
        password_hashes: user → mosquitto ``$7$`` (or ``$6$``, ``$scrypt$``) hash; these users
            log in beside the broker's ``users`` and password file.
        revoked: user names refused at CONNECT whatever their password.
    """

    def __init__(
        self,
        rules: Iterable[TopicRule],
        *,
        password_hashes: Mapping[str, str] | None = None,
        revoked: Iterable[str] = (),
    ) -> None:
        self._users = {rule.user: UserAcl(rule) for rule in rules}
        self.password_hashes = dict(password_hashes or {})
        self.revoked = frozenset(revoked) - self._users.keys()

    @classmethod
    def from_credentials(cls, records: Iterable[Credential]) -> Acl:
        """The rules, hashes and revocations of the store's broker credentials."""
        records = list(records)
        return cls(
            topic_rules(records),
            password_hashes={r.user: r.password_hash for r in records if not r.revoked},
            revoked=(r.user for r in records if r.revoked),
        )

    def for_user(self, user: str | None) -> UserAcl | None:
        """``user``'s rule, or None when the user is not restricted."""
        return None if user is None else self._users.get(user)

    def is_revoked(self, user: str | None) -> bool:
        return user is not None and user in self.revoked


__all__ = ["MAX_CACHED_TOPICS", "Acl", "UserAcl", "filter_covers"]
