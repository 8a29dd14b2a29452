"""MQTT 3.1.1 control packets: a streaming frame reader, parsers and encoders.

Pure code, no I/O: the connection feeds received bytes to :class:`FrameReader` and writes what the
``encode_*`` functions return. Section numbers refer to the MQTT 3.1.1 OASIS standard
(http://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from kilowatch.errors import PacketTooLargeError, ProtocolError


class PacketType(IntEnum):
    """Control packet types (§2.2.1), the high nibble of the first byte."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnectReturnCode(IntEnum):
    """CONNACK return codes (§3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


# Protocol names and levels we accept (§3.1.2.1-2): 3.1.1 is level 4 "MQTT"; 3.1 is level 3
# "MQIsdp".
PROTOCOLS: dict[str, int] = {"MQTT": 4, "MQIsdp": 3}
# MQTT 5.0 is level 5, name "MQTT" (MQTT 5.0 §3.1.2.2). Its CONNECT carries properties after the
# keepalive and before the will topic, so its body cannot be read with the 3.1.1 layout.
MQTT5_LEVEL = 5
# §2.2.3: the remaining length is at most four bytes, i.e. 268 435 455.
MAX_REMAINING_LENGTH = 268_435_455
SUBACK_FAILURE = 0x80
PINGRESP = bytes((PacketType.PINGRESP << 4, 0))

# §2.2.2: the reserved flag nibble each packet type must carry (PUBLISH carries dup/qos/retain
# instead).
_REQUIRED_FLAGS: dict[int, int] = {
    PacketType.CONNECT: 0,
    PacketType.PUBACK: 0,
    PacketType.PUBREC: 0,
    PacketType.PUBREL: 2,
    PacketType.PUBCOMP: 0,
    PacketType.SUBSCRIBE: 2,
    PacketType.UNSUBSCRIBE: 2,
    PacketType.PINGREQ: 0,
    PacketType.DISCONNECT: 0,
}


@dataclass(frozen=True, slots=True)
class Will:
    """A last-will message from CONNECT (§3.1.2.5)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    """A parsed CONNECT packet (§3.1)."""

    protocol_name: str
    protocol_level: int
    clean_session: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None


class Publish(NamedTuple):
    """A parsed PUBLISH packet (§3.3); ``packet_id`` is 0 for QoS 0.

    A NamedTuple rather than a frozen dataclass: one is built per message, and tuples are cheaper.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


class FrameReader:
    """Splits a byte stream into ``(first byte, body)`` frames.

    The remaining length is checked against ``max_packet_size`` as soon as its bytes arrive, so an
    oversized packet is refused before its body is buffered. Received chunks are parsed in place;
    only an incomplete tail is buffered, and it is not parsed again until the bytes it waits for
    have arrived (a large packet trickling in costs linear, not quadratic, time).
    """

    __slots__ = ("_buf", "_need", "max_packet_size")

    def __init__(self, max_packet_size: int) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes the buffered tail needs before it is worth parsing again
        self.max_packet_size = max_packet_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return every frame now complete, in order."""
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        frames: list[tuple[int, bytes]] = []
        pos = 0
        end = len(data)
        need = 0
        while end - pos >= 2:
            length = data[pos + 1]
            i = pos + 2
            if length & 0x80:  # a multi-byte remaining length (§2.2.3)
                length, i = self._long_length(data, pos)
                if i < 0:
                    break  # the remaining-length field has not fully arrived yet
            total = i - pos + length
            if total > self.max_packet_size:
                raise PacketTooLargeError(
                    "packet_too_large",
                    f"packet of {total} bytes exceeds max_packet_size {self.max_packet_size}",
                )
            if end - i < length:
                need = total
                break
            frames.append((data[pos], data[i : i + length]))
            pos = i + length
        if pos < end:
            buf += memoryview(data)[pos:]
            self._need = need
        return frames

    @staticmethod
    def _long_length(data: bytes, pos: int) -> tuple[int, int]:
        """Decode a remaining length starting at ``pos + 1``: ``(length, body start)``, or
        ``(0, -1)`` if the field is incomplete."""
        length = 0
        multiplier = 1
        i = pos + 1
        end = len(data)
        while i < end:
            byte = data[i]
            i += 1
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                return length, i
            multiplier <<= 7
            if multiplier > 128**3:
                raise ProtocolError("malformed", "remaining length is longer than four bytes")
        return 0, -1


def check_flags(first: int) -> int:
    """The packet type of a first byte; raise if its flags are not the reserved values (§2.2.2)."""
    kind = first >> 4
    if kind == PacketType.PUBLISH:
        if (first >> 1) & 3 == 3:
            raise ProtocolError("malformed", "PUBLISH with QoS 3")
        return kind
    required = _REQUIRED_FLAGS.get(kind)
    if required is None:
        raise ProtocolError("malformed", f"packet type {kind} is not one a client may send")
    if first & 0x0F != required:
        raise ProtocolError(
            "malformed", f"packet type {kind} with reserved flags {first & 0x0F:#x}"
        )
    return kind


class _Cursor:
    """Reads MQTT fields from a packet body, raising :class:`ProtocolError` on truncation."""

    __slots__ = ("body", "pos")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def remaining(self) -> int:
        return len(self.body) - self.pos

    def u8(self) -> int:
        if self.pos + 1 > len(self.body):
            raise ProtocolError("malformed", "packet ends inside a field")
        value = self.body[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise ProtocolError("malformed", "packet ends inside a field")
        value = int.from_bytes(self.body[self.pos : self.pos + 2], "big")
        self.pos += 2
        return value

    def binary(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.body):
            raise ProtocolError("malformed", "packet ends inside a string")
        value = self.body[self.pos : self.pos + n]
        self.pos += n
        return value

    def string(self) -> str:
        return decode_string(self.binary())


def decode_string(raw: bytes) -> str:
    """A UTF-8 string field (§1.5.3): well-formed UTF-8 without U+0000."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError("malformed", "string is not valid UTF-8") from err
    if "\x00" in text:
        raise ProtocolError("malformed", "string contains U+0000")
    return text


def parse_connect_protocol(body: bytes) -> tuple[str, int]:
    """The protocol name and level a CONNECT body starts with (§3.1.2.1-2).

    Read them first: the rest of the body is laid out by the protocol they name (MQTT 5 adds
    properties), so it can only be parsed once they are known to be 3.1.1 or 3.1.
    """
    cur = _Cursor(body)
    return cur.string(), cur.u8()


def parse_connect(body: bytes) -> Connect:
    """Parse a CONNECT body (§3.1) of MQTT 3.1.1 or 3.1 (see :data:`PROTOCOLS`).

    Any other protocol name or level raises :class:`ProtocolError` (``unsupported_protocol``)
    without reading further; a broker checks :func:`parse_connect_protocol` first to answer it.
    """
    cur = _Cursor(body)
    name = cur.string()
    level = cur.u8()
    if PROTOCOLS.get(name) != level:
        raise ProtocolError(
            "unsupported_protocol", f"CONNECT for protocol {name!r} level {level}, not MQTT 3.1.1"
        )
    flags = cur.u8()
    if flags & 0x01:
        raise ProtocolError("malformed", "CONNECT reserved flag is set")  # §3.1.2.3
    keepalive = cur.u16()
    client_id = cur.string()
    will = None
    will_qos = (flags >> 3) & 3
    if flags & 0x04:
        if will_qos == 3:
            raise ProtocolError("malformed", "will QoS 3")
        topic = cur.string()
        payload = cur.binary()
        will = Will(topic, payload, will_qos, bool(flags & 0x20))
    elif will_qos or flags & 0x20:
        raise ProtocolError("malformed", "will QoS/retain set without the will flag")  # §3.1.2.6-7
    username = cur.string() if flags & 0x80 else None
    password = cur.binary() if flags & 0x40 else None
    if password is not None and username is None:
        raise ProtocolError("malformed", "password without user name")  # §3.1.2.9
    if cur.remaining():
        raise ProtocolError("malformed", "CONNECT has trailing bytes")
    return Connect(name, level, bool(flags & 0x02), keepalive, client_id, will, username, password)


def parse_publish(first: int, body: bytes) -> Publish:
    """Parse a PUBLISH (§3.3). The topic name is decoded but not yet checked for wildcards."""
    qos = (first >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    if len(body) < 2 + n:
        raise ProtocolError("malformed", "PUBLISH ends inside its topic")
    topic = decode_string(body[2 : 2 + n])
    pos = 2 + n
    packet_id = 0
    if qos:
        if len(body) < pos + 2:
            raise ProtocolError("malformed", "PUBLISH ends inside its packet identifier")
        packet_id = int.from_bytes(body[pos : pos + 2], "big")
        if packet_id == 0:
            raise ProtocolError("malformed", "packet identifier 0")  # §2.3.1
        pos += 2
    return Publish(topic, body[pos:], qos, bool(first & 1), bool(first & 8), packet_id)


def _nonzero(packet_id: int) -> int:
    if packet_id == 0:
        raise ProtocolError("malformed", "packet identifier 0")  # §2.3.1
    return packet_id


def parse_packet_id(body: bytes) -> int:
    """The packet identifier of PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK."""
    if len(body) != 2:
        raise ProtocolError("malformed", f"acknowledgement of {len(body)} bytes, expected 2")
    return int.from_bytes(body, "big")


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """Parse a SUBSCRIBE (§3.8): packet id and ``(filter, requested qos)`` pairs."""
    cur = _Cursor(body)
    packet_id = _nonzero(cur.u16())
    pairs: list[tuple[str, int]] = []
    while cur.remaining():
        topic_filter = cur.string()
        options = cur.u8()
        if options & 0xFC or options & 3 == 3:
            raise ProtocolError("malformed", f"SUBSCRIBE options byte {options:#x}")  # §3.8.3.1
        pairs.append((topic_filter, options & 3))
    if not pairs:
        raise ProtocolError("malformed", "SUBSCRIBE without a topic filter")  # §3.8.3-3
    return packet_id, pairs


def parse_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    """Parse an UNSUBSCRIBE (§3.10): packet id and filters."""
    cur = _Cursor(body)
    packet_id = _nonzero(cur.u16())
    filters: list[str] = []
    while cur.remaining():
        filters.append(cur.string())
    if not filters:
        raise ProtocolError("malformed", "UNSUBSCRIBE without a topic filter")  # §3.10.3-2
    return packet_id, filters


def parse_connack(body: bytes) -> tuple[bool, int]:
    """Parse a CONNACK (§3.2): session present and the return code (0 accepted; see
    :class:`ConnectReturnCode`; a broker may send codes this standard does not name)."""
    if len(body) != 2:
        raise ProtocolError("malformed", f"CONNACK of {len(body)} bytes, expected 2")
    return bool(body[0] & 1), body[1]


def parse_suback(body: bytes) -> tuple[int, list[int]]:
    """Parse a SUBACK (§3.9): packet id and one granted QoS (or 0x80, refused) per filter."""
    if len(body) < 3:
        raise ProtocolError("malformed", "SUBACK without a return code")  # §3.9.3
    return int.from_bytes(body[:2], "big"), list(body[2:])


def encode_length(n: int) -> bytes:
    """The variable-length remaining length (§2.2.3)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_string(text: str) -> bytes:
    """A length-prefixed UTF-8 string."""
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def encode_connack(session_present: bool, code: ConnectReturnCode) -> bytes:
    """CONNACK (§3.2)."""
    return bytes((PacketType.CONNACK << 4, 2, int(session_present), int(code)))


def encode_ack(kind: PacketType, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 2, §3.6.1), PUBCOMP or UNSUBACK."""
    flags = 2 if kind == PacketType.PUBREL else 0
    return bytes((kind << 4 | flags, 2)) + packet_id.to_bytes(2, "big")


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    """SUBACK (§3.9): one granted QoS or 0x80 per requested filter."""
    body = packet_id.to_bytes(2, "big") + bytes(codes)
    return bytes((PacketType.SUBACK << 4,)) + encode_length(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    keepalive: int = 60,
    clean_session: bool = True,
    will: Will | None = None,
    username: str | None = None,
    password: bytes | None = None,
    protocol_name: str = "MQTT",
    protocol_level: int = 4,
    properties: bytes | None = None,
    will_properties: bytes = b"",
) -> bytes:
    """CONNECT (§3.1): what a client sends (the simulator's client; tests and raw-MQTT tools).

    With ``protocol_level=5`` the packet has the MQTT 5.0 layout (MQTT 5.0 §3.1.2.11, §3.1.3.2):
    the encoded ``properties`` (default none) after the keepalive and ``will_properties`` before
    the will topic, each preceded by its length as a variable byte integer. The properties are
    given encoded (identifier byte, value), e.g. ``b"\x11" + (3600).to_bytes(4, "big")`` for a
    session expiry interval. Other levels have no properties.
    """
    mqtt5 = protocol_level == MQTT5_LEVEL
    if not mqtt5 and (properties is not None or will_properties):
        raise ValueError("only an MQTT 5 (protocol_level=5) CONNECT has properties")
    flags = 0x02 if clean_session else 0
    payload = encode_string(client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        if mqtt5:
            payload += encode_length(len(will_properties)) + will_properties
        payload += encode_string(will.topic) + len(will.payload).to_bytes(2, "big") + will.payload
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
    if password is not None:
        flags |= 0x40
        payload += len(password).to_bytes(2, "big") + password
    header = encode_string(protocol_name) + bytes((protocol_level, flags))
    header += keepalive.to_bytes(2, "big")
    if mqtt5:
        props = properties or b""
        header += encode_length(len(props)) + props
    body = header + payload
    return bytes((PacketType.CONNECT << 4,)) + encode_length(len(body)) + body


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
) -> bytes:
    """A whole PUBLISH packet (§3.3). The broker's hot path builds its packets from cached parts."""
    first = PacketType.PUBLISH << 4 | dup << 3 | qos << 1 | retain
    body = encode_string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes((first,)) + encode_length(len(body)) + body


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]]) -> bytes:
    """SUBSCRIBE (§3.8): a client's ``(filter, requested qos)`` pairs (flags 2, §3.8.1)."""
    body = packet_id.to_bytes(2, "big") + b"".join(
        encode_string(topic_filter) + bytes((qos,)) for topic_filter, qos in filters
    )
    return bytes((PacketType.SUBSCRIBE << 4 | 2,)) + encode_length(len(body)) + body


def encode_unsubscribe(packet_id: int, filters: Sequence[str]) -> bytes:
    """UNSUBSCRIBE (§3.10): a client's filters (flags 2, §3.10.1)."""
    body = packet_id.to_bytes(2, "big") + b"".join(encode_string(f) for f in filters)
    return bytes((PacketType.UNSUBSCRIBE << 4 | 2,)) + encode_length(len(body)) + body


# Packets that are a fixed header alone: no variable header, no payload (§3.12-3.14).
_BARE = frozenset((PacketType.PINGREQ, PacketType.PINGRESP, PacketType.DISCONNECT))


def encode_packet(kind: PacketType) -> bytes:
    """A packet that is a fixed header alone: PINGREQ, PINGRESP or DISCONNECT."""
    if kind not in _BARE:
        raise ValueError(f"{kind.name} has a body; use its own encode_* function")
    return bytes((kind << 4, 0))
