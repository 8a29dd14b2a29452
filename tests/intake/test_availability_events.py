"""The pipeline turns what devices say about themselves into events the device page and
``kilowatch logs --events`` show: online/offline (a change of availability) and reboot (a
smaller uptime later)."""

from __future__ import annotations

from kilowatch.decode.registry import default_registry
from kilowatch.intake.client import Delivery
from kilowatch.intake.pipeline import Pipeline
from kilowatch.ledger import Ledger

DEV = "shellyplus1pm-aabbccddeeff"


def pipeline() -> Pipeline:
    return Pipeline(registry=default_registry(), ledger=Ledger({}), store=None)  # type: ignore[arg-type]


def online(value: bool, ts: float) -> Delivery:
    return Delivery(f"{DEV}/online", b"true" if value else b"false", ts, 1, 1)


def uptime(seconds: int, ts: float) -> Delivery:
    body = b'{"mac":"AABBCCDDEEFF","uptime":%d,"unixtime":%d}' % (seconds, int(ts))
    return Delivery(f"{DEV}/status/sys", body, ts, 1, 1)


def kinds(ingest: Pipeline, *deliveries: Delivery) -> list[tuple[str, float]]:
    batch, _ = ingest.build(list(deliveries))
    return [(e.event, e.ts) for e in batch.events]


def test_availability_changes_are_events_and_repeats_are_not() -> None:
    ingest = pipeline()
    # first heard of as online (a retained "true" at each start): not an event
    assert kinds(ingest, online(True, 100)) == []
    assert kinds(ingest, online(True, 110), online(False, 120)) == [("offline", 120)]
    assert kinds(ingest, online(False, 130)) == [], "the same state again is no event"
    assert kinds(ingest, online(True, 140)) == [("online", 140)]


def test_a_device_first_heard_of_as_offline_is_an_event() -> None:
    assert kinds(pipeline(), online(False, 100)) == [("offline", 100)]


def test_a_smaller_uptime_later_is_a_reboot_once() -> None:
    ingest = pipeline()
    assert kinds(ingest, uptime(500, 1000), uptime(560, 1060)) == []
    assert kinds(ingest, uptime(5, 1100)) == [("reboot", 1100)]
    assert kinds(ingest, uptime(5, 1100), uptime(65, 1160)) == [], "a repeat or growth is not"
    # a late, older status (redelivered) says nothing about now
    assert kinds(ingest, uptime(600, 1070)) == []
    batch, _ = ingest.build([uptime(2, 1200)])
    assert [(e.component, e.event, e.data) for e in batch.events] == [
        ("sys", "reboot", {"uptime_s": 2})
    ]
