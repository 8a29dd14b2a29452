"""UI sessions and login rate-limiting.

``web.sessions`` → ``{sha256(session id): {"user", "csrf", "expires"}}``, also cached in memory so a
request needs no store round trip.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kilowatch.accounts.users import Principal, parse_role, sha256_hex, users
from kilowatch.store.protocol import Store

SESSIONS_KEY = "web.sessions"
SESSION_TTL_S = 14 * 24 * 3600
"""A UI session lasts two weeks; logging out ends it at once."""

LOGIN_WINDOW_S = 300.0
LOGIN_MAX_FAILURES = 5
"""At most 5 failed logins per 5 minutes per client address and per user name (OWASP's advice)."""

Clock = Callable[[], float]


class SessionManager:
    """UI sessions: random ids in a cookie, hashed in the store, cached in memory."""

    def __init__(self, store: Store, *, clock: Clock = time.time) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[str, dict[str, Any]] | None = None

    async def _all(self) -> dict[str, dict[str, Any]]:
        if self._cache is None:
            data = await self._store.get_meta(SESSIONS_KEY)
            self._cache = dict(data) if isinstance(data, dict) else {}
        return self._cache

    async def _save(self, sessions: dict[str, dict[str, Any]]) -> None:
        now = self._clock()
        live = {k: v for k, v in sessions.items() if v["expires"] > now}
        self._cache = live
        await self._store.put_meta(SESSIONS_KEY, live)

    async def create(self, user: str) -> str:
        """Start a session for ``user``; returns the cookie value."""
        session_id = secrets.token_urlsafe(32)
        sessions = await self._all()
        sessions[sha256_hex(session_id)] = {
            "user": user,
            "csrf": secrets.token_urlsafe(24),
            "expires": self._clock() + SESSION_TTL_S,
        }
        await self._save(sessions)
        return session_id

    async def resolve(self, session_id: str) -> Principal | None:
        record = (await self._all()).get(sha256_hex(session_id))
        if record is None or record["expires"] <= self._clock():
            return None
        # The role is read fresh, so demoting or deleting a user takes effect at once.
        user = (await users(self._store)).get(record["user"])
        if user is None:
            return None
        return Principal(
            user=record["user"], role=parse_role(user["role"]), via="session", csrf=record["csrf"]
        )

    async def end(self, session_id: str) -> None:
        sessions = await self._all()
        if sessions.pop(sha256_hex(session_id), None) is not None:
            await self._save(sessions)


class LoginLimiter:
    """Sliding-window count of failed logins per key (client address, user name)."""

    def __init__(
        self,
        *,
        max_failures: int = LOGIN_MAX_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        cutoff = self._clock() - self._window
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            # Forget quiet keys, so made-up user names cannot grow this without bound.
            del self._failures[key]
        return q

    def retry_after(self, *keys: str) -> float:
        """Seconds to wait before another try is allowed (0 when allowed)."""
        wait = 0.0
        for key in keys:
            q = self._recent(key)
            if len(q) >= self._max:
                wait = max(wait, q[0] + self._window - self._clock())
        return wait

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._recent(key)
            self._failures.setdefault(key, deque()).append(self._clock())

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


__all__ = ["SESSIONS_KEY", "SESSION_TTL_S", "Clock", "LoginLimiter", "SessionManager"]
