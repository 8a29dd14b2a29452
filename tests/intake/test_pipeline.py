"""The pipeline's build stage: an event that decodes but that no store can hold is a dead letter
with its message, and everything else in that message and its batch counts.

The built-in decoders refuse JSON nested deeper than they read; a decoder registered from outside
(the registry is the extension point) may not, so one is registered here, as a third party would.
"""

from __future__ import annotations

import json
from typing import Any

from kilowatch.decode.registry import default_registry
from kilowatch.decode.state import DecoderState
from kilowatch.intake.client import Delivery
from kilowatch.intake.commit import UNSTORABLE
from kilowatch.intake.pipeline import Pipeline
from kilowatch.ledger import Ledger
from kilowatch.model.messages import Event, LogLine, Message, Reading
from kilowatch.store import Store
from kilowatch.store.records import event_dumps, loads

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
DEVICE = "acme-0000000000aa"


class AcmeDecoder:
    """``acme/<device>/counter`` (a cumulative Wh counter), ``acme/<device>/event`` (any JSON,
    kept as the event's data) and ``acme/<device>/log`` (text)."""

    name = "acme"
    subscriptions = ("acme/+/+",)

    def matches(self, topic: str) -> bool:
        return topic.startswith("acme/")

    def decode(
        self, topic: str, payload: bytes, *, received_at: float, state: DecoderState
    ) -> list[Message]:
        _, device, kind = topic.split("/")
        if kind == "counter":
            return [Reading(device, "main", received_at, energy_wh=float(payload))]
        if kind == "log":
            return [LogLine(device, received_at, payload.decode())]
        data = json.loads(payload)
        return [Event(device, received_at, "acme", "changed", {"value": data})]

    def guess_topic(self, payload: bytes, *, device: str | None) -> str | None:
        return None


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def pipeline(store: Store | None = None) -> Pipeline:
    registry = default_registry()
    registry.register(AcmeDecoder())
    return Pipeline(registry=registry, ledger=Ledger({}), store=store)  # type: ignore[arg-type]


def deliveries(*messages: tuple[str, bytes]) -> list[Delivery]:
    return [
        Delivery(f"acme/{DEVICE}/{kind}", payload, T0 + 60 * k, k + 1, 1)
        for k, (kind, payload) in enumerate(messages)
    ]


DEEP = json.dumps(nested(253)).encode()


async def test_an_event_nested_too_deep_is_a_dead_letter_with_its_message(store: Store) -> None:
    ingest = pipeline(store)
    batch, readings = ingest.build(
        deliveries(
            ("counter", b"10"),
            ("event", b'{"ok": 1}'),
            ("event", DEEP),
            ("log", b"still here"),
            ("counter", b"12"),
        )
    )
    assert [e.data for e in batch.events] == [{"value": {"ok": 1}}]
    assert [x.message for x in batch.logs] == ["still here"]
    [letter] = batch.dead_letters
    assert (letter.topic, letter.payload) == (f"acme/{DEVICE}/event", DEEP)
    assert letter.reason == UNSTORABLE
    assert letter.detail == (
        f"event acme/changed of {DEVICE} cannot be stored: Recursion limit reached"
    )
    assert ingest.stats.dead_letters == {UNSTORABLE: 1}
    assert sum(s.import_mwh for s in batch.slots) == 2000  # 10 → 12 Wh
    assert readings and batch.latest
    await ingest.commit(batch, readings)  # the store takes it at the first attempt
    assert ingest.stats.commit_failures == 0 and ingest.health().ok
    assert [d.reason for d in await store.dead_letters()] == [UNSTORABLE]
    assert len(await store.events(DEVICE)) == 1


def test_an_event_the_encoder_takes_is_kept() -> None:
    batch, _ = pipeline().build(deliveries(("event", json.dumps(nested(200)).encode())))
    assert len(batch.events) == 1 and not batch.dead_letters
    assert loads(event_dumps(batch.events[0]))["event"] == "changed"
