"""Micro-benchmark: Shelly NotifyStatus decoding rate (messages/s) of the decoder registry.

Decodes N NotifyStatus frames from D devices through ``default_registry().decode`` with one shared
``DecoderState``, like the intake does: a mix of instantaneous deltas (power, current) and, every
tenth frame, a delta that also carries the energy counters. Prints one line per scenario and,
last, one JSON object with every figure.

    PYTHONPATH=src python bench/decode.py [--messages 200000] [--devices 100]
"""

from __future__ import annotations

import argparse
import json
import time

import orjson

from kilowatch.decode import DecoderState, default_registry


def frames(devices: int, messages: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i in range(messages):
        device = f"shellypmminig3-{i % devices:012x}"
        delta: dict[str, object] = {"apower": 40.0 + i % 17, "current": 0.18 + (i % 5) / 100}
        if i % 10 == 0:
            delta["aenergy"] = {
                "total": 1000.0 + i / 100,
                "by_minute": [70.1, 70.2, 70.3],
                "minute_ts": 1752840120 + i,
            }
            delta["ret_aenergy"] = {"total": 0.0, "by_minute": [0, 0, 0], "minute_ts": 1752840120}
        frame = {
            "src": device,
            "dst": f"{device}/events",
            "method": "NotifyStatus",
            "params": {"ts": 1752840144.0 + i / 10, "pm1:0": delta},
        }
        out.append((f"{device}/events/rpc", orjson.dumps(frame)))
    return out


def full_status(devices: int) -> list[tuple[str, bytes]]:
    status = (
        b'{"id":0,"voltage":230.1,"current":0.2,"apower":45.0,"freq":50.0,'
        b'"aenergy":{"total":1000.0,"by_minute":[0,0,0],"minute_ts":1752840120},'
        b'"ret_aenergy":{"total":0.0,"by_minute":[0,0,0],"minute_ts":1752840120}}'
    )
    return [(f"shellypmminig3-{d:012x}/status/pm1:0", status) for d in range(devices)]


def run(batch: list[tuple[str, bytes]], state: DecoderState) -> tuple[float, int]:
    registry = default_registry()
    decode = registry.decode
    produced = 0
    start = time.perf_counter()
    for topic, payload in batch:
        produced += len(decode(topic, payload, received_at=1752840200.0, state=state))
    return time.perf_counter() - start, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=100)
    args = parser.parse_args()

    batch = frames(args.devices, args.messages)
    figures: dict[str, float | int] = {"messages": args.messages, "devices": args.devices}

    cold_state = DecoderState()
    seconds, produced = run(batch, cold_state)
    figures["notify_status_cold_msgs_per_s"] = round(args.messages / seconds)
    rate = args.messages / seconds
    print(f"NotifyStatus, no prior status: {rate:,.0f} msg/s ({produced} readings)")

    warm_state = DecoderState()
    run(full_status(args.devices), warm_state)
    seconds, produced = run(batch, warm_state)
    figures["notify_status_merged_msgs_per_s"] = round(args.messages / seconds)
    rate = args.messages / seconds
    print(f"NotifyStatus, merged on status: {rate:,.0f} msg/s ({produced} readings)")

    loads_start = time.perf_counter()
    for _, payload in batch:
        orjson.loads(payload)
    loads = time.perf_counter() - loads_start
    figures["orjson_loads_only_msgs_per_s"] = round(args.messages / loads)
    print(f"orjson.loads alone (floor):     {args.messages / loads:,.0f} msg/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
