"""The shipped metering script stays within a device's documented limits (shelly-api.md §14.2,
§15) while it runs in the simulator through a long MQTT outage.

The simulated device runs the real script in V8 with limits far tighter than a device's (one
timer, one call in flight, no handlers or subscriptions): past any of them the script would throw
and stop. Its KVS is shared with another script's 39 keys of the longest value, so the metering
script has 11 keys of the device's 50; every KVS state is sampled while the backlog grows over
30 hours and drains.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kilowatch.fleet.scripts import read_script
from kilowatch.testing import MosquittoServer
from shellysim.fleet import Fleet
from shellysim.scripting import ScriptEngine, ScriptLimits

HOUR = 3600
T0 = 1_720_717_200  # a full UTC hour
OUTAGE_H = 30
CODE_MAX = 15_000
KEY_MAX, VALUE_MAX, KEYS_MAX = 42, 253, 50
OTHER_KEYS = KEYS_MAX - 11


class Collector:
    """A real MQTT client recording every message on ``/system/+/status`` (QoS 1)."""

    def __init__(self, server: MosquittoServer) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"limits-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe("/system/+/status", qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", server.port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("collector did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(msg.payload))

    def stamps(self) -> list[int]:
        with self._lock:
            return [m["timestamp"] for m in self.messages]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_the_code_fits() -> None:
    assert len(read_script().encode()) <= CODE_MAX


async def test_the_script_stays_within_the_device_limits_through_a_long_outage(
    mosquitto: MosquittoServer,
) -> None:
    tight = ScriptLimits(
        timers=1, calls=1, status_handlers=1, event_handlers=0, mqtt_subscriptions=0
    )
    fleet = Fleet(
        devices=1,
        models=("pm1",),
        broker=mosquitto.url,
        http=False,
        engine=ScriptEngine(limits=tight),
        script=read_script(),
        speed=7_200,  # two simulated hours per real second: a loaded machine still sees each hour
        start=T0 - 600,  # the script loads around T0: the first hour may be partial
        tick_s=0.05,
    )
    dev = fleet.devices[0]
    for i in range(OTHER_KEYS):  # another script's keys, each as long as allowed
        dev.kvs.set({"key": f"other_script_key_{i:02d}", "value": "x" * VALUE_MAX})
    peak = {"keys": 0, "key_len": 0, "value_len": 0, "ours": 0}

    async def sample() -> None:
        while True:
            items = dev.kvs.items
            peak["keys"] = max(peak["keys"], len(items))
            peak["ours"] = max(peak["ours"], sum(k.startswith("kwh_") for k in items))
            for key, (value, _) in items.items():
                peak["key_len"] = max(peak["key_len"], len(key))
                text = value if isinstance(value, str) else json.dumps(value)
                peak["value_len"] = max(peak["value_len"], len(text))
            await asyncio.sleep(0.005)

    collector = Collector(mosquitto)
    try:
        async with fleet:
            sampler = asyncio.create_task(sample())
            await fleet.wait_connected()
            await fleet.wait_until(T0 + 2.5 * HOUR)
            dev.fault_outage(OUTAGE_H * HOUR)
            await fleet.wait_until(T0 + (OUTAGE_H + 4) * HOUR + 60)
            # generous: the backlog drains at one call at a time, slower on a loaded machine
            async with asyncio.timeout(90):
                while len(set(collector.stamps())) < OUTAGE_H + 3:
                    await asyncio.sleep(0.05)
            slot = next(iter(dev.scripts.slots.values()))
            assert slot.running, slot.status()
            sampler.cancel()
    finally:
        collector.close()
    stamps = collector.stamps()
    hours = [T0 + i * HOUR for i in range(1, OUTAGE_H + 4)]
    # later hours may follow (the clock ran on); the hour T0 is whole only when the script loaded
    # before it began, which depends on how fast the machine is
    firsts = [s for s in dict.fromkeys(stamps) if s >= hours[0]]
    assert firsts[: len(hours)] == hours, "every hour of the outage arrived, oldest first"
    assert peak["keys"] <= KEYS_MAX and peak["key_len"] <= KEY_MAX
    assert peak["value_len"] <= VALUE_MAX
    assert peak["ours"] >= 4, "the backlog really was in KVS"
    assert peak["ours"] <= 11
    print(f"\nKVS peak: {peak}; {len(stamps)} messages for {len(hours)} hours")
