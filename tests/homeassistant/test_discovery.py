"""The discovery messages against a JSON Schema written from Home Assistant's MQTT discovery docs
(discovery_schema.json names its sources), and the states' values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from kilowatch.homeassistant import (
    OFFLINE,
    ONLINE,
    Message,
    availability_messages,
    discovery_messages,
    energy_totals,
    is_available,
    kwh,
    sensor_config,
    state_messages,
    totals_query,
)
from kilowatch.model.messages import Reading
from kilowatch.query.energy import EnergyRow
from kilowatch.store.protocol import DeviceRecord

SCHEMA = json.loads((Path(__file__).parent / "discovery_schema.json").read_text())
VALIDATOR = jsonschema_rs.validator_for(SCHEMA)
NOW = 1_767_258_000.0

PRO3EM = DeviceRecord(
    device="shellypro3em-a0b1c2d3e4f5", last_seen=NOW - 10, online=True, mac="A0B1C2D3E4F5",
    model="SPEM-003CEBEU", gen=2, fw_ver="1.4.4", name="Grid", label="House meter",
    room="Cellar", source="shelly", channels=("em:0", "em:0/a", "em:0/b", "em:0/c"),
)  # fmt: skip
BARE = DeviceRecord(device="plug kitchen #1", channels=("default",), source="zigbee2mqtt")


def _errors(message: Message) -> list[str]:
    instance = {"topic": message.topic, "payload": json.loads(message.payload)}
    return [e.message for e in VALIDATOR.iter_errors(instance)]


@pytest.mark.parametrize("record", [PRO3EM, BARE], ids=["pro3em", "bare"])
def test_every_config_is_valid_discovery(record: DeviceRecord) -> None:
    messages = discovery_messages([record], origin_version="0.1.0")
    assert len(messages) == 2 * len(record.channels)
    for m in messages:
        assert _errors(m) == [], m


def test_energy_and_power_sensors() -> None:
    energy = sensor_config(PRO3EM, "em:0/a", "energy", origin_version="0.1.0")
    power = sensor_config(PRO3EM, "em:0/a", "power", origin_version="0.1.0")
    assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
        "energy", "total_increasing", "kWh"
    )  # fmt: skip
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == (
        "power", "measurement", "W"
    )  # fmt: skip
    assert energy["state_topic"] == "kilowatch/shellypro3em-a0b1c2d3e4f5/em:0/a/energy"
    assert power["state_topic"] == "kilowatch/shellypro3em-a0b1c2d3e4f5/em:0/a/power"
    assert energy["device"] == {
        "identifiers": ["kilowatch_shellypro3em-a0b1c2d3e4f5"],
        "connections": [["mac", "a0b1c2d3e4f5"]],
        "name": "House meter",  # the user's label before the device's own name
        "model": "SPEM-003CEBEU",
        "manufacturer": "Shelly",
        "sw_version": "1.4.4",
        "suggested_area": "Cellar",
    }
    assert [a["topic"] for a in energy["availability"]] == [
        "kilowatch/status", "kilowatch/shellypro3em-a0b1c2d3e4f5/availability"
    ]  # fmt: skip
    assert energy["availability_mode"] == "all"


def test_names_fall_back_to_the_device_id() -> None:
    assert sensor_config(BARE, "default", "power", origin_version="x")["device"]["name"] == (
        "plug kitchen #1"
    )
    named = DeviceRecord(device="d1", name="Dryer", channels=("switch:0",))
    config = sensor_config(named, "switch:0", "power", origin_version="x")
    assert config["device"]["name"] == "Dryer"


def test_topics_and_unique_ids_are_safe_stable_and_distinct() -> None:
    messages = discovery_messages([PRO3EM, BARE], origin_version="0.1.0")
    again = discovery_messages([PRO3EM, BARE], origin_version="0.1.0")
    assert messages == again
    ids = [json.loads(m.payload)["unique_id"] for m in messages]
    assert len(set(ids)) == len(ids)
    assert len({m.topic for m in messages}) == len(messages)
    assert "homeassistant/sensor/plug_kitchen__1/default_energy/config" in {
        m.topic for m in messages
    }


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"state_class": "measurement"}, "energy is not a measurement"),
        ({"unit_of_measurement": "W"}, "energy is not in watts"),
        ({"device": {"name": "x"}}, "a device needs identifiers or connections"),
        ({"state_topic": "kilowatch/+/x"}, "no wildcards in a topic to publish on"),
        ({"colour": "red"}, "no unknown keys"),
        ({"availability_topic": "a/b"}, "availability and availability_topic exclude each other"),
    ],
)
def test_the_schema_catches_what_home_assistant_refuses(
    change: dict[str, Any], complaint: str
) -> None:
    config = sensor_config(PRO3EM, "em:0", "energy", origin_version="0.1.0") | change
    message = Message("homeassistant/sensor/a/b/config", json.dumps(config))
    assert _errors(message), complaint


def test_power_in_kwh_is_refused() -> None:
    config = sensor_config(PRO3EM, "em:0", "power", origin_version="0.1.0")
    config["unit_of_measurement"] = "kWh"
    assert _errors(Message("homeassistant/sensor/a/b/config", json.dumps(config)))


def test_availability_follows_the_device() -> None:
    assert is_available(PRO3EM, NOW)
    assert not is_available(PRO3EM, NOW + 16 * 60)  # not heard from for 15 minutes
    said_offline = DeviceRecord(device="d", online=False, last_seen=NOW)
    assert not is_available(said_offline, NOW)
    assert not is_available(BARE, NOW)  # never seen
    assert [m.payload for m in availability_messages([PRO3EM, said_offline], NOW)] == [
        ONLINE, OFFLINE
    ]  # fmt: skip


def _row(device: str, channel: str, month: int, wh: float) -> EnergyRow:
    start = datetime(2026, month, 1, tzinfo=UTC)
    end = datetime(2026, month + 1, 1, tzinfo=UTC)
    return EnergyRow(device, channel, start, end, wh, 0.0, False)


def test_energy_states_are_the_sum_of_stored_energy_in_kwh() -> None:
    rows = [_row("d", "switch:0", 1, 1500.0), _row("d", "switch:0", 2, 0.125),
            _row("d", "switch:1", 2, 0.0)]  # fmt: skip
    totals = energy_totals(rows)
    assert totals == {("d", "switch:0"): 1500.125, ("d", "switch:1"): 0.0}
    latest = [Reading("d", "switch:0", NOW, power_w=1234.5), Reading("d", "switch:1", NOW)]
    assert state_messages(totals, latest) == [
        Message("kilowatch/d/switch:0/energy", "1.500125"),
        Message("kilowatch/d/switch:1/energy", "0"),
        Message("kilowatch/d/switch:0/power", "1234.5"),
    ]
    assert (kwh(0.001), kwh(12_345_678.9), kwh(1e9)) == ("0.000001", "12345.6789", "1000000")


def test_the_totals_query_covers_every_stored_month() -> None:
    q = totals_query(NOW)  # 2026-01-01T09:00Z
    assert (q.by, q.tz, q.group) == ("month", "UTC", "channel")
    assert q.start == datetime(1970, 1, 1, tzinfo=UTC)
    assert q.end == datetime(2026, 2, 1, tzinfo=UTC)
    assert totals_query(datetime(2026, 12, 31, 23, tzinfo=UTC).timestamp()).end == datetime(
        2027, 1, 1, tzinfo=UTC
    )
