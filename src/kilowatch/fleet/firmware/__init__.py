"""Firmware over a fleet: what each device runs and is offered, and staged rollouts.

:func:`check_firmware` reads every selected device (a bounded number at once, each read bounded
in time): its version and the ``stable`` and ``beta`` versions it is offered, or why it could not
be read. :func:`rollout` updates the devices to a stage's offer in *waves*: a canary wave of
``canary`` devices, then waves that double (or of ``wave_size``), each device watched until it
reports the new version (:mod:`kilowatch.fleet.ota`). When more than ``max_failures`` devices
failed, no new wave starts: the devices not started are left untouched and reported
``skipped``; those already updated stay updated. Its :class:`RolloutReport` says which device is
which; every rollout is recorded in the audit log (``firmware.update``).

Devices are reached as :mod:`kilowatch.fleet.apply` reaches them: Gen2+ through an
:data:`~kilowatch.fleet.apply.Opener` (by default :func:`kilowatch.fleet.registry.open_rpc`, on
the LAN with the password from the secrets file, or over the broker), Gen1 (``gen`` 1, on the
LAN) over HTTP as aioshelly's block device does.
"""

from kilowatch.fleet.firmware.check import CHECK_TIMEOUT_S, FirmwareStatus, check_firmware
from kilowatch.fleet.firmware.ota import STAGES
from kilowatch.fleet.firmware.report import (
    OTA_TIMEOUT_S,
    DeviceResult,
    Outcome,
    ProgressCallback,
    RolloutOptions,
    RolloutProgress,
    RolloutReport,
    plan_waves,
)
from kilowatch.fleet.firmware.rollout import ACTION, rollout

__all__ = [
    "ACTION",
    "CHECK_TIMEOUT_S",
    "OTA_TIMEOUT_S",
    "STAGES",
    "DeviceResult",
    "FirmwareStatus",
    "Outcome",
    "ProgressCallback",
    "RolloutOptions",
    "RolloutProgress",
    "RolloutReport",
    "check_firmware",
    "plan_waves",
    "rollout",
]
