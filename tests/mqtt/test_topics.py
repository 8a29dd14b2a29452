"""Topic names, filters and matching (MQTT 3.1.1 §4.7): ``topic_matches`` and the subscription
tree the embedded broker looks subscribers up in must agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilowatch.mqtt.topics import SubscriptionTree, is_valid_filter, topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/#", "sport/tennis", True),  # §4.7.1.2: "#" includes the parent level
        ("sport/#", "sport", True),
        ("sport/tennis/#", "sport/tennis/player1/ranking", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),  # an empty level is a level
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/uptime", False),  # §4.7.2
        ("+/uptime", "$SYS/uptime", False),
        ("$SYS/#", "$SYS/uptime", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("shellies/+/relay/+/energy", "shellies/s1/relay/0/energy", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
    tree = SubscriptionTree()
    tree.add(topic_filter, "c", 1)
    assert (tree.match(topic) == {"c": 1}) is expected


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [("#", True), ("a/#", True), ("a/#/b", False), ("a#", False), ("+", True), ("a+/b", False),
     ("", False), ("+/+/#", True), ("/", True)],
)  # fmt: skip
def test_filter_validation(topic_filter: str, valid: bool) -> None:
    assert is_valid_filter(topic_filter) is valid


_level = st.sampled_from(["a", "b", "", "$x"])
_topic = st.lists(_level, min_size=1, max_size=4).map("/".join).filter(bool)
_filter = st.lists(st.sampled_from(["a", "b", "", "+", "$x"]), min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"])])
)


@given(st.lists(st.tuples(_filter, st.integers(0, 1)), max_size=8), _topic)
def test_tree_agrees_with_topic_matches(subs: list[tuple[str, int]], topic: str) -> None:
    tree = SubscriptionTree()
    expected: dict[str, int] = {}
    for i, (topic_filter, qos) in enumerate(subs):
        tree.add(topic_filter, f"c{i % 3}", qos)
    for i, (topic_filter, _) in enumerate(subs):
        client = f"c{i % 3}"
        # the tree keeps the last QoS per (filter, client); recompute the same way
        last = {f: q for j, (f, q) in enumerate(subs) if f"c{j % 3}" == client}
        if topic_matches(topic_filter, topic):
            expected[client] = max(expected.get(client, -1), last[topic_filter])
    assert tree.match(topic) == expected


def test_tree_remove_prunes_and_invalidates_the_cache() -> None:
    tree = SubscriptionTree()
    tree.add("a/+/c", "x", 1)
    tree.add("a/#", "y", 0)
    assert tree.match("a/b/c") == {"x": 1, "y": 0}
    assert tree.remove("a/+/c", "x")
    assert not tree.remove("a/+/c", "x")
    assert tree.match("a/b/c") == {"y": 0}
    assert tree.remove("a/#", "y")
    assert tree.match("a/b/c") == {}
    assert len(tree) == 0
