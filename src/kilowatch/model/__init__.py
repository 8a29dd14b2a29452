"""kilowatch.model: the shared vocabulary on the ground floor, beside :mod:`kilowatch.errors`.

``messages``: what a decoder makes of one MQTT message (``Reading``, ``Interval``,
``Availability``, ``Event``, ``DeviceInfo``, ``LogLine``). ``slots``: the unit of accounting, energy
per UTC-aligned 15-minute slot in integer mWh (``SlotEnergy``, ``SLOT_SECONDS``). Every other room
speaks these; this room imports nothing else of kilowatch.
"""

from kilowatch.model.messages import (
    Availability,
    DeviceInfo,
    Event,
    Interval,
    LogLine,
    Message,
    Reading,
)
from kilowatch.model.slots import (
    SLOT_SECONDS,
    ChannelKey,
    SlotEnergy,
    merge_slot_energy,
    slot_of,
)

__all__ = [
    "SLOT_SECONDS",
    "Availability",
    "ChannelKey",
    "DeviceInfo",
    "Event",
    "Interval",
    "LogLine",
    "Message",
    "Reading",
    "SlotEnergy",
    "merge_slot_energy",
    "slot_of",
]
