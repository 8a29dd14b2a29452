"""Firmware updates (shelly-api.md §17): which versions a device is offered and which one
``Shelly.Update`` installs. Pure; the device runs the OTA itself."""

from __future__ import annotations

import re
from typing import Any

import shellysim.rpcutil as r
from shellysim.models import NEXT_FIRMWARE

Firmware = tuple[str, str]
"""``(ver, fw_id)``, e.g. ``("1.5.1", "20250225-124101/1.5.1-g0dcd6e0")``."""

# A version in an update URL's file name ("shelly-1.5.1.zip"); the simulator never downloads.
_URL_VERSION = re.compile(r"(\d+\.\d+\.\d+(?:-[0-9a-z]+)?)")


def available_updates(model_ver: str, running_ver: str) -> dict[str, Firmware]:
    """Stages (``stable``, ``beta``) offering firmware newer than ``running_ver``."""
    order = [model_ver, *(ver for ver, _ in NEXT_FIRMWARE.values())]
    current = order.index(running_ver) if running_ver in order else len(order)
    return {
        stage: (ver, fw_id)
        for stage, (ver, fw_id) in NEXT_FIRMWARE.items()
        if order.index(ver) > current
    }


def check_for_update(available: dict[str, Firmware]) -> dict[str, Any]:
    """``Shelly.CheckForUpdate``'s answer."""
    return {stage: {"version": ver, "build_id": fw_id} for stage, (ver, fw_id) in available.items()}


def update_target(params: r.Params, available: dict[str, Firmware]) -> Firmware:
    """The firmware ``Shelly.Update`` with ``params`` installs (``stage`` or ``url``)."""
    stage = r.get_str(params, "stage", required=False)
    url = r.get_str(params, "url", required=False)
    if url is not None:
        found = _URL_VERSION.search(url)
        if found:
            return found.group(1), f"20250101-000000/{found.group(1)}-gsimfw0"
        return available.get("stable") or NEXT_FIRMWARE["stable"]
    stage = stage or "stable"
    if stage not in ("stable", "beta"):
        raise r.invalid("Invalid argument 'stage': expected 'stable' or 'beta'")
    if stage not in available:
        raise r.precondition(f"No {stage} update available")
    return available[stage]


__all__ = ["Firmware", "available_updates", "check_for_update", "update_target"]
