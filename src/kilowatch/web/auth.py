"""Users, API tokens, UI sessions and login rate-limiting, kept in the store's meta.

- Users: ``web.users`` → ``{name: {"hash": argon2 hash, "role": "admin"|"viewer", "created": ts}}``.
- Tokens: ``web.tokens`` → ``{token id: {"hash": sha256 of the secret, "user", "role", "name",
  "created"}}``. A token is ``kw_<id>_<secret>``; only its hash is stored, so a leaked store
  does not leak working tokens. (Tokens are 256-bit random, so a plain SHA-256 is enough;
  passwords are not, so they get argon2.)
- Sessions: ``web.sessions`` → ``{sha256(session id): {"user", "csrf", "expires"}}``, also cached in
  memory so a request needs no store round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kilowatch.errors import ConfigError
from kilowatch.store.base import Store

USERS_KEY = "web.users"
TOKENS_KEY = "web.tokens"
SESSIONS_KEY = "web.sessions"
SESSION_TTL_S = 14 * 24 * 3600
"""A UI session lasts two weeks; logging out ends it at once."""
LOGIN_WINDOW_S = 300.0
LOGIN_MAX_FAILURES = 5
"""At most 5 failed logins per 5 minutes per client address and per user name (OWASP's advice)."""
MIN_PASSWORD_LENGTH = 8

Clock = Callable[[], float]
_hasher = PasswordHasher()


class Role(StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is making a request, and how they proved it."""

    user: str
    role: Role
    via: str
    """``session`` or ``token``."""
    csrf: str | None = None
    """The session's CSRF token; ``None`` for bearer tokens (browsers never add those)."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ConfigError(f"role {value!r} is not one of: admin, viewer") from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_user_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise ConfigError(f"user name {name!r} must be 1–64 letters, digits or . _ - @")
    return name


async def users(store: Store) -> dict[str, dict[str, Any]]:
    data = await store.get_meta(USERS_KEY)
    return dict(data) if isinstance(data, dict) else {}


async def add_user(store: Store, name: str, password: str, role: Role, *, now: float) -> None:
    """Create ``name`` or replace its password and role."""
    name = check_user_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    all_users = await users(store)
    all_users[name] = {
        "hash": await asyncio.to_thread(_hasher.hash, password),
        "role": role.value,
        "created": now,
    }
    await store.put_meta(USERS_KEY, all_users)


async def verify_password(store: Store, name: str, password: str) -> Role | None:
    """The user's role if ``password`` is right, else ``None`` (same work for unknown users)."""
    record = (await users(store)).get(name)
    if record is None:
        # Hash anyway, so response time does not tell which user names exist.
        await asyncio.to_thread(_hasher.hash, password)
        return None
    try:
        # argon2 takes tens of milliseconds of CPU on purpose: keep it off the event loop.
        await asyncio.to_thread(_hasher.verify, record["hash"], password)
    except (VerificationError, InvalidHashError):
        return None
    return parse_role(record["role"])


async def ensure_admin(store: Store, *, now: float) -> str | None:
    """First run: create user ``admin`` with a random password and return it (else ``None``)."""
    if await users(store):
        return None
    password = secrets.token_urlsafe(12)
    await add_user(store, "admin", password, Role.ADMIN, now=now)
    return password


async def create_token(store: Store, user: str, *, role: Role, name: str, now: float) -> str:
    """A new API token for ``user``; the full token is returned once and never stored."""
    record = (await users(store)).get(user)
    if record is None:
        raise ConfigError(f"no user {user!r}; create it first with: kilowatch user add {user}")
    if parse_role(record["role"]) is Role.VIEWER and role is Role.ADMIN:
        raise ConfigError(f"user {user!r} is a viewer and cannot have an admin token")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    tokens = await _tokens(store)
    tokens[token_id] = {
        "hash": _sha256(secret),
        "user": user,
        "role": role.value,
        "name": name,
        "created": now,
    }
    await store.put_meta(TOKENS_KEY, tokens)
    return f"kw_{token_id}_{secret}"


async def _tokens(store: Store) -> dict[str, dict[str, Any]]:
    data = await store.get_meta(TOKENS_KEY)
    return dict(data) if isinstance(data, dict) else {}


async def list_tokens(store: Store) -> list[dict[str, Any]]:
    """Every token's id, user, role, name and creation time (never its secret or hash)."""
    return [
        {"id": tid, **{k: v for k, v in rec.items() if k != "hash"}}
        for tid, rec in sorted((await _tokens(store)).items(), key=lambda kv: kv[1]["created"])
    ]


async def revoke_token(store: Store, token_id: str) -> bool:
    """Delete a token by id (``kw_<id>_...``); ``False`` when there is none."""
    tokens = await _tokens(store)
    if tokens.pop(token_id, None) is None:
        return False
    await store.put_meta(TOKENS_KEY, tokens)
    return True


async def verify_token(store: Store, token: str) -> Principal | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "kw":
        return None
    record = (await _tokens(store)).get(parts[1])
    if record is None or not hmac.compare_digest(record["hash"], _sha256(parts[2])):
        return None
    # A token never outlives its user, nor carries more than the user's current role.
    user = (await users(store)).get(record["user"])
    if user is None:
        return None
    role = parse_role(record["role"])
    if parse_role(user["role"]) is Role.VIEWER:
        role = Role.VIEWER
    return Principal(user=record["user"], role=role, via="token")


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
        sessions[_sha256(session_id)] = {
            "user": user,
            "csrf": secrets.token_urlsafe(24),
            "expires": self._clock() + SESSION_TTL_S,
        }
        await self._save(sessions)
        return session_id

    async def resolve(self, session_id: str) -> Principal | None:
        record = (await self._all()).get(_sha256(session_id))
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
        if sessions.pop(_sha256(session_id), None) is not None:
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


__all__ = [
    "LoginLimiter",
    "Principal",
    "Role",
    "SessionManager",
    "add_user",
    "create_token",
    "ensure_admin",
    "list_tokens",
    "parse_role",
    "revoke_token",
    "users",
    "verify_password",
    "verify_token",
]
