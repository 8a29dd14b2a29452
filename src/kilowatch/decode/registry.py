"""The decoder registry: the one extension point that turns ``(topic, payload)`` into messages.

Every decoder, built-in or third-party, implements :class:`Decoder` and is added with
:meth:`DecoderRegistry.register`. :meth:`DecoderRegistry.decode` picks the decoder (by topic, or by
the name the user asked for) and returns normalised :mod:`~kilowatch.model.messages`; anything it
cannot decode raises :class:`~kilowatch.errors.DecodeError` with a stable ``reason`` slug.

Which decoder takes a topic:

1. the user named one (``source=``, ``kilowatch decode --source``): that decoder, in any topic
   layout its source can be configured with (:class:`ReadsAnyLayout`), not only the configured
   ones; e.g. Tasmota under a ``FullTopic`` of ``home/%topic%/%prefix%/``;
2. a configured route (``DecoderOptions.topic_sources``) whose filter matches the topic: the
   decoder it names, as in 1;
3. otherwise auto-detection: the first registered decoder whose *configured* layouts
   (:meth:`Decoder.matches`) take the topic. Only 1 and 2 look beyond configured layouts, so a
   guess never changes which decoder takes a topic.

This is the hot path of ingestion: the decoder chosen for a topic is cached, so the per-message cost
is one dict lookup plus the decoder's own work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from kilowatch.decode.hourly import HourlyDecoder
from kilowatch.decode.payload import (
    INVALID_PAYLOAD,
    MISSING_TOPIC,
    TOO_DEEPLY_NESTED,
    UNKNOWN_SOURCE,
    UNKNOWN_TOPIC,
)
from kilowatch.decode.shelly import ShellyDecoder
from kilowatch.decode.shelly_gen1 import ShellyGen1Decoder
from kilowatch.decode.shelly_http import ShellyHttpDecoder
from kilowatch.decode.state import DecoderState
from kilowatch.decode.tasmota import TasmotaDecoder
from kilowatch.decode.zigbee2mqtt import Zigbee2MqttDecoder
from kilowatch.errors import ConfigError, DecodeError
from kilowatch.model.messages import Message

AUTO = "auto"

# A broker sees a bounded set of topics (devices × topics per device); the cache is a plain dict
# that is dropped wholesale if a flood of one-off topics ever makes it this large.
_TOPIC_CACHE_LIMIT = 100_000


class Decoder(Protocol):
    """One family of payloads (``shelly``, ``tasmota``...). Pure: no I/O, no clock reads."""

    @property
    def name(self) -> str:
        """The name ``kilowatch decode --source`` uses, and ``DeviceUpdate.source`` records."""
        ...

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The MQTT topic filters that deliver this decoder's messages (``tele/+/SENSOR``...)."""
        ...

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` is one of this decoder's topics (cheap string tests, no regex)."""
        ...

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """The messages in one MQTT message; ``[]`` for known topics that carry nothing we use.

        Raises ``DecodeError`` for malformed input. ``received_at`` (unix seconds) stamps messages
        whose payload carries no usable time of its own.
        """
        ...

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """A topic this decoder would accept for a payload seen without one, or ``None`` if the
        payload does not look like one of ours. Raise ``DecodeError("missing_topic")`` when it does
        but the device part cannot be known.
        """
        ...


@runtime_checkable
class ReadsAnyLayout(Protocol):
    """A decoder that can read its source's topics in layouts it was not configured for.

    Optional: the registry uses it only when the user names the decoder (``source=``, a
    ``topic_sources`` route), never for auto-detection, so that a loose match cannot take a topic
    from another decoder. ``decode`` then reads ``topic`` in whatever layout this accepts.
    """

    def matches_any_layout(self, topic: str) -> bool:
        """Whether ``decode`` can read ``topic`` in some layout of this source (a Tasmota
        ``FullTopic``, a Zigbee2MQTT base topic...), configured or not."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoderOptions:
    """Topic layout of the built-in decoders (docs/sources.md, "Configuring topics").

    ``shelly_topic_prefixes`` are MQTT filter fragments for the Gen2+ ``topic_prefix``: the default
    ``+`` subscribes ``+/events/rpc`` etc. (device id or any one-level custom prefix); add e.g.
    ``home/+`` for prefixes of two levels. Decoding itself accepts any prefix.
    ``tasmota_full_topics`` are Tasmota ``FullTopic`` patterns (``%prefix%/%topic%/`` by default).
    ``zigbee2mqtt_base_topics`` are Zigbee2MQTT ``base_topic`` values.
    ``topic_sources`` are routes ``(MQTT topic filter, decoder name)``: a topic the filter matches
    goes to that decoder, read in any layout of its source (``("site/#", "tasmota")`` for
    Tasmotas under ``FullTopic`` ``%prefix%/site/%topic%/``); the first matching route wins, and
    each filter is also subscribed.
    """

    shelly_topic_prefixes: tuple[str, ...] = ("+",)
    tasmota_full_topics: tuple[str, ...] = ("%prefix%/%topic%/",)
    zigbee2mqtt_base_topics: tuple[str, ...] = ("zigbee2mqtt",)
    topic_sources: tuple[tuple[str, str], ...] = ()


def _filter_levels(topic_filter: str) -> tuple[str, ...]:
    """The levels of an MQTT topic filter; ``ConfigError`` if it is not a valid filter."""
    levels = tuple(topic_filter.split("/"))
    for i, level in enumerate(levels):
        stray = ("#" in level or "+" in level) and level not in ("+", "#")
        if not topic_filter or stray or (level == "#" and i != len(levels) - 1):
            raise ConfigError(
                f"topic_sources: {topic_filter!r} is not an MQTT topic filter ('+' and '#' must "
                "be whole levels, '#' only the last), e.g. 'site/#' or 'home/+/tele/+'"
            )
    return levels


def _filter_matches(levels: tuple[str, ...], topic: str) -> bool:
    """Whether an MQTT topic filter (split in levels) matches ``topic`` (MQTT 3.1.1 §4.7)."""
    parts = topic.split("/")
    for i, want in enumerate(levels):
        if want == "#":
            return not (i == 0 and topic.startswith("$"))
        if i >= len(parts) or (want != "+" and want != parts[i]):
            return False
        if i == 0 and want == "+" and topic.startswith("$"):
            return False
    return len(parts) == len(levels)


class DecoderRegistry:
    """Decoders by name, tried in registration order when the source is ``auto``."""

    def __init__(
        self, decoders: Iterable[Decoder] = (), *, topic_sources: Iterable[tuple[str, str]] = ()
    ) -> None:
        """``topic_sources``: routes ``(MQTT topic filter, decoder name)``, as in
        :class:`DecoderOptions`; ``ConfigError`` for an invalid filter or an unknown name."""
        self._decoders: list[Decoder] = []
        self._by_name: dict[str, Decoder] = {}
        self._by_topic: dict[str, Decoder | None] = {}
        for decoder in decoders:
            self.register(decoder)
        self._routes: list[tuple[str, tuple[str, ...], Decoder]] = []
        for topic_filter, name in topic_sources:
            routed = self._by_name.get(name)
            if routed is None:
                raise ConfigError(
                    f"topic_sources: {topic_filter!r} names no decoder {name!r}; "
                    f"known: {', '.join(self._by_name)}"
                )
            self._routes.append((topic_filter, _filter_levels(topic_filter), routed))

    def register(self, decoder: Decoder) -> None:
        """Add a decoder. Auto-detection tries decoders in the order they were registered, so
        register specific topic layouts before generic ones."""
        if decoder.name in self._by_name or decoder.name == AUTO:
            raise ValueError(f"a decoder named {decoder.name!r} is already registered")
        self._decoders.append(decoder)
        self._by_name[decoder.name] = decoder
        self._by_topic.clear()

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the registered decoders, in registration order."""
        return tuple(self._by_name)

    def get(self, name: str) -> Decoder:
        """The decoder called ``name``; ``DecodeError("unknown_source")`` if there is none."""
        decoder = self._by_name.get(name)
        if decoder is None:
            known = ", ".join(self._by_name)
            raise DecodeError(UNKNOWN_SOURCE, f"no decoder named {name!r}; known: auto, {known}")
        return decoder

    def subscriptions(self) -> list[str]:
        """Every MQTT topic filter the routes and the registered decoders need, without
        duplicates, in order."""
        seen: dict[str, None] = {topic_filter: None for topic_filter, _, _ in self._routes}
        for decoder in self._decoders:
            for topic_filter in decoder.subscriptions:
                seen.setdefault(topic_filter, None)
        return list(seen)

    def decoder_for(self, topic: str) -> Decoder | None:
        """The decoder that takes ``topic`` when no source is named (cached per topic): the one a
        matching route names, if it can read the topic; else the first registered decoder whose
        configured layouts include it."""
        try:
            return self._by_topic[topic]
        except KeyError:
            pass
        found: Decoder | None
        route = self._route(topic)
        if route is not None:
            # a routed topic belongs to the route's source: no other decoder may take it
            found = route if _reads(route, topic) else None
        else:
            found = next((d for d in self._decoders if d.matches(topic)), None)
        if len(self._by_topic) >= _TOPIC_CACHE_LIMIT:
            self._by_topic.clear()
        self._by_topic[topic] = found
        return found

    def _route(self, topic: str) -> Decoder | None:
        for _, levels, decoder in self._routes:
            if _filter_matches(levels, topic):
                return decoder
        return None

    def decode(
        self,
        topic: str,
        payload: bytes,
        *,
        received_at: float,
        state: DecoderState,
        source: str = AUTO,
        device: str | None = None,
    ) -> list[Message]:
        """Decode one MQTT message.

        ``source`` names a decoder, or ``auto`` to pick one by topic. ``device``, when given,
        replaces the device identity of every message (treat the message as coming from that
        device). Raises ``DecodeError`` with reason ``unknown_topic``, ``unknown_source``,
        ``invalid_json``, ``invalid_payload``, ``unknown_method``, ``payload_too_large``,
        ``too_deeply_nested`` (docs/sources.md).
        """
        if source == AUTO:
            by_topic = self._by_topic  # decoder_for's cache, read inline: this is the hot path
            decoder = by_topic[topic] if topic in by_topic else self.decoder_for(topic)
            if decoder is None:
                raise self._unknown_topic(topic)
        else:
            decoder = self.get(source)
            if not _reads(decoder, topic):
                raise DecodeError(UNKNOWN_TOPIC, f"{topic!r} is not a {source} topic")
        try:
            messages = decoder.decode(topic, payload, received_at=received_at, state=state)
        except DecodeError:
            raise
        except RecursionError as err:
            # The built-in decoders refuse deep JSON before parsing (payload.MAX_JSON_DEPTH); a
            # decoder that parses by itself may still recurse too deep.
            raise DecodeError(
                TOO_DEEPLY_NESTED, f"{decoder.name}: payload on {topic!r} nests too deeply"
            ) from err
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            # A payload shape no decoder rule foresaw must become a dead letter, never stop
            # ingestion.
            raise DecodeError(
                INVALID_PAYLOAD, f"{decoder.name}: unexpected payload on {topic!r}: {err!r}"
            ) from err
        if device is not None:
            messages = [replace(message, device=device) for message in messages]
        return messages

    def _unknown_topic(self, topic: str) -> DecodeError:
        route = self._route(topic)
        if route is not None:
            return DecodeError(
                UNKNOWN_TOPIC,
                f"{topic!r} is routed to {route.name} (topic_sources) but is not a {route.name} "
                "topic",
            )
        return DecodeError(
            UNKNOWN_TOPIC,
            f"no decoder knows the topic {topic!r} (decoders: {', '.join(self._by_name)}); "
            "for a custom topic layout name the source (--source, or a topic_sources route)",
        )

    def guess_topic(self, payload: bytes, *, source: str = AUTO, device: str | None = None) -> str:
        """A topic for a payload seen without one (``kilowatch decode`` without ``--topic``).

        Raises ``DecodeError("missing_topic")`` saying what to pass when the payload does not tell.
        """
        candidates: Sequence[Decoder] = self._decoders if source == AUTO else [self.get(source)]
        for decoder in candidates:
            topic = decoder.guess_topic(payload, device=device)
            if topic is not None:
                return topic
        raise DecodeError(
            MISSING_TOPIC,
            "cannot tell the topic from this payload alone; pass --topic "
            "(e.g. --topic shellies/<id>/relay/0/power or --topic <prefix>/online)",
        )


def _reads(decoder: Decoder, topic: str) -> bool:
    """Whether a decoder the user named can read ``topic``: in a configured layout, or in any
    layout if it is a :class:`ReadsAnyLayout`."""
    if decoder.matches(topic):
        return True
    return isinstance(decoder, ReadsAnyLayout) and decoder.matches_any_layout(topic)


def default_registry(options: DecoderOptions | None = None) -> DecoderRegistry:
    """A registry holding the built-in decoders, most specific topic layouts first.

    Raises ``ConfigError`` for an invalid Tasmota full topic or ``topic_sources`` route.
    """
    options = options or DecoderOptions()
    return DecoderRegistry(
        [
            HourlyDecoder(),
            ShellyHttpDecoder(),
            ShellyGen1Decoder(),
            TasmotaDecoder(full_topics=options.tasmota_full_topics),
            Zigbee2MqttDecoder(base_topics=options.zigbee2mqtt_base_topics),
            ShellyDecoder(topic_prefixes=options.shelly_topic_prefixes),
        ],
        topic_sources=options.topic_sources,
    )


__all__ = [
    "AUTO",
    "Decoder",
    "DecoderOptions",
    "DecoderRegistry",
    "DecoderState",
    "ReadsAnyLayout",
    "default_registry",
]
