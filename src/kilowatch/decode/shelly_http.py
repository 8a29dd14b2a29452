"""Shelly answers fetched over HTTP by the poller (docs/polling.md), for devices without MQTT.

The poller (:mod:`kilowatch.service.poller`) hands each answer to the pipeline like an MQTT
message, under a pseudo-topic that names the device and what was asked:

- ``$http/<device>/Shelly.GetStatus``: the ``result`` of a Gen2+ ``Shelly.GetStatus``
  (shelly-api.md §10), read exactly like a ``NotifyFullStatus``'s params
  (the Shelly decoder's own reader of a full status): the same channels (``pm1:0``, ``switch:0``,
  ``em:0`` and its phases, ``em1:1``...), the same device info;
- ``$http/<device>/status``: a Gen1 ``GET /status`` (§19), read exactly like the same JSON
  published on ``shellies/<id>/info`` (channels ``relay/<i>``, ``emeter/<i>``; ``meters[].total``
  in Watt-minutes, ``emeters[].total`` in Wh).

Topics starting with ``$`` are reserved in MQTT for the broker's own use (MQTT 3.1.1 §4.7.2):
no device can publish one, so these can never be mistaken for, or shadow, a real topic, and no
other decoder matches them. The decoder subscribes to nothing.

Time: a Gen2+ answer is stamped with the device's own ``sys.unixtime``, a Gen1 answer with its
``unixtime``, when present and plausible (a device whose clock is not set yet reports ``null`` or
``0``); otherwise with ``received_at`` and marked :attr:`Reading.stamped_on_receipt` (the ledger's
rule 12, as for MQTT payloads without a time).
"""

from __future__ import annotations

from dataclasses import replace

from kilowatch.decode.payload import MAX_TS, load_object

# The MQTT decoders' own readers of a whole status, so that a polled answer and the same status
# over MQTT can never decode differently (module-private there; this module is their one sibling).
from kilowatch.decode.shelly import _full_status as full_status
from kilowatch.decode.shelly_gen1 import _info as gen1_status
from kilowatch.decode.state import DecoderState
from kilowatch.model.messages import Message, Reading

NAME = "shelly-http"
ROOT = "$http/"
GEN2_STATUS = "Shelly.GetStatus"
GEN1_STATUS = "status"
MIN_DEVICE_TIME = 1_000_000_000.0
"""A device time before 2001-09-09 is a clock that was never set (Gen1 reports ``0``, a Gen2+
device an uptime-based time before NTP): the answer is stamped on receipt instead."""


def topic_for(device: str, what: str) -> str:
    """The pseudo-topic of an HTTP answer: ``what`` is :data:`GEN2_STATUS` or
    :data:`GEN1_STATUS`."""
    return f"{ROOT}{device}/{what}"


def device_time(value: object) -> float | None:
    """A device's unixtime as unix seconds, or ``None`` when it is absent or implausible."""
    if type(value) is int or type(value) is float:
        ts = float(value)
        if MIN_DEVICE_TIME <= ts <= MAX_TS:
            return ts
    return None


class ShellyHttpDecoder:
    """Decoder for the poller's ``$http/<device>/Shelly.GetStatus`` and ``.../status``."""

    name = NAME
    subscriptions: tuple[str, ...] = ()

    def matches(self, topic: str) -> bool:
        """``$http/<device>/Shelly.GetStatus`` or ``$http/<device>/status``."""
        if not topic.startswith(ROOT):
            return False
        device, _, what = topic[len(ROOT) :].partition("/")
        return bool(device) and what in (GEN2_STATUS, GEN1_STATUS)

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """Readings and device info of one answer (see the module docstring for the time)."""
        device, _, what = topic[len(ROOT) :].partition("/")
        status = load_object(payload, what=f"{what} answer")
        if what == GEN2_STATUS:
            sys = status.get("sys")
            ts = device_time(sys.get("unixtime")) if type(sys) is dict else None
            if ts is None:
                return full_status(device, received_at, status, state, on_receipt=True)
            return full_status(device, ts, status, state)
        ts = device_time(status.get("unixtime"))
        messages = gen1_status(device, payload, received_at if ts is None else ts)
        if ts is None:
            return messages
        # the info topic's reader stamps on receipt (that topic has no time): this answer has one
        return [_device_stamped(m) for m in messages]

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """An answer alone does not name its device: never guessed."""
        return None


def _device_stamped(message: Message) -> Message:
    if isinstance(message, Reading):
        return replace(message, stamped_on_receipt=False)
    return message
