"""Zigbee2MQTT metering plugs and meters (shelly-api.md §20).

For every configured base topic (``zigbee2mqtt`` by default):

- ``<base>/<friendly name>``: the device state JSON; ``energy`` (kWh, cumulative) → ``energy_wh``,
  ``produced_energy`` (kWh) → ``returned_energy_wh``, ``power`` W, ``voltage`` V, ``current`` A,
  ``ac_frequency`` Hz, ``power_factor``; channel ``default``. A state without any of these (a
  thermometer, a switch) decodes to ``[]``. Z2M payloads carry no reliable time: ``ts`` is
  ``received_at``.
- ``<base>/<friendly name>/availability``: ``{"state": "online"}`` or, in legacy mode, ``online``.
- ``<base>/bridge/...`` and ``<base>/<name>/set|get`` (commands, not state) decode to ``[]``.

Friendly names may contain ``/``; everything between the base topic and a known suffix is the name.
When the user names this decoder, a topic under no configured base topic is read with its first
level as the base (``z2m/living room plug`` → ``living room plug``).
"""

from __future__ import annotations

from kilowatch.decode.payload import (
    INVALID_PAYLOAD,
    MISSING_TOPIC,
    counter,
    kwh_to_wh,
    load_json,
    load_object,
    number,
    preview,
    usable,
)
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError
from kilowatch.model.messages import Availability, Message, Reading

NAME = "zigbee2mqtt"
CHANNEL = "default"
DEFAULT_BASE_TOPIC = "zigbee2mqtt"

_AVAILABILITY = "/availability"
_COMMAND_SUFFIXES = ("/set", "/get")

# state field → (Reading attribute, converts kWh)
_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("power", "power_w", False),
    ("voltage", "voltage_v", False),
    ("current", "current_a", False),
    ("ac_frequency", "frequency_hz", False),
    ("energy", "energy_wh", True),
    ("produced_energy", "returned_energy_wh", True),
    ("power_factor", "power_factor", False),
)


class Zigbee2MqttDecoder:
    """Decoder for ``<base>/#`` of one or more Zigbee2MQTT instances."""

    name = NAME

    def __init__(self, *, base_topics: tuple[str, ...] = (DEFAULT_BASE_TOPIC,)) -> None:
        self._bases = tuple(base.strip("/") + "/" for base in base_topics)
        self.subscriptions: tuple[str, ...] = tuple(f"{base}#" for base in self._bases)
        self._default_base = self._bases[0] if self._bases else DEFAULT_BASE_TOPIC + "/"

    def _rest(self, topic: str) -> str | None:
        for base in self._bases:
            if topic.startswith(base) and len(topic) > len(base):
                return topic[len(base) :]
        return None

    def matches(self, topic: str) -> bool:
        """Any topic below a configured base topic."""
        return self._rest(topic) is not None

    def matches_any_layout(self, topic: str) -> bool:
        """Any topic below a configured base topic, or below any one-level base (the user named
        Zigbee2MQTT)."""
        return self._rest(topic) is not None or _rest_below_first_level(topic) is not None

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """A reading on channel ``default`` or availability; ``[]`` for bridge and commands."""
        rest = self._rest(topic) or _rest_below_first_level(topic)
        if rest is None or rest == "bridge" or rest.startswith("bridge/"):
            return []
        if rest.endswith(_COMMAND_SUFFIXES) or "/set/" in rest or "/get/" in rest:
            return []
        if rest.endswith(_AVAILABILITY):
            return [_availability(rest[: -len(_AVAILABILITY)], payload, received_at)]
        doc = load_object(payload, what=f"Zigbee2MQTT state of {rest!r}")
        fields = {}
        for field, attr, kwh in _FIELDS:
            value = doc.get(field)
            if value is not None:
                converted = number(value, field=field)
                if kwh:
                    fields[attr] = counter(kwh_to_wh(converted), field=field)  # raises
                elif usable(converted):  # a sample out of range is left out
                    fields[attr] = converted
        if not fields:
            return []
        return [Reading(rest, CHANNEL, received_at, stamped_on_receipt=True, **fields)]

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """A JSON object with ``linkquality`` is a Z2M device state; its name is not in it."""
        if b"linkquality" not in payload:
            return None
        try:
            doc = load_json(payload, what="payload")
        except DecodeError:
            return None
        if type(doc) is not dict or "linkquality" not in doc:
            return None
        if not device:
            raise DecodeError(
                MISSING_TOPIC,
                "this looks like a Zigbee2MQTT device state, which does not name its device; "
                f"pass --device <friendly name> or --topic {self._default_base}<friendly name>",
            )
        return f"{self._default_base}{device}"


def _rest_below_first_level(topic: str) -> str | None:
    """The friendly name (and suffix) of ``topic`` under an unknown one-level base topic."""
    base, _, rest = topic.partition("/")
    return rest if base and rest else None


def _availability(name: str, payload: bytes, received_at: float) -> Message:
    body = payload.strip()
    word: object = body
    if body.startswith(b"{"):
        doc = load_object(payload, what="Zigbee2MQTT availability")
        word = doc.get("state")
        if type(word) is str:
            word = word.encode()
    if word == b"online":
        return Availability(name, True, received_at)
    if word == b"offline":
        return Availability(name, False, received_at)
    raise DecodeError(
        INVALID_PAYLOAD,
        f'Zigbee2MQTT availability must be online/offline or {{"state": ...}}, '
        f"got {preview(payload)!r}",
    )
