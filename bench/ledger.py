"""Micro-benchmark of the ledger's hot path: readings per second.

    PYTHONPATH=src python bench/ledger.py [--channels 100] [--readings 200000]

Feeds one reading per channel per minute (a fleet of Shelly Gen2+ meters reporting ``aenergy``),
with import and export counters, as the ingest pipeline does, and takes the dirty states once per
batch of 500 readings. The same readings stamped on receipt (Gen1, Tasmota, Zigbee2MQTT: rule 12 of
docs/energy-accounting.md) are timed too, arriving on time and as a backlog read after ten hours
down (a millisecond apart, then one reading on time per channel). Prints the rates; the last line
is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from kilowatch.ledger import Ledger
from kilowatch.model.messages import Reading
from kilowatch.model.slots import merge_slot_energy

H = 1720717200


def make_readings(channels: int, count: int) -> list[Reading]:
    readings = []
    for i in range(count):
        minute, ch = divmod(i, channels)
        readings.append(
            Reading(
                f"shellypmminig3-{ch:012x}",
                "pm1:0",
                H + 60 * minute + ch * 0.01,
                power_w=1000.0,
                energy_wh=10_000.0 + minute * 16.667 + ch,
                returned_energy_wh=0.0,
            )
        )
    return readings


def backlog(readings: list[Reading], channels: int) -> list[Reading]:
    """The readings stamped on receipt: the first two minutes on time, the rest read ten hours
    later a millisecond apart, then one more minute on time."""
    out = []
    back = readings[-1].ts + 10 * 3600
    for n, reading in enumerate(readings):
        at = reading.ts if n < 2 * channels else back + n / 1000
        out.append(dataclasses.replace(reading, ts=at, stamped_on_receipt=True))
    for reading in readings[-channels:]:
        energy = (reading.energy_wh or 0.0) + 16.667
        at = out[-1].ts + 60
        out.append(dataclasses.replace(reading, ts=at, energy_wh=energy, stamped_on_receipt=True))
    return out


def _noop(reading: Reading) -> list[object]:
    return []


def run(readings: list[Reading], batch: int) -> tuple[float, int, int]:
    ledger = Ledger()
    rows = 0
    merged = 0
    start = time.perf_counter()
    pending = []
    for n, reading in enumerate(readings, 1):
        pending += ledger.add_reading(reading)
        if n % batch == 0:
            rows += len(pending)
            merged += len(merge_slot_energy(pending))
            ledger.take_dirty_states()
            pending = []
    elapsed = time.perf_counter() - start
    return elapsed, rows, merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    readings = make_readings(args.channels, args.readings)
    best = min(run(readings, args.batch) for _ in range(3))
    elapsed, rows, merged = best
    rate = args.readings / elapsed
    received = [dataclasses.replace(r, stamped_on_receipt=True) for r in readings]
    received_rate = args.readings / min(run(received, args.batch) for _ in range(3))[0]
    late = backlog(readings, args.channels)
    late_elapsed, late_rows, _ = min(run(late, args.batch) for _ in range(3))
    late_rate = len(late) / late_elapsed
    ledger = Ledger()
    for reading in readings:
        ledger.add_reading(reading)
    start = time.perf_counter()
    for reading in readings:  # every one a duplicate now
        ledger.add_reading(reading)
    replay_rate = args.readings / (time.perf_counter() - start)
    # Calibration: the same loop calling a function that does nothing. The machine's load changes
    # absolute rates a lot; the ratio to this ceiling does not.
    start = time.perf_counter()
    for reading in readings:
        _noop(reading)
    ceiling = args.readings / (time.perf_counter() - start)
    print(f"readings: {args.readings} over {args.channels} channels, batches of {args.batch}")
    print(f"ceiling (a no-op call per reading): {ceiling:,.0f}/s")
    print(f"accounted: {rate:,.0f} readings/s ({rows} slot rows, {merged} after merging)")
    print(f"replayed duplicates: {replay_rate:,.0f} readings/s")
    print(f"stamped on receipt, on time: {received_rate:,.0f} readings/s")
    print(f"stamped on receipt, a backlog after 10 h down: {late_rate:,.0f} readings/s")
    print(
        json.dumps(
            {
                "readings": args.readings,
                "channels": args.channels,
                "readings_per_s": round(rate),
                "duplicates_per_s": round(replay_rate),
                "on_receipt_per_s": round(received_rate),
                "backlog_per_s": round(late_rate),
                "backlog_slot_rows": late_rows,
                "noop_calls_per_s": round(ceiling),
                "ratio_to_noop": round(rate / ceiling, 3),
                "slot_rows": rows,
                "slot_rows_merged": merged,
            }
        )
    )


if __name__ == "__main__":
    main()
