"""kilowatch.intake: MQTT messages in, committed energy out.

``client``: the MQTT intake (paho-mqtt driven from asyncio: QoS 1, persistent session, acks only
after the store committed); ``pipeline``: messages → decoders → ledger → one ``Batch`` → store;
``commit``: one batch into the store (retried while the store is unavailable, a record no store can
hold set aside as a dead letter); ``stats``: the ingest counters and the health they tell;
``live``: the hub that fans the latest readings out to the web app's live views.
"""

from kilowatch.intake.client import Delivery, MqttIntake, MqttOptions
from kilowatch.intake.commit import Committer
from kilowatch.intake.live import LiveHub
from kilowatch.intake.pipeline import Pipeline
from kilowatch.intake.stats import CommitFailure, IngestHealth, IngestStats

__all__ = [
    "CommitFailure",
    "Committer",
    "Delivery",
    "IngestHealth",
    "IngestStats",
    "LiveHub",
    "MqttIntake",
    "MqttOptions",
    "Pipeline",
]
