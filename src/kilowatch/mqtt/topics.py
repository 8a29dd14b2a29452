"""Topic names, topic filters and the subscription tree (MQTT 3.1.1 §4.7).

A publish looks up its subscribers in a trie of filter levels, and the answer is cached per topic
until the subscriptions change: a home publishes on a few dozen topics over and over, so nearly
every lookup is one dict hit.
"""

from __future__ import annotations

from kilowatch.errors import ProtocolError

# Bounded so a client publishing on ever-new topics cannot grow the cache without limit.
MATCH_CACHE_SIZE = 4096


def check_topic_name(topic: str) -> None:
    """Raise :class:`ProtocolError` unless ``topic`` may be published to (§4.7.3: no wildcards)."""
    if not topic:
        raise ProtocolError("malformed", "empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolError("malformed", f"wildcard in topic name {topic!r}")


def is_valid_filter(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is well-formed (§4.7.1): ``#`` last and alone, ``+`` alone."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a (valid) filter matches a topic name, with the ``$`` rule of §4.7.2."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels) or (f != "+" and f != tlevels[i]):
            return False
    return len(flevels) == len(tlevels)


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, int] = {}  # client id -> granted QoS


class SubscriptionTree:
    """Topic filters of every session, keyed by client id; ``match`` answers who gets a topic."""

    def __init__(self) -> None:
        self._root = _Node()
        self._cache: dict[str, dict[str, int]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, client_id: str, qos: int) -> None:
        """Subscribe ``client_id`` to a valid filter (replacing its QoS if already subscribed)."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if client_id not in node.subscribers:
            self._count += 1
        node.subscribers[client_id] = qos
        self._cache.clear()

    def remove(self, topic_filter: str, client_id: str) -> bool:
        """Unsubscribe; return whether the subscription existed. Empty branches are pruned."""
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(client_id, None) is None:
            return False
        self._count -= 1
        self._cache.clear()
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.subscribers or child.children:
                break
            del parent.children[level]
        return True

    def match(self, topic: str) -> dict[str, int]:
        """Client ids subscribed to ``topic`` with the highest QoS among their matching filters.

        The returned dict is shared with the cache: callers must not modify it.
        """
        found = self._cache.get(topic)
        if found is not None:
            return found
        found = {}
        levels = topic.split("/")
        # §4.7.2: filters starting with a wildcard do not match topics starting with "$".
        self._walk(self._root, levels, 0, found, not topic.startswith("$"))
        if len(self._cache) >= MATCH_CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def _walk(
        self, node: _Node, levels: list[str], i: int, found: dict[str, int], wildcards: bool
    ) -> None:
        children = node.children
        if wildcards:
            multi = children.get("#")
            if multi is not None:  # "a/#" matches "a" and everything below it
                _merge(found, multi.subscribers)
        if i == len(levels):
            _merge(found, node.subscribers)
            return
        if wildcards:
            single = children.get("+")
            if single is not None:
                self._walk(single, levels, i + 1, found, True)
        exact = children.get(levels[i])
        if exact is not None:
            self._walk(exact, levels, i + 1, found, True)


def _merge(found: dict[str, int], subscribers: dict[str, int]) -> None:
    for client_id, qos in subscribers.items():
        if found.get(client_id, -1) < qos:
            found[client_id] = qos
