"""Home Assistant MQTT discovery of kilowatch's meters: the messages, built without I/O.

For each device and channel kilowatch knows, two sensors: the channel's energy (kWh, kilowatch's
corrected total: the sum of everything the ledger stored for it, so it never falls when the device
resets its counter) and its power (W, the latest reading). They are grouped under one Home
Assistant device per kilowatch device and are available while kilowatch is connected *and* the
device is online.

The formats follow Home Assistant's documentation of MQTT discovery and of sensors:
https://www.home-assistant.io/integrations/mqtt/ (discovery topic, the ``device`` mapping,
``availability``, the ``homeassistant/status`` birth message),
https://www.home-assistant.io/integrations/sensor.mqtt/ (the keys of an MQTT sensor),
https://www.home-assistant.io/integrations/sensor/#device-class (units per device class) and
https://developers.home-assistant.io/blog/2021/09/20/state_class_total (state classes).

Pure: timestamps come in as arguments; :mod:`kilowatch.service.homeassistant` publishes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kilowatch.model.messages import Reading
from kilowatch.query.energy import EnergyQuery, EnergyRow
from kilowatch.store.protocol import DeviceRecord

DISCOVERY_PREFIX = "homeassistant"
"""Home Assistant's default ``discovery_prefix``."""
STATUS_TOPIC = f"{DISCOVERY_PREFIX}/status"
"""Home Assistant's birth and last-will topic; ``online`` after it (re)starts: publish again."""
STATUS_ONLINE = "online"
STATE_PREFIX = "kilowatch"
"""Where kilowatch publishes the states: ``kilowatch/<device>/<channel>/energy`` and ``/power``."""
SERVICE_STATUS_TOPIC = f"{STATE_PREFIX}/status"
"""kilowatch's own availability: ``online`` while connected, ``offline`` as its last will."""
ONLINE = "online"
OFFLINE = "offline"
OFFLINE_AFTER_S = 15 * 60
"""A device not heard from for this long is unavailable (as ``online`` in /api/v1/devices)."""
MANUFACTURER = {
    "shelly": "Shelly",
    "shelly-gen1": "Shelly",
    "hourly": "Shelly",
    "tasmota": "Tasmota",
    "zigbee2mqtt": "Zigbee2MQTT",
}
"""``device.manufacturer`` by the decoder family that saw the device (``DeviceRecord.source``)."""
ENERGY = "energy"
POWER = "power"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
"""Discovery topics' node and object ids allow only ``[a-zA-Z0-9_-]`` (HA's MQTT docs)."""
_WILDCARDS = re.compile("[+#\0]")
"""What a topic to publish on may not hold (MQTT 3.1.1 §4.7.1, §1.5.3): a Shelly's ``src`` is the
device id and may hold anything."""


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish (retained: a late subscriber gets the last one)."""

    topic: str
    payload: str


def safe_id(text: str) -> str:
    """``text`` in the characters a discovery topic allows; others become ``_``."""
    return _UNSAFE.sub("_", text)


def state_topic(device: str, channel: str, kind: str) -> str:
    """``kilowatch/<device>/<channel>/<kind>`` (``kind``: ``energy`` or ``power``); wildcard
    characters become ``_``."""
    return _WILDCARDS.sub("_", f"{STATE_PREFIX}/{device}/{channel}/{kind}")


def availability_topic(device: str) -> str:
    return _WILDCARDS.sub("_", f"{STATE_PREFIX}/{device}/availability")


def unique_id(device: str, channel: str, kind: str) -> str:
    """Stable per device, channel and kind: Home Assistant keys the entity's settings on it."""
    return safe_id(f"kilowatch_{device}_{channel}_{kind}")


def config_topic(device: str, channel: str, kind: str) -> str:
    """``homeassistant/sensor/<node_id>/<object_id>/config``."""
    return f"{DISCOVERY_PREFIX}/sensor/{safe_id(device)}/{safe_id(f'{channel}_{kind}')}/config"


def device_block(record: DeviceRecord) -> dict[str, Any]:
    """The ``device`` mapping that groups a device's entities in Home Assistant."""
    block: dict[str, Any] = {
        "identifiers": [f"kilowatch_{record.device}"],
        "name": record.label or record.name or record.device,
    }
    if record.mac:
        block["connections"] = [["mac", record.mac.lower()]]
    if record.model:
        block["model"] = record.model
    manufacturer = MANUFACTURER.get(record.source or "")
    if manufacturer:
        block["manufacturer"] = manufacturer
    if record.fw_ver:
        block["sw_version"] = record.fw_ver
    if record.room:
        block["suggested_area"] = record.room
    return block


def sensor_config(
    record: DeviceRecord, channel: str, kind: str, *, origin_version: str
) -> dict[str, Any]:
    """The discovery payload of one sensor (``kind``: ``energy`` or ``power``)."""
    config: dict[str, Any] = {
        "name": f"{channel} {kind}",
        "unique_id": unique_id(record.device, channel, kind),
        "state_topic": state_topic(record.device, channel, kind),
        "availability": [
            {"topic": SERVICE_STATUS_TOPIC},
            {"topic": availability_topic(record.device)},
        ],
        "availability_mode": "all",
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device_block(record),
        "origin": {"name": "kilowatch", "sw_version": origin_version},
    }
    if kind == ENERGY:
        # total_increasing, not total: the value is kilowatch's corrected total, which never
        # falls (a device reset adds nothing and takes nothing away), and HA reads a fall of a
        # total_increasing sensor as a new meter cycle rather than as negative consumption: if
        # the store were ever replaced by an empty one, the Energy dashboard loses nothing.
        config |= {"device_class": "energy", "state_class": "total_increasing",
                   "unit_of_measurement": "kWh", "suggested_display_precision": 3}  # fmt: skip
    else:
        config |= {"device_class": "power", "state_class": "measurement",
                   "unit_of_measurement": "W"}  # fmt: skip
    return config


def discovery_messages(records: Iterable[DeviceRecord], *, origin_version: str) -> list[Message]:
    """The retained discovery configs of every channel of ``records``: energy and power each."""
    return [
        Message(
            config_topic(record.device, channel, kind),
            json.dumps(sensor_config(record, channel, kind, origin_version=origin_version)),
        )
        for record in records
        for channel in record.channels
        for kind in (ENERGY, POWER)
    ]


def is_available(record: DeviceRecord, now: float) -> bool:
    """Said online (or said nothing) and heard from within :data:`OFFLINE_AFTER_S`."""
    if record.online is False:
        return False
    if record.last_seen is None:
        return bool(record.online)
    return now - record.last_seen < OFFLINE_AFTER_S


def availability_messages(records: Iterable[DeviceRecord], now: float) -> list[Message]:
    return [
        Message(availability_topic(r.device), ONLINE if is_available(r, now) else OFFLINE)
        for r in records
    ]


def totals_query(now: float) -> EnergyQuery:
    """Every stored slot of every channel, by month in UTC (a few rows per channel and year)."""
    end = datetime.fromtimestamp(now, UTC)
    end_month = datetime(end.year + end.month // 12, end.month % 12 + 1, 1, tzinfo=UTC)
    return EnergyQuery(by="month", tz="UTC", start=datetime(1970, 1, 1, tzinfo=UTC),
                       end=end_month, group="channel")  # fmt: skip


def energy_totals(rows: Iterable[EnergyRow]) -> dict[tuple[str, str], float]:
    """Wh per ``(device, channel)``: the sum of the rows of :func:`totals_query`."""
    totals: dict[tuple[str, str], float] = {}
    for row in rows:
        if row.device is not None and row.channel is not None:
            key = (row.device, row.channel)
            totals[key] = totals.get(key, 0.0) + row.energy_wh
    return totals


def state_messages(
    totals: Mapping[tuple[str, str], float], latest: Iterable[Reading]
) -> list[Message]:
    """Energy states (kWh, from ``totals`` in Wh) and power states (W, latest readings)."""
    out = [
        Message(state_topic(device, channel, ENERGY), kwh(wh))
        for (device, channel), wh in sorted(totals.items())
    ]
    out += [
        Message(state_topic(r.device, r.channel, POWER), _decimal(r.power_w, 3))
        for r in latest
        if r.power_w is not None and math.isfinite(r.power_w)
    ]
    return out


def kwh(wh: float) -> str:
    """Wh as kWh with mWh resolution (the ledger's unit), never in exponent notation."""
    return _decimal(wh / 1000, 6)


def _decimal(value: float, places: int) -> str:
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in {"", "-0"} else text


__all__ = [
    "DISCOVERY_PREFIX",
    "ENERGY",
    "OFFLINE",
    "ONLINE",
    "POWER",
    "SERVICE_STATUS_TOPIC",
    "STATUS_ONLINE",
    "STATUS_TOPIC",
    "Message",
    "availability_messages",
    "availability_topic",
    "config_topic",
    "device_block",
    "discovery_messages",
    "energy_totals",
    "is_available",
    "kwh",
    "safe_id",
    "sensor_config",
    "state_messages",
    "state_topic",
    "totals_query",
    "unique_id",
]
