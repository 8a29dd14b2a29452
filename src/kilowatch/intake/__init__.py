"""kilowatch.intake: MQTT messages in, committed energy out.

``client``: the MQTT intake (paho-mqtt driven from asyncio: QoS 1, persistent session, acks only
after the store committed); ``pipeline``: messages → decoders → ledger → one ``Batch`` → store;
``live``: the hub that fans the latest readings out to the web app's live views.
"""

from kilowatch.intake.client import Delivery, MqttIntake, MqttOptions
from kilowatch.intake.live import LiveHub
from kilowatch.intake.pipeline import IngestStats, Pipeline

__all__ = ["Delivery", "IngestStats", "LiveHub", "MqttIntake", "MqttOptions", "Pipeline"]
