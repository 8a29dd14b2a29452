"""Prometheus text exposition format 0.0.4, written by hand (no extra dependency).

Gauges from the latest readings (power, voltage, current, frequency), the devices' own cumulative
energy counters (a counter that resets on a device reboot: Prometheus' ``increase()`` handles that),
device online state, dead letters by reason, the ingest counters the service hands in, and the
commit stage's health: failed commits by kind, seconds since the last successful commit, how long
commits have been failing, batches and messages in flight and the age of the oldest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from kilowatch.intake.stats import IngestHealth
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
    health: IngestHealth | None = None,
) -> str:
    """The whole ``/metrics`` page (``health``: the ingest's, when the service runs one)."""
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
    if health is not None:
        lines += _health(health)
    lines += _family(
        "kilowatch_live_subscribers",
        "gauge",
        "Open live streams (SSE).",
        [("", float(live_subscribers))],
    )
    return "\n".join(lines) + "\n"


def _health(health: IngestHealth) -> list[str]:
    lines = _family(
        "kilowatch_ingest_commit_failures_total",
        "counter",
        "Failed commit attempts since start, by kind: unavailable (the store down, full or "
        "locked: retried), unstorable (a record set aside as a dead letter), unexpected (a bug: "
        "retried).",
        [(_labels(kind=kind), float(n)) for kind, n in sorted(health.commit_failures.items())],
    )
    for name, help_text, value in (
        (
            "kilowatch_ingest_seconds_since_commit",
            "Seconds since the last successful commit (since start when none yet).",
            health.seconds_since_commit,
        ),
        (
            "kilowatch_ingest_commit_failing_seconds",
            "Seconds commits have been failing without a success (0 while they succeed).",
            health.failing_for_s,
        ),
        (
            "kilowatch_ingest_batches_in_flight",
            "Batches received and not yet committed and acknowledged.",
            float(health.batches_in_flight),
        ),
        (
            "kilowatch_ingest_messages_in_flight",
            "Messages received and not yet committed and acknowledged.",
            float(health.messages_in_flight),
        ),
        (
            "kilowatch_ingest_oldest_in_flight_seconds",
            "Age of the oldest batch not yet committed (0 when none waits).",
            health.oldest_in_flight_s,
        ),
        (
            "kilowatch_ingest_degraded",
            "1 when /api/v1/health reports the ingest degraded (commits failing or stuck).",
            0.0 if health.ok else 1.0,
        ),
    ):
        lines += _family(name, "gauge", help_text, [("", value)])
    return lines


__all__ = ["CONTENT_TYPE", "render"]
