"""The system components of a device (``sys``, ``mqtt``, ``wifi``, ``cloud``, ``ws``, ``ble``):
their config out of the box and what ``<Component>.SetConfig`` accepts (shelly-api.md §7.1, §11).

Pure: the device owns the config dicts and merges a checked patch into them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import shellysim.rpcutil as r
from shellysim.models import ModelSpec

SYSTEM_COMPONENTS = {
    "Sys": "sys",
    "Mqtt": "mqtt",
    "Wifi": "wifi",
    "Cloud": "cloud",
    "WS": "ws",
    "BLE": "ble",
}
"""RPC namespace → component key; each has ``GetStatus``, ``GetConfig`` and ``SetConfig``."""

# Changing these needs a reboot to take effect (the answer's ``restart_required``).
_RESTART_KEYS = frozenset(("mqtt", "wifi", "ws", "cloud"))

LOG_LEVEL_INFO = 2
"""``sys.debug.level`` out of the box, and the level of the device's own log lines."""


def default_config(
    spec: ModelSpec, *, device_id: str, mac: str, name: str | None, fw_id: str
) -> dict[str, dict[str, Any]]:
    """The system components' ``GetConfig`` on a device out of the box (or factory reset)."""
    sys_device: dict[str, Any] = {
        "name": name,
        "mac": mac,
        "fw_id": fw_id,
        "discoverable": True,
        "eco_mode": False,
        "addon_type": None,
        "sys_btn_toggle": True,
    }
    if spec.profile:
        sys_device["profile"] = spec.profile
    return {
        "ble": {"enable": True, "rpc": {"enable": True}},
        "cloud": {"enable": False, "server": "iot.shelly.cloud:6012/jrpc"},
        "mqtt": default_mqtt_config(device_id),
        "sys": {
            "device": sys_device,
            "location": {"tz": "Europe/Berlin", "lat": None, "lon": None},
            "debug": {
                "level": LOG_LEVEL_INFO,
                "file_level": None,
                "mqtt": {"enable": False},
                "websocket": {"enable": False},
                "udp": {"addr": None},
            },
            "ui_data": {},
            "rpc_udp": {"dst_addr": None, "listen_port": None},
            "sntp": {"server": "time.google.com"},
        },
        "wifi": {
            "ap": {"ssid": f"Shelly{spec.app}-{mac}", "is_open": True, "enable": False},
            "sta": {
                "ssid": "kilowatch-sim",
                "is_open": False,
                "enable": True,
                "ipv4mode": "dhcp",
                "ip": None,
                "netmask": None,
                "gw": None,
                "nameserver": None,
            },
            "roam": {"rssi_thr": -80, "interval": 60},
        },
        "ws": {"enable": False, "server": None, "ssl_ca": "ca.pem"},
    }


def default_mqtt_config(device_id: str) -> dict[str, Any]:
    """``MQTT.GetConfig`` out of the box (PM Mini G3 fw 1.2.2 capture, §7.1)."""
    return {
        "enable": False,
        "server": None,
        "client_id": device_id,
        "user": None,
        "ssl_ca": None,
        "topic_prefix": device_id,
        "rpc_ntf": True,
        "status_ntf": False,
        "use_client_cert": False,
        "enable_rpc": True,
        "enable_control": True,
    }


def check_patch(key: str, patch: dict[str, Any]) -> bool:
    """Check a ``SetConfig`` patch of component ``key`` and drop its read-only fields, in place;
    returns whether applying it needs a restart. Raises -103 where the firmware does."""
    restart = key in _RESTART_KEYS or (
        key == "sys" and "listen_port" in (patch.get("rpc_udp") or {})
    )
    if key == "mqtt":
        validate_mqtt_patch(patch)
    if key == "sys":
        patch.get("device", {}).pop("mac", None)
        patch.get("device", {}).pop("fw_id", None)
        patch.pop("cfg_rev", None)
        tz = (patch.get("location") or {}).get("tz")
        if tz is not None:
            _check_tz(tz)
    return restart


def validate_mqtt_patch(patch: dict[str, Any]) -> None:
    """Reject MQTT settings the firmware rejects (§7.1)."""
    prefix = patch.get("topic_prefix")
    if prefix is not None:
        if not isinstance(prefix, str) or len(prefix) > 300 or prefix.startswith("$"):
            raise r.invalid("Invalid argument 'topic_prefix'")
        if any(c in prefix for c in "#+%?"):
            raise r.invalid("Invalid argument 'topic_prefix': must not contain #, +, % or ?")
    ssl_ca = patch.get("ssl_ca", "ca.pem")
    if ssl_ca not in (None, "*", "user_ca.pem", "ca.pem"):
        raise r.invalid("Invalid argument 'ssl_ca': expected null, '*', 'user_ca.pem' or 'ca.pem'")
    server = patch.get("server")
    if server is not None and (not isinstance(server, str) or not server.strip()):
        raise r.invalid("Invalid argument 'server'")


def fill_mqtt_defaults(mqtt: dict[str, Any], device_id: str) -> None:
    """A ``null`` client id or topic prefix means the device id (§7.1)."""
    mqtt["client_id"] = mqtt["client_id"] or device_id
    mqtt["topic_prefix"] = mqtt["topic_prefix"] or device_id


def local_time(now: float, tz_name: str | None) -> tuple[str, int]:
    """``Sys.GetStatus`` ``time`` (``HH:MM``) and ``utc_offset`` (s) in the configured zone."""
    try:
        tz = ZoneInfo(tz_name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    offset = local.utcoffset()
    return local.strftime("%H:%M"), int(offset.total_seconds()) if offset else 0


def _check_tz(tz: Any) -> None:
    if not isinstance(tz, str):
        raise r.invalid("Invalid argument 'location.tz': expected string")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.invalid(f"Invalid argument 'location.tz': unknown time zone {tz!r}") from None


__all__ = [
    "LOG_LEVEL_INFO",
    "SYSTEM_COMPONENTS",
    "check_patch",
    "default_config",
    "default_mqtt_config",
    "fill_mqtt_defaults",
    "local_time",
    "validate_mqtt_patch",
]
