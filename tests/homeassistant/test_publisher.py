"""Home Assistant's side of the wire: a real mosquitto, kilowatch's serve in-process with
``homeassistant = true``, a device publishing readings, and an MQTT 5 client subscribed to
``homeassistant/#`` as Home Assistant is."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from svchelpers import Publisher, forget_session, poll, running_service, unique

from kilowatch.service.config import Settings, load_settings
from kilowatch.testing import MosquittoServer


class HomeAssistant:
    """An MQTT 5 client that keeps every message of ``homeassistant/#`` and ``kilowatch/#``."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, bytes]] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=unique("ha-"), protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("homeassistant/#", 1), ("kilowatch/#", 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.received.append((message.topic, message.payload))

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.received if t == topic]

    def forget(self) -> None:
        with self.lock:
            self.received.clear()

    def birth(self) -> None:
        self.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(10)

    def clear_retained(self, prefix: str) -> None:
        """Remove the retained messages this test left (the broker is shared by the worker)."""
        with self.lock:
            topics = {t for t, p in self.received if p and prefix in t}
        for t in topics:
            self.client.publish(t, b"", qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def notify(device: str, ts: float, **components: Any) -> tuple[str, dict[str, Any]]:
    frame = {"src": device, "dst": f"{device}/events", "method": "NotifyStatus",
             "params": {"ts": ts, **components}}  # fmt: skip
    return f"{device}/events/rpc", frame


def switch(ts: float, device: str, *, total: float, power: float) -> tuple[str, dict[str, Any]]:
    return notify(device, ts, **{"switch:0": {"id": 0, "output": True, "apower": power,
                                              "aenergy": {"total": total}}})  # fmt: skip


async def test_home_assistant_discovers_the_meters(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    settings: Settings = load_settings(
        {"broker": mosquitto.url, "store": f"sqlite:///{tmp_path}/kw.db", "tz": "UTC",
         "mqtt_client_id": unique("kw-ha-"), "data_dir": str(tmp_path / "data"),
         "homeassistant": True},
        env={},
    )  # fmt: skip
    device = unique("shellyplus1pm-")
    config_topic = f"homeassistant/sensor/{device}/switch_0_energy/config"
    power_config = f"homeassistant/sensor/{device}/switch_0_power/config"
    energy_topic = f"kilowatch/{device}/switch:0/energy"
    power_topic = f"kilowatch/{device}/switch:0/power"
    ha = HomeAssistant(mosquitto.port)
    pub = Publisher(mosquitto.port)
    t0 = time.time() - 600
    try:
        async with running_service(settings):
            pub.publish_many([switch(t0, device, total=1000.0, power=50.0),
                              switch(t0 + 60, device, total=1010.0, power=60.0)])  # fmt: skip
            await poll(lambda: ha.payloads(config_topic) and ha.payloads(power_config),
                       what="both sensors' configs")  # fmt: skip
            config = json.loads(ha.payloads(config_topic)[-1])
            assert (config["device_class"], config["state_class"]) == ("energy", "total_increasing")
            assert config["unit_of_measurement"] == "kWh"
            assert config["device"]["identifiers"] == [f"kilowatch_{device}"]
            assert json.loads(ha.payloads(power_config)[-1])["unit_of_measurement"] == "W"
            await poll(lambda: b"0.01" in ha.payloads(energy_topic), what="10 Wh as 0.01 kWh")
            await poll(lambda: b"60" in ha.payloads(power_topic), what="the latest power")
            await poll(lambda: ha.payloads("kilowatch/status")[-1:] == [b"online"])
            assert ha.payloads(f"kilowatch/{device}/availability")[-1] == b"online"

            # The device resets: its counter falls to 2 Wh, then rises by 3 Wh. The corrected
            # total never falls.
            pub.publish_many([switch(t0 + 120, device, total=2.0, power=70.0),
                              switch(t0 + 180, device, total=5.0, power=80.0)])  # fmt: skip
            await poll(lambda: b"80" in ha.payloads(power_topic), what="the readings after reset")
            await poll(lambda: float(ha.payloads(energy_topic)[-1]) > 0.01, what="energy grows")
            values = [float(p) for p in ha.payloads(energy_topic)]
            assert values == sorted(values), values

            # Home Assistant restarts: its birth message brings every config again.
            ha.forget()
            ha.birth()
            await poll(lambda: ha.payloads(config_topic) and ha.payloads(power_config),
                       what="the configs again after homeassistant/status online")  # fmt: skip
        await poll(lambda: ha.payloads("kilowatch/status")[-1:] == [b"offline"],
                   what="kilowatch offline after a stop")  # fmt: skip
    finally:
        ha.clear_retained(device)
        pub.close()
        ha.close()
        forget_session(mosquitto.port, settings.mqtt_client_id)
