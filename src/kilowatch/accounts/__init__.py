"""kilowatch.accounts: users, API tokens and UI sessions, kept in the store's meta.

Used by the web app and by ``kilowatch user`` / ``kilowatch token``; imports no web framework.
"""

from kilowatch.accounts.sessions import LoginLimiter, SessionManager
from kilowatch.accounts.tokens import create_token, list_tokens, revoke_token, verify_token
from kilowatch.accounts.users import (
    Principal,
    Role,
    add_user,
    ensure_admin,
    parse_role,
    users,
    verify_password,
)

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
