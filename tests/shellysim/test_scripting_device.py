"""Scripts in the real simulated device: Script.* RPC with the V8 engine, and the hourly metering
script kilowatch ships, through the device's MQTT client and a real mosquitto, across an outage.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kilowatch.fleet.scripts import read_script
from kilowatch.testing import MosquittoServer
from shellysim.errors import RpcCallError
from shellysim.fleet import Fleet
from shellysim.scripting import ScriptEngine

HOUR = 3600
T0 = 1_720_717_200  # a full UTC hour


class Collector:
    """A real MQTT client that records every message on ``topic_filter`` (QoS 1)."""

    def __init__(self, server: MosquittoServer, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", server.port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(payload) for _, payload in self.messages]

    def publish(self, topic: str, payload: str) -> None:
        self._client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def collector(mosquitto: MosquittoServer) -> Iterator[Collector]:
    c = Collector(mosquitto, "/system/+/status")
    yield c
    c.close()


async def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_script_rpc_runs_code_in_v8() -> None:
    engine = ScriptEngine()
    async with Fleet(devices=1, http=False, engine=engine, speed=60, start=T0) as fleet:
        dev = fleet.devices[0]
        sid = (await dev.call("Script.Create", {"name": "t"}, source="test"))["id"]
        code = "let n = 0; Timer.set(1000, true, function () { n++; }); print('up');"
        await dev.call("Script.PutCode", {"id": sid, "code": code}, source="test")
        assert await dev.call("Script.Start", {"id": sid}, source="test") == {"was_running": False}
        async with asyncio.timeout(10):  # the timer ticks every simulated second (1/60 s)
            while True:
                result = await dev.call("Script.Eval", {"id": sid, "code": "n"}, source="test")
                if int(result["result"]) >= 5:
                    break
                await asyncio.sleep(0.02)
        status = await dev.call("Script.GetStatus", {"id": sid}, source="test")
        assert status["running"] is True and status["mem_free"] > 0
        assert any("up" in line for line in dev.log_ring)
        await dev.call("Script.Stop", {"id": sid}, source="test")
        bad = "let o = null; Timer.set(1000, false, function () { o.x = 1; });"
        await dev.call("Script.PutCode", {"id": sid, "code": bad}, source="test")
        await dev.call("Script.Start", {"id": sid}, source="test")
        await wait_for(lambda: not dev.scripts.slots[sid].running, 5)
        status = await dev.call("Script.GetStatus", {"id": sid}, source="test")
        assert status["running"] is False
        assert status["errors"] == ["type_error"]
        with pytest.raises(RpcCallError):
            await dev.call("Script.Eval", {"id": sid, "code": "1"}, source="test")


async def test_hourly_script_on_a_device_across_an_mqtt_outage(
    mosquitto: MosquittoServer, collector: Collector
) -> None:
    engine = ScriptEngine()
    start = T0 - 900  # a quarter of a simulated hour before a full hour: time to load from KVS
    fleet = Fleet(
        devices=1,
        models=("3em",),  # base load, boiler and AC on three phases: never an idle hour
        broker=mosquitto.url,
        http=False,
        engine=engine,
        script=read_script(),
        speed=1800,  # one simulated hour in two real seconds
        start=start,
        tick_s=0.05,
    )
    dev = fleet.devices[0]
    # Record what the device's counter said each time the script's view of it was refreshed
    # (instrumentation around the real host method, installed before the script starts).
    reads: list[tuple[float, float]] = []
    real_status = dev.script_host.component_status

    def recording_status(key: str) -> dict[str, Any] | None:
        status = real_status(key)
        if key == "emdata:0" and status is not None:
            reads.append((dev.now(), status["total_act"]))
        return status

    dev.script_host.component_status = recording_status  # type: ignore[method-assign]
    async with fleet:
        await fleet.wait_connected()
        await fleet.wait_until(T0 + 1.5 * HOUR)
        dev.fault_outage(2 * HOUR)  # MQTT down across the full hours T0+2h and T0+3h
        await fleet.wait_until(T0 + 4 * HOUR + 60)
        await wait_for(lambda: len(collector.json()) >= 4)
    got = collector.json()
    stamps = [m["timestamp"] for m in got]
    assert stamps == [T0 + HOUR * i for i in range(4)], "every hour exactly once, in order"
    assert {m["id"] for m in got} == {dev.id}

    def first_read_after(boundary: float) -> tuple[float, float]:
        return next((t, v) for t, v in reads if t >= boundary)

    for m in got:
        (t0, v0), (t1, v1) = (
            first_read_after(m["timestamp"]),
            first_read_after(m["timestamp"] + HOUR),
        )
        # the script read the counters right after each hour turned (loop latency × 1800 only)
        assert t0 - m["timestamp"] < 300 and t1 - m["timestamp"] - HOUR < 300
        # and reported exactly the counter difference, also for the hours it stored and forwarded
        assert m["hourly_energy_usage"] == pytest.approx(v1 - v0, abs=0.011), m
    energies = [m["hourly_energy_usage"] for m in got]
    want, _ = fleet.truth.total(dev.id, "em:0", T0, T0 + 4 * HOUR)
    # The four hours add up to what flowed, but for the few simulated seconds at either end
    assert sum(energies) == pytest.approx(want, rel=0.01)


async def test_script_mqtt_subscribe_publish_and_events_through_mosquitto(
    mosquitto: MosquittoServer,
) -> None:
    base = f"kwtest/{uuid.uuid4().hex[:8]}"
    echo = Collector(mosquitto, f"{base}/#")
    code = f"""
    let ups = 0;
    MQTT.setConnectHandler(function () {{ ups++; }});
    MQTT.subscribe("{base}/in/+", function (topic, message) {{
      let reply = {{t: topic, m: message, c: MQTT.isConnected()}};
      MQTT.publish("{base}/out", JSON.stringify(reply), 1);
      Shelly.emitEvent("echoed", {{m: message}});
    }});
    """
    try:
        async with Fleet(
            devices=1, broker=mosquitto.url, http=False, engine=ScriptEngine()
        ) as fleet:
            dev = fleet.devices[0]
            events: list[dict[str, Any]] = []
            dev.add_sink(lambda method, params: events.extend(params.get("events", [])))
            await fleet.wait_connected()
            sid = (await dev.call("Script.Create", {}, source="test"))["id"]
            await dev.call("Script.PutCode", {"id": sid, "code": code}, source="test")
            await dev.call("Script.Start", {"id": sid}, source="test")

            def echoed() -> list[dict[str, Any]]:
                return [json.loads(p) for t, p in echo.messages if t == f"{base}/out"]

            # the broker subscription is made asynchronously: publish until the echo comes back
            async with asyncio.timeout(20):
                while not echoed():
                    echo.publish(f"{base}/in/lamp", "ping")
                    await asyncio.sleep(0.1)
            assert echoed()[0] == {"t": f"{base}/in/lamp", "m": "ping", "c": True}
            await wait_for(lambda: any(e.get("event") == "echoed" for e in events), 5)
            item = next(e for e in events if e.get("event") == "echoed")
            assert item["component"] == f"script:{sid}" and item["data"] == {"m": "ping"}
            dev.fault_outage(0.3)  # the connection drops; the device reconnects afterwards
            async with asyncio.timeout(20):
                while True:
                    ups = await dev.call("Script.Eval", {"id": sid, "code": "ups"}, source="test")
                    if int(ups["result"]) >= 1:
                        break
                    await asyncio.sleep(0.05)
            await dev.call("Script.Stop", {"id": sid}, source="test")
    finally:
        echo.close()
