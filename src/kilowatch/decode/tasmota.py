"""Tasmota energy monitoring over MQTT (shelly-api.md §20).

Topics follow the device's ``FullTopic`` (default ``%prefix%/%topic%/``); other layouts are
configured as patterns with the same tokens: ``%prefix%`` (``tele``/``stat``), and ``%topic%``,
``%hostname%`` or ``%id%`` for the device part, each a whole topic level. When the user names this
decoder, any layout is read (:meth:`TasmotaDecoder.matches_any_layout`): a topic ending in a known
leaf with its ``tele``/``stat`` level somewhere before; the device is every other level, joined
(``home/kitchen/tele/SENSOR`` → ``home/kitchen``), so that devices of two sites never merge.

- ``tele/<topic>/SENSOR`` and ``stat/<topic>/STATUS8`` (``{"StatusSNS": ...}``): the
  ``ENERGY`` object. ``Total``/``ExportActive`` kWh → ``energy_wh``/``returned_energy_wh``;
  ``Power`` W, ``ApparentPower`` VA, ``ReactivePower`` var, ``Factor``, ``Voltage`` V,
  ``Current`` A, ``Frequency`` Hz. ``Time`` is local time without a zone, so ``ts`` is
  ``received_at``.

How the ENERGY object's shapes map to channels (they vary with the meter and firmware settings):

- a multi-channel meter (Shelly 2.5: two relays; Shelly 3EM: three phases) gives per-channel
  fields as arrays: item ``i`` goes to channel ``ENERGY/<i+1>``;
- ``Voltage`` and ``Frequency`` given once (scalar) beside arrays are the supply the channels
  share: they apply to every ``ENERGY/<i>`` (and to ``ENERGY`` when it has a reading);
- other scalars beside arrays describe the whole device and stay on ``ENERGY``: by default
  ``Total`` is the sum of the channels (an array per channel only with ``SetOption129 1``), so
  a device's counter is on ``ENERGY`` or on its parts, never on both;
- arrays that are not per channel are not read: ``TotalTariff``/``ExportTariff`` hold one
  counter per tariff, ``Today``/``Yesterday``/``Period`` are not counters.
- ``tele/<topic>/LWT``: ``Online``/``Offline``.
- ``tele/<topic>/STATE`` (uptime), ``tele/<topic>/INFO1`` (module, version), ``INFO2`` (IP address).
"""

from __future__ import annotations

from typing import Any

from kilowatch.decode.payload import (
    MISSING_TOPIC,
    counter,
    kwh_to_wh,
    load_json,
    load_object,
    number,
    text_bool,
    usable,
)
from kilowatch.decode.state import DecoderState
from kilowatch.errors import ConfigError, DecodeError
from kilowatch.model.messages import Availability, DeviceInfo, Message, Reading

NAME = "tasmota"
CHANNEL = "ENERGY"
DEFAULT_FULL_TOPIC = "%prefix%/%topic%/"

_PREFIX_TOKEN = "%prefix%"
_DEVICE_TOKENS = ("%topic%", "%hostname%", "%id%")
_DEVICE = object()
_PREFIX = object()

# leaf → the %prefix% Tasmota publishes it under
_LEAVES: dict[str, str] = {
    "SENSOR": "tele",
    "LWT": "tele",
    "STATE": "tele",
    "INFO1": "tele",
    "INFO2": "tele",
    "STATUS8": "stat",
}

# ENERGY field → (Reading attribute, a kWh counter, shared by every channel when scalar). Shared
# fields are the supply's: Tasmota prints them once when the channels measure one supply (its
# "voltage_common" / "frequency_common"), e.g. one Voltage beside a Power per relay on a Shelly 2.5.
_ENERGY_FIELDS: tuple[tuple[str, str, bool, bool], ...] = (
    ("Power", "power_w", False, False),
    ("Voltage", "voltage_v", False, True),
    ("Current", "current_a", False, False),
    ("Frequency", "frequency_hz", False, True),
    ("Total", "energy_wh", True, False),
    ("ExportActive", "returned_energy_wh", True, False),
    ("ApparentPower", "apparent_power_va", False, False),
    ("ReactivePower", "reactive_power_var", False, False),
    ("Factor", "power_factor", False, False),
)


def _compile(full_topic: str) -> tuple[object, ...]:
    levels = full_topic.strip("/").split("/")
    out: list[object] = []
    for level in levels:
        if level == _PREFIX_TOKEN:
            out.append(_PREFIX)
        elif level in _DEVICE_TOKENS:
            out.append(_DEVICE)
        elif "%" in level or not level or "+" in level or "#" in level:
            raise ConfigError(
                f"Tasmota full topic {full_topic!r}: level {level!r} must be a literal or "
                f"exactly one of {_PREFIX_TOKEN}, {', '.join(_DEVICE_TOKENS)}"
            )
        else:
            out.append(level)
    if out.count(_PREFIX) != 1 or out.count(_DEVICE) != 1:
        raise ConfigError(
            f"Tasmota full topic {full_topic!r} needs one {_PREFIX_TOKEN} and one device token "
            f"({', '.join(_DEVICE_TOKENS)}), e.g. {DEFAULT_FULL_TOPIC!r}"
        )
    return tuple(out)


class TasmotaDecoder:
    """Decoder for Tasmota ``SENSOR``, ``STATUS8``, ``LWT``, ``STATE``, ``INFO1``, ``INFO2``."""

    name = NAME

    def __init__(self, *, full_topics: tuple[str, ...] = (DEFAULT_FULL_TOPIC,)) -> None:
        self._patterns = tuple(_compile(full_topic) for full_topic in full_topics)
        subscriptions: list[str] = []
        for pattern in self._patterns:
            for leaf, prefix in _LEAVES.items():
                levels = [
                    prefix if p is _PREFIX else "+" if p is _DEVICE else str(p) for p in pattern
                ]
                subscriptions.append("/".join([*levels, leaf]))
        self.subscriptions: tuple[str, ...] = tuple(subscriptions)

    def _parse(self, topic: str) -> tuple[str, str] | None:
        """(device, leaf) when ``topic`` fits one of the full topics, else ``None``."""
        levels = topic.split("/")
        leaf = levels[-1]
        prefix = _LEAVES.get(leaf)
        if prefix is None:
            return None
        for pattern in self._patterns:
            if len(pattern) + 1 != len(levels):
                continue
            device = None
            for want, got in zip(pattern, levels, strict=False):
                if want is _DEVICE:
                    device = got
                elif (want is _PREFIX and got != prefix) or (want is not _PREFIX and want != got):
                    break
            else:
                if device:
                    return device, leaf
        return None

    def matches(self, topic: str) -> bool:
        """``tele/<topic>/SENSOR`` etc., in any of the configured full-topic layouts."""
        return self._parse(topic) is not None

    def matches_any_layout(self, topic: str) -> bool:
        """A Tasmota topic under any ``FullTopic``, configured or not (the user named Tasmota)."""
        return self._parse(topic) is not None or _parse_any_layout(topic) is not None

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """Readings, availability or device info of one Tasmota message."""
        parsed = self._parse(topic) or _parse_any_layout(topic)
        if parsed is None:
            return []
        device, leaf = parsed
        if leaf == "LWT":
            online = text_bool(payload, true=b"Online", false=b"Offline", field=topic)
            return [Availability(device, online, received_at)]
        doc = load_object(payload, what=f"Tasmota {leaf}")
        if leaf == "SENSOR":
            return _energy(device, doc.get("ENERGY"), received_at)
        if leaf == "STATUS8":
            sns = doc.get("StatusSNS")
            return _energy(device, sns.get("ENERGY") if type(sns) is dict else None, received_at)
        return _info(device, leaf, doc, received_at)

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """A JSON object with ``ENERGY`` or ``StatusSNS`` is a Tasmota sensor message."""
        if b"ENERGY" not in payload and b"StatusSNS" not in payload:
            return None
        try:
            doc = load_json(payload, what="payload")
        except DecodeError:
            return None
        if type(doc) is not dict:
            return None
        leaf = "STATUS8" if "StatusSNS" in doc else "SENSOR" if "ENERGY" in doc else None
        if leaf is None:
            return None
        if not device:
            raise DecodeError(
                MISSING_TOPIC,
                f"this looks like a Tasmota {leaf} payload, which does not name its device; "
                f"pass --device <tasmota topic> or --topic {_LEAVES[leaf]}/<tasmota topic>/{leaf}",
            )
        return f"{_LEAVES[leaf]}/{device}/{leaf}"


def _parse_any_layout(topic: str) -> tuple[str, str] | None:
    """(device, leaf) of a topic under an unknown ``FullTopic``: a known leaf, its ``%prefix%``
    (``tele``/``stat``) as one of the levels before, the device all the other levels."""
    levels = topic.split("/")
    prefix = _LEAVES.get(levels[-1])
    if prefix is None or prefix not in levels[:-1]:
        return None
    rest = levels[:-1]
    rest.remove(prefix)  # the first one: tele/tele/SENSOR is device "tele"
    if not rest or not all(rest):
        return None
    return "/".join(rest), levels[-1]


def _energy(device: str, energy: object, received_at: float) -> list[Message]:
    """Readings of an ENERGY object: ``ENERGY`` for the whole device, ``ENERGY/<i>`` per channel
    (see the module docstring for how scalars and arrays are told apart)."""
    if type(energy) is not dict:
        return []
    whole: dict[str, float] = {}
    shared: dict[str, float] = {}
    parts: list[dict[str, float]] = []
    for field, attr, kwh, is_shared in _ENERGY_FIELDS:
        value = energy.get(field)
        if value is None:
            continue
        if type(value) is list:
            for i, item in enumerate(value):
                if item is None:
                    continue
                converted = _convert(item, f"ENERGY.{field}[{i}]", kwh)
                if converted is None:
                    continue
                while len(parts) <= i:
                    parts.append({})
                parts[i][attr] = converted
        else:
            converted = _convert(value, f"ENERGY.{field}", kwh)
            if converted is not None:
                (shared if is_shared else whole)[attr] = converted
    if shared:
        for part in parts:
            if part:
                part.update({attr: v for attr, v in shared.items() if attr not in part})
        if whole or not any(parts):
            whole.update(shared)
    out: list[Message] = (
        [Reading(device, CHANNEL, received_at, stamped_on_receipt=True, **whole)] if whole else []
    )
    out.extend(
        Reading(device, f"{CHANNEL}/{i}", received_at, stamped_on_receipt=True, **part)
        for i, part in enumerate(parts, start=1)
        if part
    )
    return out


def _convert(value: object, field: str, kwh: bool) -> float | None:
    """A counter in Wh (``invalid_payload`` if out of range), or an instantaneous value (``None``
    if out of range: left out of the reading)."""
    number_ = number(value, field=field)
    if kwh:
        return counter(kwh_to_wh(number_), field=field)
    return number_ if usable(number_) else None


def _info(device: str, leaf: str, doc: dict[str, Any], received_at: float) -> list[Message]:
    if leaf == "STATE":
        uptime = doc.get("UptimeSec")
        if type(uptime) is not int:
            return []
        return [DeviceInfo(device, received_at, uptime_s=uptime)]
    # Tasmota ≥ 9 nests INFO payloads as {"Info1": {...}}; older versions publish the object flat.
    body = doc.get("Info1" if leaf == "INFO1" else "Info2", doc)
    if type(body) is not dict:
        return []
    if leaf == "INFO1":
        module, version = body.get("Module"), body.get("Version")
        if type(module) is not str and type(version) is not str:
            return []
        return [
            DeviceInfo(
                device,
                received_at,
                model=module if type(module) is str else None,
                fw_ver=version if type(version) is str else None,
            )
        ]
    ip = body.get("IPAddress")
    return [DeviceInfo(device, received_at, ip=ip)] if type(ip) is str else []
