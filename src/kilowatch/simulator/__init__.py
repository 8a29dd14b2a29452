"""kilowatch.simulator: faithful simulated Shelly Gen2/Gen3 devices, one fleet per process.

``async with Fleet(devices=20, broker="mqtt://127.0.0.1:1883", speed=3600) as fleet`` runs devices
that answer HTTP/WebSocket RPC, publish over MQTT like the firmware, meter deterministic loads and
record the exact energy (:class:`Truth`) so kilowatch's results can be checked against it.
"""

from kilowatch.simulator.auth import ha1_for
from kilowatch.simulator.clock import ManualClock, SimClock
from kilowatch.simulator.device import Device
from kilowatch.simulator.faults import Fault, FaultKind, chaos_plan
from kilowatch.simulator.fleet import Fleet, parse_broker
from kilowatch.simulator.host import ScriptEngineLike, ScriptHost, ScriptRuntimeLike
from kilowatch.simulator.meter import Truth
from kilowatch.simulator.models import MODELS, ModelSpec, mac_for, model_spec
from kilowatch.simulator.profiles import LoadKind, LoadProfile
from kilowatch.simulator.server import DeviceServer

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
