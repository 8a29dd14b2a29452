"""Shelly Gen1 (ESP8266 firmware) MQTT topics under ``shellies/`` (shelly-api.md §19).

Per-value topics carry one value each, so each becomes a reading with just that field:

- ``shellies/<id>/relay/<i>/power`` (W) → ``power_w`` on channel ``relay/<i>``;
- ``shellies/<id>/relay/<i>/energy`` (Watt-minutes) → ``energy_wh`` (÷ 60);
- ``shellies/<id>/emeter/<i>/power|voltage|current|pf|reactive_power`` (W, V, A, –, var) →
  ``power_w``, ``voltage_v``, ``current_a``, ``power_factor``, ``reactive_power_var`` on
  ``emeter/<i>``;
- ``shellies/<id>/emeter/<i>/total|total_returned`` (Wh) → ``energy_wh``, ``returned_energy_wh``.

``emeter/<i>/energy`` and ``returned_energy`` (Watt-minutes) are deliberately not turned into
counters: they measure the same energy as ``total``/``total_returned`` but restart at every reboot,
and two different counters on one channel would look to the ledger like a counter reset at every
message.

``shellies/<id>/info`` (the ``/status`` JSON) gives ``meters[i]`` (``total`` in Watt-minutes) on
``relay/<i>`` and ``emeters[i]`` (``total`` in Wh) on ``emeter/<i>``, plus device info.
``shellies/<id>/online`` is availability, ``shellies/announce`` and ``shellies/<id>/announce`` are
device info. Every other topic under ``shellies/`` (commands, relay state, temperature...) carries
nothing kilowatch uses and decodes to ``[]``. Gen1 payloads carry no usable time: ``ts`` is
``received_at``.
"""

from __future__ import annotations

from typing import Any

from kilowatch.decode.payload import (
    INVALID_PAYLOAD,
    MAX_MAGNITUDE,
    counter,
    load_json,
    load_object,
    number,
    text_bool,
    text_number,
    usable,
    wmin_to_wh,
)
from kilowatch.decode.state import DecoderState
from kilowatch.errors import DecodeError
from kilowatch.model.messages import Availability, DeviceInfo, Message, Reading

NAME = "shelly-gen1"
_ROOT = "shellies/"

# emeter/<i>/<field> → Reading attribute; values already in the output unit.
_EMETER_FIELDS: dict[str, str] = {
    "power": "power_w",
    "voltage": "voltage_v",
    "current": "current_a",
    "pf": "power_factor",
    "reactive_power": "reactive_power_var",
    "total": "energy_wh",
    "total_returned": "returned_energy_wh",
}
_COUNTERS = frozenset({"energy_wh", "returned_energy_wh"})
# the same fields in the /status JSON's emeters[i]
_EMETERS_STATUS: tuple[tuple[str, str], ...] = (
    ("power", "power_w"),
    ("voltage", "voltage_v"),
    ("current", "current_a"),
    ("pf", "power_factor"),
    ("reactive", "reactive_power_var"),
    ("total", "energy_wh"),
    ("total_returned", "returned_energy_wh"),
)


class ShellyGen1Decoder:
    """Decoder for ``shellies/#``."""

    name = NAME
    subscriptions: tuple[str, ...] = ("shellies/#",)

    def matches(self, topic: str) -> bool:
        """Every topic under ``shellies/``."""
        return topic.startswith(_ROOT)

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        """Readings, availability and device info of one Gen1 message."""
        parts = topic[len(_ROOT) :].split("/")
        if parts == ["announce"]:
            return [_announce(None, payload, received_at)]
        if len(parts) < 2:
            return []
        device, leaf = parts[0], parts[1]
        if len(parts) == 2:
            if leaf == "online":
                online = text_bool(payload, true=b"true", false=b"false", field=topic)
                return [Availability(device, online, received_at)]
            if leaf == "announce":
                return [_announce(device, payload, received_at)]
            if leaf == "info":
                return _info(device, payload, received_at)
            return []
        if len(parts) == 4 and parts[2].isdigit():
            return _value(device, leaf, parts[2], parts[3], payload, received_at)
        return []

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        """An announce JSON (``id``, ``model``, ``mac``, ``fw_ver``) is recognisable on its own."""
        if b'"fw_ver"' not in payload or b'"model"' not in payload:
            return None
        try:
            doc = load_json(payload, what="payload")
        except DecodeError:
            return None
        if type(doc) is dict and {"id", "model", "mac", "fw_ver"} <= doc.keys():
            return f"{_ROOT}{device}/announce" if device else f"{_ROOT}announce"
        return None


def _value(
    device: str, kind: str, index: str, field: str, payload: bytes, received_at: float
) -> list[Message]:
    if kind == "relay":
        channel = f"relay/{index}"
        if field == "power":
            power = text_number(payload, field=field)
            return [Reading(device, channel, received_at, power_w=power, stamped_on_receipt=True)]
        if field == "energy":
            wh = wmin_to_wh(text_number(payload, field=field))
            return [Reading(device, channel, received_at, energy_wh=wh, stamped_on_receipt=True)]
        return []
    if kind == "emeter":
        attr = _EMETER_FIELDS.get(field)
        if attr is None:
            return []
        value = text_number(payload, field=field)
        channel = f"emeter/{index}"
        return [Reading(device, channel, received_at, stamped_on_receipt=True, **{attr: value})]
    return []


def _announce(device: str | None, payload: bytes, received_at: float) -> Message:
    doc = load_object(payload, what="announce")
    name = device or _str(doc.get("id"))
    if not name:
        raise DecodeError(INVALID_PAYLOAD, "announce names no device ('id')")
    return DeviceInfo(
        name,
        received_at,
        mac=_str(doc.get("mac")),
        model=_str(doc.get("model")),
        gen=1,
        fw_ver=_str(doc.get("fw_ver")),
        ip=_str(doc.get("ip")),
    )


def _info(device: str, payload: bytes, received_at: float) -> list[Message]:
    status = load_object(payload, what="Gen1 status")
    out: list[Message] = []
    for i, meter in enumerate(_list(status.get("meters"))):
        if type(meter) is not dict or meter.get("is_valid") is False:
            continue
        fields: dict[str, float] = {}
        if meter.get("power") is not None:
            power = number(meter["power"], field=f"meters[{i}].power")
            if usable(power):
                fields["power_w"] = power
        if meter.get("total") is not None:
            # Gen1 /status meters[].total is Watt-minutes (emeters[].total is Wh)
            total = wmin_to_wh(number(meter["total"], field=f"meters[{i}].total"))
            fields["energy_wh"] = counter(total, field=f"meters[{i}].total")
        if fields:
            out.append(
                Reading(device, f"relay/{i}", received_at, stamped_on_receipt=True, **fields)
            )
    for i, emeter in enumerate(_list(status.get("emeters"))):
        if type(emeter) is not dict or emeter.get("is_valid") is False:
            continue
        fields = {}
        for key, attr in _EMETERS_STATUS:
            if emeter.get(key) is None:
                continue
            value = number(emeter[key], field=f"emeters[{i}].{key}")
            if attr in _COUNTERS:
                fields[attr] = counter(value, field=f"emeters[{i}].{key}")
            elif usable(value):
                fields[attr] = value
        if fields:
            out.append(
                Reading(device, f"emeter/{i}", received_at, stamped_on_receipt=True, **fields)
            )
    out.append(_status_info(device, status, received_at))
    return out


def _status_info(device: str, status: dict[str, Any], received_at: float) -> DeviceInfo:
    wifi = status.get("wifi_sta")
    update = status.get("update")
    new_version = None
    if type(update) is dict and update.get("has_update") is True:
        new_version = _str(update.get("new_version"))
    uptime = status.get("uptime")
    return DeviceInfo(
        device,
        received_at,
        mac=_str(status.get("mac")),
        gen=1,
        uptime_s=uptime if type(uptime) is int and 0 <= uptime <= MAX_MAGNITUDE else None,
        ip=_str(wifi.get("ip")) if type(wifi) is dict else None,
        available_update=new_version,
    )


def _str(value: object) -> str | None:
    return value if type(value) is str and value else None


def _list(value: object) -> list[Any]:
    return value if type(value) is list else []
