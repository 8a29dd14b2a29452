"""The Shelly scripts kilowatch installs on meters, shipped as package data.

``hourly_energy.js`` publishes each full UTC hour's energy to ``/system/<device id>/status`` with
store-and-forward through KVS while MQTT is down (docs/scripting.md).
"""

from __future__ import annotations

from importlib import resources

HOURLY_ENERGY = "hourly_energy.js"
"""File name of the hourly metering script."""
SHIPPED_SCRIPTS = (HOURLY_ENERGY,)
"""Every script shipped here; a profile names one as ``file = "kilowatch:<name>"``."""
SHIPPED_PREFIX = "kilowatch:"


def read_script(name: str = HOURLY_ENERGY) -> str:
    """The source of the shipped script ``name``."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


__all__ = ["HOURLY_ENERGY", "SHIPPED_PREFIX", "SHIPPED_SCRIPTS", "read_script"]
