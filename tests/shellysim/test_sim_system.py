"""Pure parts of a device: the system components' SetConfig checks and the firmware it is offered
and installs (the RPC paths through a whole device are in test_sim_device.py)."""

from __future__ import annotations

from typing import Any

import pytest

from shellysim.errors import RpcCallError
from shellysim.firmware import available_updates, check_for_update, update_target
from shellysim.models import MODELS, NEXT_FIRMWARE
from shellysim.system import check_patch, default_config, fill_mqtt_defaults, local_time

SPEC = MODELS["3em"]
STABLE, BETA = NEXT_FIRMWARE["stable"], NEXT_FIRMWARE["beta"]


@pytest.mark.parametrize(
    ("key", "patch", "restart"),
    [
        ("mqtt", {"enable": True}, True),
        ("wifi", {}, True),
        ("ble", {"enable": False}, False),
        ("sys", {"debug": {"level": 3}}, False),
        ("sys", {"rpc_udp": {"listen_port": 1010}}, True),
    ],
)
def test_check_patch_says_when_a_restart_is_needed(
    key: str, patch: dict[str, Any], restart: bool
) -> None:
    assert check_patch(key, patch) is restart


def test_check_patch_drops_read_only_sys_fields() -> None:
    patch = {"device": {"name": "n", "mac": "X", "fw_id": "Y"}, "cfg_rev": 9}
    check_patch("sys", patch)
    assert patch == {"device": {"name": "n"}}


@pytest.mark.parametrize(
    ("key", "patch", "message"),
    [
        ("mqtt", {"topic_prefix": "$dev"}, "topic_prefix"),
        ("mqtt", {"server": " "}, "'server'"),
        ("sys", {"location": {"tz": 3}}, "expected string"),
        ("sys", {"location": {"tz": "Mars/Base"}}, "unknown time zone"),
    ],
)
def test_check_patch_rejects_what_the_firmware_rejects(
    key: str, patch: dict[str, Any], message: str
) -> None:
    with pytest.raises(RpcCallError, match=message) as info:
        check_patch(key, patch)
    assert info.value.code == -103


def test_defaults_and_null_mqtt_fields_mean_the_device_id() -> None:
    cfg = default_config(SPEC, device_id="d", mac="AABBCCDDEEFF", name=None, fw_id=SPEC.fw_id)
    assert sorted(cfg) == ["ble", "cloud", "mqtt", "sys", "wifi", "ws"]
    assert cfg["sys"]["device"]["profile"] == "triphase"
    mqtt = {**cfg["mqtt"], "client_id": None, "topic_prefix": None}
    fill_mqtt_defaults(mqtt, "d")
    assert (mqtt["client_id"], mqtt["topic_prefix"]) == ("d", "d")


def test_local_time_falls_back_to_utc() -> None:
    assert local_time(1_720_717_200.0, "Europe/Berlin") == ("19:00", 7200)
    assert local_time(1_720_717_200.0, None) == ("17:00", 0)


def test_updates_offered_and_installed() -> None:
    assert available_updates(SPEC.ver, SPEC.ver) == {"stable": STABLE, "beta": BETA}
    assert available_updates(SPEC.ver, STABLE[0]) == {"beta": BETA}
    assert check_for_update({"beta": BETA}) == {"beta": {"version": BETA[0], "build_id": BETA[1]}}
    offered = available_updates(SPEC.ver, SPEC.ver)
    assert update_target({}, offered) == STABLE
    assert update_target({"stage": "beta"}, offered) == BETA
    assert update_target({"url": "http://h/fw-1.7.0.zip"}, {}) == (
        "1.7.0",
        "20250101-000000/1.7.0-gsimfw0",
    )
    assert update_target({"url": "http://h/fw.zip"}, {}) == STABLE


@pytest.mark.parametrize(
    ("params", "code"), [({"stage": "alpha"}, -103), ({"stage": "beta"}, -109)]
)
def test_update_target_errors(params: dict[str, Any], code: int) -> None:
    with pytest.raises(RpcCallError) as info:
        update_target(params, {"stable": STABLE})
    assert info.value.code == code
