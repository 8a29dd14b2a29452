"""What the ingest counts, and what that says about its health.

:class:`IngestStats` holds counters since start and the state of the commit stage (the pipeline
and its committer update it); :func:`assess` turns it into an :class:`IngestHealth` at a given
time: ``ok``, or ``degraded`` with the reasons, for ``/api/v1/health`` and ``/metrics``.

Times are readings of the pipeline's clock (``time.monotonic`` unless a test injects another).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

STALL_S = 30.0
"""Default of the ``commit_stall_s`` setting: how long commits may keep failing, or a batch may
wait uncommitted, before the ingest reports itself degraded (a Redis restart or a SQLite lock held
for a few seconds is not worth an alert)."""


class CommitFailure(StrEnum):
    """Why one attempt to commit failed (the ``kind`` label of the failure counter)."""

    UNAVAILABLE = "unavailable"
    """The store is down, unreachable, full, locked or read-only: retried until it succeeds."""
    UNSTORABLE = "unstorable"
    """A record of the batch can never be stored: isolated, it becomes a dead letter."""
    UNEXPECTED = "unexpected"
    """The store raised something it should have translated (a bug): retried like unavailable."""


@dataclass
class IngestStats:
    """Counters since start (the web app's metrics page shows them) and the commit stage's state."""

    received: int = 0
    committed: int = 0
    batches: int = 0
    readings: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    commit_failures: int = 0
    """Failed commit attempts of every kind (see :attr:`commit_failures_by_kind`)."""
    commit_failures_by_kind: Counter[CommitFailure] = field(default_factory=Counter)
    started_at: float = 0.0
    last_commit_at: float | None = None
    """When a commit last succeeded."""
    failing_since: float | None = None
    """When the current run of failed commits began (``None``: the last attempt succeeded).
    Only failures that retrying may cure count: an unstorable record is set aside at once."""
    last_error: str | None = None
    """The last failed commit's error (kept after success, for the log and the metrics page)."""
    in_flight: deque[tuple[float, int]] = field(default_factory=deque)
    """``(built_at, messages)`` of each batch built and not yet committed and acknowledged,
    oldest first."""


@dataclass(frozen=True, slots=True)
class IngestHealth:
    """The ingest's health at one moment: ``ok`` or ``degraded`` with the ``reasons``."""

    status: str
    reasons: tuple[str, ...]
    commit_failures: dict[str, int]
    """Failed commit attempts since start, by :class:`CommitFailure` (every kind present)."""
    seconds_since_commit: float
    """Since the last successful commit (since start when none yet)."""
    failing_for_s: float
    """How long commits have been failing (0 while they succeed)."""
    batches_in_flight: int
    messages_in_flight: int
    oldest_in_flight_s: float
    """Age of the oldest batch not yet committed (0 when none waits)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def assess(stats: IngestStats, now: float, *, stall_s: float = STALL_S) -> IngestHealth:
    """``degraded`` when commits have been failing for ``stall_s`` or longer, or the oldest batch
    not yet committed (so not yet acknowledged) has waited that long; else ``ok``."""
    reasons: list[str] = []
    failing_for = 0.0 if stats.failing_since is None else max(0.0, now - stats.failing_since)
    if stats.failing_since is not None and failing_for >= stall_s:
        reasons.append(
            f"store commits have been failing for {failing_for:.0f} s "
            f"(last error: {stats.last_error}); received messages are held, unacknowledged, "
            "until the store takes them"
        )
    oldest = max(0.0, now - stats.in_flight[0][0]) if stats.in_flight else 0.0
    messages = sum(n for _, n in stats.in_flight)
    if stats.in_flight and oldest >= stall_s:
        reasons.append(
            f"the oldest uncommitted batch has waited {oldest:.0f} s "
            f"({len(stats.in_flight)} batches, {messages} messages not yet acknowledged)"
        )
    last = stats.last_commit_at if stats.last_commit_at is not None else stats.started_at
    return IngestHealth(
        status="degraded" if reasons else "ok",
        reasons=tuple(reasons),
        commit_failures={k.value: stats.commit_failures_by_kind[k] for k in CommitFailure},
        seconds_since_commit=max(0.0, now - last),
        failing_for_s=failing_for,
        batches_in_flight=len(stats.in_flight),
        messages_in_flight=messages,
        oldest_in_flight_s=oldest,
    )


__all__ = ["STALL_S", "CommitFailure", "IngestHealth", "IngestStats", "assess"]
