"""The simulator's errors: one base, a subclass by cause. shellysim stands on its own, so these are
not kilowatch's errors; ``kilowatch simulate`` and ``kilowatch demo`` turn them into one line."""

from __future__ import annotations


class SimulatorError(Exception):
    """Base class of every error the simulator raises on purpose."""


class SimConfigError(SimulatorError):
    """An option of a fleet or device is invalid (model, vendor, broker URL, port range)."""


class MqttError(SimulatorError):
    """A simulated device could not reach its MQTT broker, or the broker refused it."""


class RpcCallError(SimulatorError):
    """A device's answer to an RPC call is an error frame ``{"code": .., "message": ..}``: the
    same codes and messages as the firmware (shelly-api.md §2)."""

    def __init__(self, code: int, message: str, *, method: str | None = None) -> None:
        where = f"{method}: " if method else ""
        super().__init__(f"{where}RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.method = method


__all__ = ["MqttError", "RpcCallError", "SimConfigError", "SimulatorError"]
