"""The proof of concept's hourly metering script (BRIEF "Where it comes from").

At each full hour the script publishes, on ``/system/<device id>/status``::

    {"fw_ver": "1.4.0-beta1", "hourly_energy_usage": 564.559, "hourly_ret_energy_usage": 0,
     "id": "shellypmminig3-ecda3bc4ddb0", "mac": "ECDA3BC4DDB0", "operational": true,
     "timestamp": 1720717200}

``hourly_*`` are Wh used in the hour that starts at ``timestamp`` (a multiple of 3600). It becomes
an ``Interval`` on channel ``hourly`` plus a ``DeviceInfo`` (MAC, firmware).

The script's topic is configurable (``CFG.topic``); when the user names this decoder any topic is
read, and the device is the payload's ``id``.
"""

from __future__ import annotations

from typing import Any

from kilowatch.decode.payload import (
    INVALID_PAYLOAD,
    MAX_TS,
    MISSING_TOPIC,
    counter,
    load_json,
    load_object,
    number,
)
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError
from kilowatch.model.messages import DeviceInfo, Interval, Message

NAME = "hourly"
CHANNEL = "hourly"
HOUR_S = 3600

_HEAD = "/system/"
_TAIL = "/status"


def _energy(doc: dict[str, Any], field: str, *, required: bool) -> float:
    value = doc.get(field)
    if value is None:
        if required:
            raise DecodeError(INVALID_PAYLOAD, f"hourly message has no {field!r}")
        # Scripts that meter consumption only may leave the export out: nothing was returned.
        return 0.0
    energy = counter(number(value, field=field), field=field)
    if energy < 0:
        raise DecodeError(INVALID_PAYLOAD, f"{field} must not be negative, got {value!r}")
    return energy


def _hour_start(value: object) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise DecodeError(
            INVALID_PAYLOAD, f"timestamp must be a unix time in seconds, got {value!r}"
        )
    if not 0 <= value <= MAX_TS - HOUR_S:
        raise DecodeError(
            INVALID_PAYLOAD, f"timestamp {value} is not a unix time from 0 to {MAX_TS - HOUR_S:.0f}"
        )
    if value % HOUR_S:
        raise DecodeError(
            INVALID_PAYLOAD,
            f"timestamp {value} is not the start of an hour (expected a multiple of {HOUR_S})",
        )
    return value


class HourlyDecoder:
    """Decoder for ``/system/<device id>/status`` hourly energy messages."""

    name = NAME
    subscriptions: tuple[str, ...] = ("/system/+/status",)

    def matches(self, topic: str) -> bool:
        """``/system/<id>/status`` with a one-level (possibly empty) id."""
        if not (topic.startswith(_HEAD) and topic.endswith(_TAIL)):
            return False
        return "/" not in topic[len(_HEAD) : -len(_TAIL)]

    def matches_any_layout(self, topic: str) -> bool:
        """Any topic: the script's topic is configurable (the user named the hourly decoder)."""
        return bool(topic)

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """One ``Interval`` for the hour and one ``DeviceInfo``; ``device`` is the topic's id."""
        doc = load_object(payload, what="hourly message")
        device = topic[len(_HEAD) : -len(_TAIL)] if self.matches(topic) else ""
        if not device:
            payload_id = doc.get("id")
            if type(payload_id) is not str or not payload_id:
                raise DecodeError(INVALID_PAYLOAD, "hourly message names no device ('id')")
            device = payload_id
        start = _hour_start(doc.get("timestamp"))
        interval = Interval(
            device,
            CHANNEL,
            start,
            start + HOUR_S,
            _energy(doc, "hourly_energy_usage", required=True),
            _energy(doc, "hourly_ret_energy_usage", required=False),
        )
        mac, fw_ver = doc.get("mac"), doc.get("fw_ver")
        info = DeviceInfo(
            device,
            received_at,
            mac=mac if type(mac) is str else None,
            fw_ver=fw_ver if type(fw_ver) is str else None,
        )
        return [interval, info]

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """A payload with ``hourly_energy_usage`` is ours; its ``id`` names the device."""
        if b"hourly_energy_usage" not in payload:
            return None
        try:
            doc = load_json(payload, what="payload")
        except DecodeError:
            return None
        if type(doc) is not dict or "hourly_energy_usage" not in doc:
            return None
        name = device or doc.get("id")
        if type(name) is not str or not name:
            raise DecodeError(
                MISSING_TOPIC, "this hourly message has no 'id'; pass --device <id> or --topic"
            )
        return f"{_HEAD}{name}{_TAIL}"
