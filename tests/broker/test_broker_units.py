"""Pure parts of the embedded broker: topic matching, the subscription tree, the frame reader,
password hashing, and the async context manager's contract."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilowatch.broker import (
    EmbeddedBroker,
    SubscriptionTree,
    hash_password,
    is_valid_filter,
    load_password_file,
    topic_matches,
    verify_password,
)
from kilowatch.errors import BrokerError, PacketTooLargeError, ProtocolError
from kilowatch.mqtt.packets import (
    FrameReader,
    PacketType,
    check_flags,
    encode_publish,
    parse_connect,
    parse_packet_id,
    parse_publish,
    parse_subscribe,
    parse_unsubscribe,
)


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


def test_frame_reader_handles_any_split() -> None:
    packets = [encode_publish("t", b"p" * n, qos=1, packet_id=n + 1) for n in (0, 5, 200, 20_000)]
    stream = b"".join(packets)
    for chunk in (1, 2, 3, 127, 4096):
        reader = FrameReader(1 << 20)
        frames = []
        for i in range(0, len(stream), chunk):
            frames += reader.feed(stream[i : i + chunk])
        assert [parse_publish(first, body).payload for first, body in frames] == [
            b"p" * n for n in (0, 5, 200, 20_000)
        ]


def test_frame_reader_limits() -> None:
    with pytest.raises(PacketTooLargeError):
        FrameReader(100).feed(b"\x30\xe8\x07")  # announces 1000 bytes; nothing else needed
    with pytest.raises(ProtocolError):
        FrameReader(1 << 30).feed(b"\x30\x80\x80\x80\x80\x01")


def test_password_hash_round_trip() -> None:
    encoded = hash_password("correct horse", log2_n=10)
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
    assert verify_password(b"correct horse", encoded)
    assert not verify_password(b"correct horse!", encoded)
    assert not verify_password(b"correct horse", "$scrypt$garbage")
    assert hash_password("correct horse", log2_n=10) != encoded  # fresh salt


def test_invalid_options_are_clear_errors() -> None:
    with pytest.raises(BrokerError, match="invalid broker port 70000"):
        EmbeddedBroker(port=70000)
    with pytest.raises(BrokerError, match="max_inflight_messages"):
        EmbeddedBroker(port=0, max_inflight_messages=0)


async def test_callers_exception_propagates_unchanged() -> None:
    with pytest.raises(KeyError):
        async with EmbeddedBroker(port=0) as broker:
            assert broker.port != 0
            raise KeyError("boom")


async def test_context_manager_stops_listening() -> None:
    async with EmbeddedBroker(port=0) as broker:
        port = broker.port
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


_PARSERS = {
    PacketType.CONNECT: lambda first, body: parse_connect(body),
    PacketType.PUBLISH: parse_publish,
    PacketType.SUBSCRIBE: lambda first, body: parse_subscribe(body),
    PacketType.UNSUBSCRIBE: lambda first, body: parse_unsubscribe(body),
    PacketType.PUBACK: lambda first, body: parse_packet_id(body),
}


@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes, chunk: int) -> None:
    """Whatever a client sends, the codec answers with frames or ProtocolError, nothing else."""
    reader = FrameReader(200)
    try:
        for i in range(0, len(data), chunk):
            for first, body in reader.feed(data[i : i + chunk]):
                kind = check_flags(first)
                parser = _PARSERS.get(kind)
                if parser is not None:
                    parser(first, body)
    except ProtocolError:
        pass


def test_password_line_tool(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch.broker.auth", "meter"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=60,
        check=True,
    )
    line = done.stdout.strip()
    (tmp_path / "passwd").write_text(line + "\n")
    users = load_password_file(tmp_path / "passwd")
    assert list(users) == ["meter"]
    assert verify_password(b"s3cret", users["meter"])
