"""The Shelly scripts kilowatch installs on meters, shipped as package data.

``hourly_energy.js`` publishes each full UTC hour's energy to ``/system/<device id>/status`` with
store-and-forward through KVS while MQTT is down (docs/scripting.md).
"""

from __future__ import annotations

from importlib import resources

HOURLY_ENERGY = "hourly_energy.js"
"""File name of the hourly metering script."""


def read_script(name: str = HOURLY_ENERGY) -> str:
    """The source of the shipped script ``name``."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


__all__ = ["HOURLY_ENERGY", "read_script"]
