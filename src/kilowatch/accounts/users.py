"""Users of kilowatch's web app and API, kept in the store's meta.

``web.users`` → ``{name: {"hash": argon2 hash, "role": "admin"|"viewer", "created": ts}}``.
Passwords get argon2 (slow on purpose); the hashing runs off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kilowatch.errors import ConfigError
from kilowatch.store.protocol import Store

USERS_KEY = "web.users"
MIN_PASSWORD_LENGTH = 8

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
    token_name: str | None = None
    """The API token's name, when ``via`` is ``token``."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def actor(self) -> str:
        """Who acts, for the audit log: ``web:<user>`` for a dashboard session, ``api:<token
        name>`` for a bearer token (``api:<user>`` when the token has no name)."""
        if self.via != "token":
            return f"web:{self.user}"
        return f"api:{self.token_name or self.user}"


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ConfigError(f"role {value!r} is not one of: admin, viewer") from None


def sha256_hex(text: str) -> str:
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


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "USERS_KEY",
    "Principal",
    "Role",
    "add_user",
    "check_user_name",
    "ensure_admin",
    "parse_role",
    "sha256_hex",
    "users",
    "verify_password",
]
