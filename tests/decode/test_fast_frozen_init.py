"""The faster ``__init__`` of the message and slot dataclasses behaves like the generated one."""

from __future__ import annotations

import dataclasses

import pytest

from kilowatch.model.messages import DeviceInfo, Reading
from kilowatch.model.slots import SlotEnergy


def test_reading_keeps_defaults_equality_immutability_and_replace() -> None:
    r = Reading("dev", "pm1:0", 1.5, energy_wh=10.0, power_w=2.0)
    assert r == Reading("dev", "pm1:0", 1.5, 2.0, None, None, None, 10.0)
    assert r.voltage_v is None and r.power_factor is None
    assert r.to_json() == {
        "kind": "reading", "device": "dev", "channel": "pm1:0", "ts": 1.5,
        "power_w": 2.0, "energy_wh": 10.0,
    }  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.device = "other"  # type: ignore[misc]
    assert dataclasses.replace(r, device="b").device == "b"
    with pytest.raises(TypeError):
        Reading("dev", "pm1:0")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Reading("dev", "pm1:0", 1.0, nope=1)  # type: ignore[call-arg]
    assert hash(r) == hash(Reading("dev", "pm1:0", 1.5, energy_wh=10.0, power_w=2.0))


def test_slot_energy_and_device_info() -> None:
    assert SlotEnergy("d", "c", 900, 1, 2) == SlotEnergy("d", "c", 900, 1, 2, estimated=False)
    assert SlotEnergy("d", "c", 900, 1, 2).estimated is False
    assert DeviceInfo("d", 1.0, mac="AA").to_json() == {
        "kind": "device_info", "device": "d", "ts": 1.0, "mac": "AA"
    }
