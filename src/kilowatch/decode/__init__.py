"""kilowatch.decode: pure decoders that turn one MQTT message into normalised messages.

``default_registry().decode(topic, payload, received_at=..., state=DecoderState())`` is the whole
API for ingestion; ``registry.subscriptions()`` lists the MQTT topic filters the decoders need.
The messages themselves (``Reading``, ``Interval``...) are the vocabulary of :mod:`kilowatch.model`.
"""

from kilowatch.decode.registry import (
    Decoder,
    DecoderOptions,
    DecoderRegistry,
    ReadsAnyLayout,
    default_registry,
)
from kilowatch.decode.state import DecoderState

__all__ = [
    "Decoder",
    "DecoderOptions",
    "DecoderRegistry",
    "DecoderState",
    "ReadsAnyLayout",
    "default_registry",
]
