"""What the ingest's state says about its health, at given times (no clock read)."""

from __future__ import annotations

from kilowatch.intake.stats import CommitFailure, IngestStats, assess


def test_a_quiet_or_busy_ingest_is_ok() -> None:
    stats = IngestStats(started_at=100.0)
    health = assess(stats, 1000.0, stall_s=30)
    assert health.ok and health.status == "ok" and health.reasons == ()
    assert health.seconds_since_commit == 900.0  # since start: nothing committed yet
    assert health.commit_failures == {"unavailable": 0, "unstorable": 0, "unexpected": 0}
    stats.last_commit_at = 990.0
    stats.in_flight.extend([(995.0, 5000), (999.0, 10)])
    health = assess(stats, 1000.0, stall_s=30)
    assert health.ok
    assert (health.batches_in_flight, health.messages_in_flight) == (2, 5010)
    assert (health.oldest_in_flight_s, health.seconds_since_commit) == (5.0, 10.0)


def test_commits_failing_past_the_threshold_are_degraded_with_the_reason() -> None:
    stats = IngestStats(started_at=0.0, last_commit_at=50.0)
    stats.failing_since = 60.0
    stats.last_error = "commit to Redis failed: Connection refused"
    stats.commit_failures_by_kind[CommitFailure.UNAVAILABLE] = 7
    stats.in_flight.append((61.0, 3))
    assert assess(stats, 89.0, stall_s=30).ok  # 29 s: not yet
    health = assess(stats, 95.0, stall_s=30)
    assert health.status == "degraded"
    assert health.reasons == (
        "store commits have been failing for 35 s (last error: commit to Redis failed: "
        "Connection refused); received messages are held, unacknowledged, until the store takes "
        "them",
        "the oldest uncommitted batch has waited 34 s (1 batches, 3 messages not yet acknowledged)",
    )
    assert health.failing_for_s == 35.0 and health.commit_failures["unavailable"] == 7


def test_a_commit_that_hangs_is_degraded_too() -> None:
    """No failure yet (a store that does not answer): the batch's age tells."""
    stats = IngestStats(started_at=0.0)
    stats.in_flight.append((10.0, 1))
    health = assess(stats, 41.0, stall_s=30)
    assert not health.ok and len(health.reasons) == 1
    assert health.reasons[0].startswith("the oldest uncommitted batch has waited 31 s")
