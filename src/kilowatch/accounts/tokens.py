"""API tokens, kept in the store's meta.

``web.tokens`` → ``{token id: {"hash": sha256 of the secret, "user", "role", "name", "created"}}``.
A token is ``kw_<id>_<secret>``; only its hash is stored, so a leaked store does not leak working
tokens. (Tokens are 256-bit random, so a plain SHA-256 is enough; passwords are not, so they get
argon2.)
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from kilowatch.accounts.users import Principal, Role, parse_role, sha256_hex, users
from kilowatch.errors import ConfigError
from kilowatch.store.protocol import Store

TOKENS_KEY = "web.tokens"


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
        "hash": sha256_hex(secret),
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
    if record is None or not hmac.compare_digest(record["hash"], sha256_hex(parts[2])):
        return None
    # A token never outlives its user, nor carries more than the user's current role.
    user = (await users(store)).get(record["user"])
    if user is None:
        return None
    role = parse_role(record["role"])
    if parse_role(user["role"]) is Role.VIEWER:
        role = Role.VIEWER
    return Principal(
        user=record["user"], role=role, via="token", token_name=record.get("name") or None
    )


__all__ = ["TOKENS_KEY", "create_token", "list_tokens", "revoke_token", "verify_token"]
