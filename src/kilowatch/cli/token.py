"""``kilowatch token``: API tokens for scripts (``Authorization: Bearer <token>``)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import typer

from kilowatch.accounts.tokens import create_token, list_tokens, revoke_token
from kilowatch.accounts.users import parse_role
from kilowatch.cli.stores import open_existing
from kilowatch.errors import ConfigError
from kilowatch.service.config import resolve_store_url
from kilowatch.store import open_store

CREATE_HELP = (
    "Create an API token for USER and print it (it is shown only this once; kilowatch keeps only "
    "its hash). Scripts send it as 'Authorization: Bearer <token>'; Prometheus as "
    "'authorization: credentials'. The token has USER's role or less (--role viewer).\n\n"
    "Examples:\n\n"
    "kilowatch token create admin --name backup-script\n\n"
    "kilowatch token create alice --role viewer --name prometheus\n\n"
    "curl -H \"Authorization: Bearer $TOKEN\" 'http://127.0.0.1:8000/api/v1/energy?by=day'"
)
LIST_HELP = (
    "List API tokens (id, user, role, name; never the secret).\n\nExample:\n\nkilowatch token list"
)
REVOKE_HELP = (
    "Revoke an API token by id (the part after kw_).\n\n"
    "Example:\n\nkilowatch token revoke 3f2a9c01d4e5"
)


async def _create(url: str, user: str, role: str | None, name: str) -> str:
    async with open_store(url) as store:
        from kilowatch.accounts.users import users

        record = (await users(store)).get(user)
        if record is None:
            raise ConfigError(f"no user {user!r}; create it first with: kilowatch user add {user}")
        chosen = parse_role(role or str(record["role"]))
        return await create_token(store, user, role=chosen, name=name, now=time.time())


async def _list(url: str) -> list[dict[str, Any]]:
    async with open_existing(url) as store:
        return await list_tokens(store)


async def _revoke(url: str, token_id: str) -> bool:
    # a store that is not there holds no token to revoke: say so rather than create it
    async with open_existing(url) as store:
        return await revoke_token(store, token_id)


def register(app: typer.Typer) -> None:
    """Add the ``token`` command group to ``app``."""
    group = typer.Typer(help="Manage API tokens for scripts.", no_args_is_help=True)
    app.add_typer(group, name="token")

    @group.command("create", help=CREATE_HELP)
    def create(
        user: str = typer.Argument(..., help="The user the token acts for."),
        name: str = typer.Option("", "--name", help="What the token is for (shown in lists)."),
        role: str | None = typer.Option(None, "--role", help="viewer or admin (default: user's)."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
    ) -> None:
        typer.echo(asyncio.run(_create(resolve_store_url(store), user, role, name)))

    @group.command("list", help=LIST_HELP)
    def list_(
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
    ) -> None:
        for t in asyncio.run(_list(resolve_store_url(store))):
            when = datetime.fromtimestamp(float(t["created"]), UTC).strftime("%Y-%m-%d")
            typer.echo(f"{t['id']}\t{t['user']}\t{t['role']}\t{when}\t{t.get('name') or ''}")

    @group.command("revoke", help=REVOKE_HELP)
    def revoke(
        token_id: str = typer.Argument(..., help="Token id (kw_<id>_...)."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
    ) -> None:
        if token_id.startswith("kw_"):
            token_id = token_id.split("_")[1]
        if not asyncio.run(_revoke(resolve_store_url(store), token_id)):
            raise ConfigError(f"no token with id {token_id!r}; kilowatch token list shows them")
        typer.echo(f"revoked token {token_id}")
