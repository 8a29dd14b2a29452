"""Prometheus text exposition format 0.0.4, written by hand (no extra dependency).

Gauges from the latest readings (power, voltage, current, frequency), the devices' own cumulative
energy counters (a counter that resets on a device reboot: Prometheus' ``increase()`` handles that),
device online state, dead letters by reason, and the ingest counters the service hands in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from kilowatch.model.messages import Reading
from kilowatch.store.protocol import DeviceRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_READING_GAUGES = (
    ("power_w", "kilowatch_power_watts", "gauge", "Active power now (W)."),
    ("voltage_v", "kilowatch_voltage_volts", "gauge", "Voltage now (V)."),
    ("current_a", "kilowatch_current_amperes", "gauge", "Current now (A)."),
    ("frequency_hz", "kilowatch_frequency_hertz", "gauge", "Grid frequency now (Hz)."),
    (
        "energy_wh",
        "kilowatch_energy_import_wh_total",
        "counter",
        "Device's imported energy counter (Wh).",
    ),
    (
        "returned_energy_wh",
        "kilowatch_energy_export_wh_total",
        "counter",
        "Device's exported (returned) energy counter (Wh).",
    ),
)
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    return repr(float(value)) if value == value else "NaN"


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_num(value)}" for labels, value in samples]
    return lines


def render(
    *,
    readings: Sequence[Reading],
    devices: Sequence[DeviceRecord],
    online: Mapping[str, bool],
    dead_letters: Mapping[str, int],
    ingest: Mapping[str, float],
    live_subscribers: int,
) -> str:
    """The whole ``/metrics`` page."""
    lines: list[str] = []
    for field, name, kind, help_text in _READING_GAUGES:
        samples = [
            (_labels(device=r.device, channel=r.channel), float(v))
            for r in readings
            if (v := getattr(r, field)) is not None
        ]
        lines += _family(name, kind, help_text, samples)
    lines += _family(
        "kilowatch_device_online",
        "gauge",
        "1 if the device is online (seen in the last 15 minutes and not said offline).",
        [(_labels(device=d.device), 1.0 if online.get(d.device) else 0.0) for d in devices],
    )
    lines += _family(
        "kilowatch_device_last_seen_seconds",
        "gauge",
        "Unix time the device was last heard from.",
        [(_labels(device=d.device), d.last_seen) for d in devices if d.last_seen is not None],
    )
    lines += _family(
        "kilowatch_dead_letters_total",
        "counter",
        "Messages that could not be decoded, by reason.",
        [(_labels(reason=reason), float(n)) for reason, n in sorted(dead_letters.items())],
    )
    for key, value in sorted(ingest.items()):
        # The service's ingest statistics are counters since start.
        name = "kilowatch_ingest_" + _NAME_OK.sub("_", key).removesuffix("_total") + "_total"
        lines += _family(name, "counter", f"Ingest count {key} since start.", [("", float(value))])
    lines += _family(
        "kilowatch_live_subscribers",
        "gauge",
        "Open live streams (SSE).",
        [("", float(live_subscribers))],
    )
    return "\n".join(lines) + "\n"


__all__ = ["CONTENT_TYPE", "render"]
