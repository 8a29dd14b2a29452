"""kilowatch.collect: decoders that turn MQTT messages into normalised messages.

``default_registry().decode(topic, payload, received_at=..., state=DecoderState())`` is the whole
API for ingestion; ``registry.subscriptions()`` lists the MQTT topic filters the decoders need.
"""

from kilowatch.collect.messages import (
    Availability,
    DeviceInfo,
    Event,
    Interval,
    LogLine,
    Message,
    Reading,
)
from kilowatch.collect.registry import (
    Decoder,
    DecoderOptions,
    DecoderRegistry,
    default_registry,
)
from kilowatch.collect.state import DecoderState

__all__ = [
    "Availability",
    "Decoder",
    "DecoderOptions",
    "DecoderRegistry",
    "DecoderState",
    "DeviceInfo",
    "Event",
    "Interval",
    "LogLine",
    "Message",
    "Reading",
    "default_registry",
]
