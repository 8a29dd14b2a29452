"""Shelly Gen2/Gen3/Gen4 (RPC firmware) over MQTT (shelly-api.md §7, §9, §13).

Topics, for any ``topic_prefix`` (the device id unless configured):

- ``<prefix>/events/rpc``: notification frames ``NotifyStatus`` (changed fields only, merged onto
  the last known status), ``NotifyFullStatus`` (everything) and ``NotifyEvent``;
- ``<prefix>/status/<component>``: the whole status of one component, without a timestamp;
- ``<prefix>/online``: ``true`` / ``false`` (the last will);
- ``<prefix>/debug/log``: ``<device id> <seq> <unix ts> <level>|<file:line> <message>`` lines.

``device`` is the ``src`` of a frame (the id at the start of a log line); topic-only messages use
the prefix, or, once a frame has shown which device a custom prefix belongs to, that device's id.

How merged state is used: a ``NotifyStatus`` produces a reading for a channel only when the delta
carries one of that channel's metering fields. Instantaneous values (power, voltage, current,
frequency, apparent power, power factor) come from the merged status, because the device promises
that the overlay equals a fresh ``GetStatus`` at ``ts``. Cumulative counters (``energy_wh``,
``returned_energy_wh``) come only from the delta: an energy counter the frame did not carry is
absent, never re-stamped with the new ``ts`` (the device updates counters about once a minute; a
stale counter at a newer time would hide energy from the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kilowatch.decode.payload import (
    INVALID_PAYLOAD,
    MAX_MAGNITUDE,
    MAX_TS,
    MISSING_TOPIC,
    UNKNOWN_METHOD,
    check_size,
    counter,
    load_json,
    load_object,
    number,
    text_bool,
    timestamp,
)
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError
from kilowatch.model.messages import Availability, DeviceInfo, Event, LogLine, Message, Reading

NAME = "shelly"

_EVENTS = "/events/rpc"
_ONLINE = "/online"
_LOG = "/debug/log"


@dataclass(frozen=True, slots=True)
class _ChannelSpec:
    """How one channel's reading is read from a component status."""

    suffix: str
    """Appended to ``<type>:<id>``: ``""`` or a phase ``/a``."""
    instant: tuple[tuple[str, str], ...]
    """(status field, ``Reading`` attribute) of instantaneous values."""
    counters: tuple[tuple[str, str | None, str], ...]
    """(status field, sub-field or None, ``Reading`` attribute) of cumulative counters in Wh."""

    @property
    def instant_fields(self) -> frozenset[str]:
        """Status fields of the instantaneous values."""
        return frozenset(field for field, _ in self.instant)


# Every Gen2+ component that meters one load shares these field names (DOC-PM1, Switch; Cover,
# Light, RGB, RGBW, CCT have the same metering fields): W, V, A, Hz, VA, pf; counters in Wh.
_PM = _ChannelSpec(
    "",
    (
        ("apower", "power_w"),
        ("voltage", "voltage_v"),
        ("current", "current_a"),
        ("freq", "frequency_hz"),
        ("aprtpower", "apparent_power_va"),
        ("pf", "power_factor"),
    ),
    (("aenergy", "total", "energy_wh"), ("ret_aenergy", "total", "returned_energy_wh")),
)
_EM1 = _ChannelSpec(
    "",
    (
        ("act_power", "power_w"),
        ("voltage", "voltage_v"),
        ("current", "current_a"),
        ("freq", "frequency_hz"),
        ("aprt_power", "apparent_power_va"),
        ("pf", "power_factor"),
    ),
    (),
)
_EM1DATA = _ChannelSpec(
    "",
    (),
    (
        ("total_act_energy", None, "energy_wh"),
        ("total_act_ret_energy", None, "returned_energy_wh"),
    ),
)
_EM_TOTAL = _ChannelSpec(
    "",
    (
        ("total_act_power", "power_w"),
        ("total_current", "current_a"),
        ("total_aprt_power", "apparent_power_va"),
    ),
    (),
)
_EMDATA_TOTAL = _ChannelSpec(
    "", (), (("total_act", None, "energy_wh"), ("total_act_ret", None, "returned_energy_wh"))
)


def _em_phase(phase: str) -> _ChannelSpec:
    return _ChannelSpec(
        f"/{phase}",
        (
            (f"{phase}_act_power", "power_w"),
            (f"{phase}_voltage", "voltage_v"),
            (f"{phase}_current", "current_a"),
            (f"{phase}_freq", "frequency_hz"),
            (f"{phase}_aprt_power", "apparent_power_va"),
            (f"{phase}_pf", "power_factor"),
        ),
        (),
    )


def _emdata_phase(phase: str) -> _ChannelSpec:
    return _ChannelSpec(
        f"/{phase}",
        (),
        (
            (f"{phase}_total_act_energy", None, "energy_wh"),
            (f"{phase}_total_act_ret_energy", None, "returned_energy_wh"),
        ),
    )


_PHASES = ("a", "b", "c")

# component type → (channel type, channel specs). EMData/EM1Data counters land on the channels of
# the EM/EM1 component with the same id, so a channel's reading holds both its powers and counters.
_METERING: dict[str, tuple[str, tuple[_ChannelSpec, ...]]] = {
    "switch": ("switch", (_PM,)),  # relays: Plus/Pro xPM, Mini PM, plugs, Power Strip
    "pm1": ("pm1", (_PM,)),  # meters without a relay: PM Mini
    "cover": ("cover", (_PM,)),  # a 2PM (Plus, Pro, Gen3) in roller mode, Pro Dual Cover PM
    "light": ("light", (_PM,)),  # dimmers (Dimmer Gen3, Pro Dimmer xPM), RGBW PM in light mode
    "rgb": ("rgb", (_PM,)),  # Plus RGBW PM in rgb mode
    "rgbw": ("rgbw", (_PM,)),  # Plus RGBW PM in rgbw mode
    "cct": ("cct", (_PM,)),  # Pro RGBWW PM in cct mode
    "em1": ("em1", (_EM1,)),
    "em1data": ("em1", (_EM1DATA,)),
    "em": ("em", (_EM_TOTAL, *(_em_phase(p) for p in _PHASES))),
    "emdata": ("em", (_EMDATA_TOTAL, *(_emdata_phase(p) for p in _PHASES))),
}


# component type → (channel type, [(spec, spec.instant_fields)]), precomputed for the hot path
_SPECS: dict[str, tuple[str, tuple[tuple[_ChannelSpec, frozenset[str]], ...]]] = {
    ctype: (channel_type, tuple((spec, spec.instant_fields) for spec in specs))
    for ctype, (channel_type, specs) in _METERING.items()
}


_ChannelsOf = tuple[tuple[str, _ChannelSpec, frozenset[str]], ...]
_CHANNELS_CACHE: dict[str, _ChannelsOf | None] = {}
_CHANNELS_CACHE_LIMIT = 4096  # component keys are few (pm1:0, em:0...); never let junk grow it


def _channels_of(key: str) -> _ChannelsOf | None:
    """(channel, spec, instant fields) of metering component ``key`` (``em:0`` → 4 channels);
    ``None`` for a key that is no metering component (``ts``, ``sys``, ``script:1``...)."""
    try:
        return _CHANNELS_CACHE[key]
    except KeyError:
        pass
    ctype, _, cid = key.partition(":")
    entry = _SPECS.get(ctype)
    found = (
        None
        if entry is None
        else tuple((f"{entry[0]}:{cid}{spec.suffix}", spec, fields) for spec, fields in entry[1])
    )
    if len(_CHANNELS_CACHE) < _CHANNELS_CACHE_LIMIT:
        _CHANNELS_CACHE[key] = found
    return found


def _add_channels(
    out: dict[str, dict[str, float]],
    key: str,
    delta: dict[str, Any],
    merged: dict[str, Any],
    channels: _ChannelsOf,
) -> None:
    """Add to ``out`` the channels that component ``key`` (``emdata:0``...) has in ``delta``.

    Instantaneous values are read from ``merged``; a value this delta carries must be a number
    (``invalid_payload`` otherwise), one remembered from an earlier message is skipped if it is not.
    A number beyond ±``MAX_MAGNITUDE`` is left out, like a value the device did not send.
    Counters are read from ``delta`` only, and one out of range rejects the message.
    """
    low, high = -MAX_MAGNITUDE, MAX_MAGNITUDE
    for channel, spec, instant_fields in channels:
        # counters first: the channel is reported only if the delta carries one of its values
        counters: list[tuple[str, float]] | None = None
        for field, sub, attr in spec.counters:
            value = delta.get(field)
            if value is None:
                continue
            if sub is not None:
                if type(value) is not dict:
                    continue
                value = value.get(sub)
                if value is None:
                    continue
            kind = type(value)
            if kind is int:
                value = float(value)
            elif kind is not float:
                name = field if sub is None else f"{field}.{sub}"
                value = number(value, field=f"{key}.{name}")  # raises: not a number
            if not low <= value <= high:
                name = field if sub is None else f"{field}.{sub}"
                counter(value, field=f"{key}.{name}")  # raises: out of range
            if counters is None:
                counters = [(attr, value)]
            else:
                counters.append((attr, value))
        if counters is None and instant_fields.isdisjoint(delta):
            continue
        values = out.get(channel)
        if values is None:
            values = out[channel] = {}
        for field, attr in spec.instant:
            value = merged.get(field)
            if value is None:  # most often: deltas carry a few fields
                continue
            kind = type(value)
            if kind is float:
                if low <= value <= high:
                    values[attr] = value
            elif kind is int:
                if low <= value <= high:
                    values[attr] = float(value)
            elif field in delta:
                number(value, field=f"{key}.{field}")  # raises: not a number
        if counters is not None:
            values.update(counters)


def _readings(
    device: str, ts: float, channels: dict[str, dict[str, float]], on_receipt: bool = False
) -> list[Message]:
    return [
        Reading(device, channel, ts, stamped_on_receipt=on_receipt, **values)
        for channel, values in channels.items()
    ]


def _device_info(
    device: str, ts: float, sys: dict[str, Any] | None, wifi: dict[str, Any] | None
) -> DeviceInfo | None:
    """What ``sys`` (mac, uptime, available updates) and ``wifi`` (IP) tell about the device."""
    info: dict[str, Any] = {}
    if sys:
        mac = sys.get("mac")
        if type(mac) is str:
            info["mac"] = mac
        uptime = sys.get("uptime")
        if type(uptime) is int and 0 <= uptime <= MAX_MAGNITUDE:
            info["uptime_s"] = uptime
        if "available_updates" in sys:
            updates = sys["available_updates"]
            stable = updates.get("stable") if type(updates) is dict else None
            version = stable.get("version") if type(stable) is dict else None
            # "" records that the device reports no stable update (None would mean "not told").
            info["available_update"] = version if type(version) is str else ""
    if wifi:
        ip = wifi.get("sta_ip")
        if type(ip) is str:
            info["ip"] = ip
    if not info:
        return None
    return DeviceInfo(device, ts, **info)


def _ts(value: object, *, default: float, field: str) -> float:
    return default if value is None else timestamp(value, field=field)


class ShellyDecoder:
    """Decoder for Shelly Gen2+ MQTT topics under any ``topic_prefix``."""

    name = NAME

    def __init__(self, *, topic_prefixes: tuple[str, ...] = ("+",)) -> None:
        self.subscriptions: tuple[str, ...] = tuple(
            f"{prefix}{suffix}"
            for prefix in topic_prefixes
            for suffix in (_EVENTS, _ONLINE, "/status/+", _LOG)
        )

    def matches(self, topic: str) -> bool:
        """``<p>/events/rpc``, ``<p>/online``, ``<p>/status/<key>``, ``<p>/debug/log``."""
        for suffix in (_EVENTS, _ONLINE, _LOG):
            if topic.endswith(suffix):
                return len(topic) > len(suffix)  # a prefix must come before the suffix
        head, _, component = topic.rpartition("/")
        return bool(component) and head.endswith("/status") and len(head) > len("/status")

    def matches_any_layout(self, topic: str) -> bool:
        """As :meth:`matches`: any ``topic_prefix`` is read whatever is configured."""
        return self.matches(topic)

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """Messages of one Gen2+ MQTT message (see the module docstring for the merge rules)."""
        if topic.endswith(_EVENTS):
            return self._frame(topic[: -len(_EVENTS)], payload, received_at, state)
        # Topic-only messages name a topic prefix, not a device: under a custom prefix use the
        # device id its RPC frames showed, so that readings from both topics land on one device.
        if topic.endswith(_ONLINE):
            online = text_bool(payload, true=b"true", false=b"false", field=topic)
            device = state.device_for(topic[: -len(_ONLINE)])
            return [Availability(device, online, received_at)]
        if topic.endswith(_LOG):
            return _log_lines(state.device_for(topic[: -len(_LOG)]), payload, received_at)
        head, _, component = topic.rpartition("/")
        device = state.device_for(head[: -len("/status")])
        return _component_status(device, component, payload, received_at, state)

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """An RPC frame names its device (``src``); a debug log line starts with it."""
        head = payload.lstrip()[:1]
        if head == b"{":
            try:
                doc = load_json(payload, what="payload")
            except DecodeError:
                return None
            if type(doc) is dict and type(doc.get("method")) is str:
                src = device or doc.get("src")
                if type(src) is str and src:
                    return f"{src}{_EVENTS}"
                raise DecodeError(
                    MISSING_TOPIC,
                    "this RPC frame has no 'src'; "
                    "pass --device <id> or --topic <prefix>/events/rpc",
                )
            return None
        parsed = _parse_log_line(payload.decode("utf-8", "replace").strip())
        if parsed is not None:
            return f"{device or parsed[0]}{_LOG}"
        return None

    def _frame(
        self, prefix: str, payload: bytes, received_at: float, state: DecoderState
    ) -> list[Message]:
        frame = load_object(payload, what="RPC frame")
        src = frame.get("src")
        if type(src) is str and src:
            device = src
            if src != prefix:
                state.learn_device(prefix, src)
        else:
            device = state.device_for(prefix)
        method = frame.get("method")
        params = frame.get("params")
        if type(params) is not dict:
            raise DecodeError(INVALID_PAYLOAD, f"{method or 'RPC frame'} has no 'params' object")
        ts = params.get("ts")
        if type(ts) is not float or not 0.0 <= ts <= MAX_TS:  # the common case without a call
            ts = _ts(ts, default=received_at, field="params.ts")
        if method == "NotifyStatus":
            return _notify_status(device, ts, params, state)
        if method == "NotifyFullStatus":
            state.forget(device)
            return _full_status(device, ts, params, state)
        if method == "NotifyEvent":
            return _notify_event(device, ts, params)
        raise DecodeError(UNKNOWN_METHOD, f"unexpected RPC method {method!r} from {device}")


def _notify_status(
    device: str, ts: float, params: dict[str, Any], state: DecoderState
) -> list[Message]:
    channels: dict[str, dict[str, float]] = {}
    cache = _CHANNELS_CACHE
    for key, delta in params.items():
        of_key = cache[key] if key in cache else _channels_of(key)
        if of_key is None:
            continue  # ts, sys, wifi, cloud, script:N...: nothing to merge
        if delta is None:
            state.merge(device, key, None)
        elif type(delta) is dict:
            _add_channels(channels, key, delta, state.merge(device, key, delta), of_key)
        else:
            raise DecodeError(INVALID_PAYLOAD, f"NotifyStatus {key} must be an object")
    out = _readings(device, ts, channels)
    if "sys" in params or "wifi" in params:
        info = _device_info(device, ts, _object(params.get("sys")), _object(params.get("wifi")))
        if info is not None:
            out.append(info)
    return out


def _full_status(
    device: str, ts: float, status: dict[str, Any], state: DecoderState, on_receipt: bool = False
) -> list[Message]:
    channels: dict[str, dict[str, float]] = {}
    for key, value in status.items():
        if type(value) is dict and (of_key := _channels_of(key)) is not None:
            clean = state.replace(device, key, value)
            _add_channels(channels, key, clean, clean, of_key)
    out = _readings(device, ts, channels, on_receipt)
    info = _device_info(device, ts, _object(status.get("sys")), _object(status.get("wifi")))
    if info is not None:
        out.append(info)
    return out


def _component_status(
    device: str, component: str, payload: bytes, received_at: float, state: DecoderState
) -> list[Message]:
    status = load_object(payload, what=f"status of {component}")
    if component.partition(":")[0] in _SPECS:
        return _full_status(device, received_at, {component: status}, state, on_receipt=True)
    if component == "sys":
        info = _device_info(device, received_at, status, None)
    elif component == "wifi":
        info = _device_info(device, received_at, None, status)
    else:
        return []
    return [] if info is None else [info]


def _notify_event(device: str, ts: float, params: dict[str, Any]) -> list[Message]:
    events = params.get("events")
    if type(events) is not list:
        raise DecodeError(INVALID_PAYLOAD, "NotifyEvent has no 'events' list")
    out: list[Message] = []
    for item in events:
        if type(item) is not dict:
            raise DecodeError(INVALID_PAYLOAD, f"NotifyEvent item must be an object, got {item!r}")
        component, event = item.get("component"), item.get("event")
        if type(component) is not str or type(event) is not str:
            raise DecodeError(INVALID_PAYLOAD, "NotifyEvent item needs 'component' and 'event'")
        data = {k: v for k, v in item.items() if k not in ("component", "event", "ts")}
        when = _ts(item.get("ts"), default=ts, field="event ts")
        out.append(Event(device, when, component, event, data))
    return out


def _parse_log_line(line: str) -> tuple[str, int, float, int, str, str] | None:
    """``<device id> <seq> <unix ts> <level>|<file:line> <message>``, or ``None`` (also when the
    numbers are not plain decimals in range: such a line is kept whole, as text)."""
    parts = line.split(" ", 4)
    if len(parts) < 4 or not _small_int(parts[1]):
        return None
    level, bar, source = parts[3].partition("|")
    if not bar or not _small_int(level):
        return None
    try:
        ts = float(parts[2])
    except ValueError:
        return None
    if not 0.0 <= ts <= MAX_TS:  # also refuses "nan" and "inf", which float() reads
        return None
    message = parts[4] if len(parts) == 5 else ""
    return parts[0], int(parts[1]), ts, int(level), source, message


def _small_int(text: str) -> bool:
    """ASCII digits that fit a 64-bit integer (``str.isdigit`` alone accepts ``²`` and 5000-digit
    numbers, which ``int`` refuses)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def _log_lines(prefix: str, payload: bytes, received_at: float) -> list[Message]:
    """Log lines: the device is the id the line itself starts with (the ``src`` of its frames)."""
    check_size(payload, what="debug log")
    out: list[Message] = []
    for raw in payload.decode("utf-8", "replace").splitlines():
        line = raw.rstrip()
        if not line:
            continue
        parsed = _parse_log_line(line)
        if parsed is None:
            # Log text is for people: keep a line we cannot split rather than dead-lettering it.
            out.append(LogLine(prefix, received_at, line))
        else:
            device, seq, ts, level, source, message = parsed
            out.append(LogLine(device, ts, message, level=level, seq=seq, source=source or None))
    return out


def _object(value: object) -> dict[str, Any] | None:
    return value if type(value) is dict else None
