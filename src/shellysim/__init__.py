"""shellysim: faithful simulated Shelly Gen2/Gen3 devices, one fleet per process.

``async with Fleet(devices=20, broker="mqtt://127.0.0.1:1883", speed=3600) as fleet`` runs devices
that answer HTTP/WebSocket RPC, publish over MQTT like the firmware, meter deterministic loads and
record the exact energy (:class:`Truth`) so kilowatch's results can be checked against it.
"""

from shellysim.auth import ha1_for
from shellysim.clock import ManualClock, SimClock
from shellysim.device import Device
from shellysim.faults import Fault, FaultKind, chaos_plan
from shellysim.fleet import Fleet, parse_broker
from shellysim.host import ScriptEngineLike, ScriptHost, ScriptRuntimeLike
from shellysim.meter import Truth
from shellysim.models import MODELS, ModelSpec, mac_for, model_spec
from shellysim.profiles import LoadKind, LoadProfile
from shellysim.server import DeviceServer

__all__ = [
    "MODELS",
    "Device",
    "DeviceServer",
    "Fault",
    "FaultKind",
    "Fleet",
    "LoadKind",
    "LoadProfile",
    "ManualClock",
    "ModelSpec",
    "ScriptEngineLike",
    "ScriptHost",
    "ScriptRuntimeLike",
    "SimClock",
    "Truth",
    "chaos_plan",
    "ha1_for",
    "mac_for",
    "model_spec",
    "parse_broker",
]
