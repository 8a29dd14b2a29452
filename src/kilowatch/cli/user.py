"""``kilowatch user``: add web users (or change their password and role) and list them."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from datetime import UTC, datetime

import typer

from kilowatch.accounts.users import add_user, parse_role, users
from kilowatch.cli.stores import open_existing
from kilowatch.service.config import resolve_store_url
from kilowatch.store import open_store

ADD_HELP = (
    "Create a web user, or set an existing user's password and role. The password is asked for "
    "(twice), read from stdin with --password-stdin, or generated and printed with --generate.\n\n"
    "Roles: admin (change settings, rename devices) and viewer (read only).\n\n"
    "Examples:\n\n"
    "kilowatch user add alice --role admin\n\n"
    "echo 's3cret-pass' | kilowatch user add grafana --role viewer --password-stdin\n\n"
    "kilowatch user add bob --generate --store sqlite:///kilowatch.db"
)
LIST_HELP = "List the web users and their roles.\n\nExample:\n\nkilowatch user list"


async def _add(url: str, name: str, password: str, role: str) -> bool:
    async with open_store(url) as store:
        existed = name in await users(store)
        await add_user(store, name, password, parse_role(role), now=time.time())
        return existed


async def _list(url: str) -> dict[str, dict[str, object]]:
    async with open_existing(url) as store:
        return await users(store)


def register(app: typer.Typer) -> None:
    """Add the ``user`` command group to ``app``."""
    group = typer.Typer(help="Manage the users of the web dashboard and API.", no_args_is_help=True)
    app.add_typer(group, name="user")

    @group.command("add", help=ADD_HELP)
    def add(
        name: str = typer.Argument(..., help="User name (letters, digits, . _ - @)."),
        role: str = typer.Option("admin", "--role", help="admin or viewer."),
        password_stdin: bool = typer.Option(
            False, "--password-stdin", help="Read the password from the first line of stdin."
        ),
        generate: bool = typer.Option(False, "--generate", help="Generate and print a password."),
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
    ) -> None:
        parse_role(role)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif generate:
            password = secrets.token_urlsafe(12)
        else:
            password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        existed = asyncio.run(_add(resolve_store_url(store), name, password, role))
        verb = "updated" if existed else "created"
        typer.echo(f"{verb} user {name!r} with role {role}")
        if generate:
            typer.echo(f"password: {password}")

    @group.command("list", help=LIST_HELP)
    def list_(
        store: str | None = typer.Option(None, "--store", help="Store URL (default: as serve)."),
    ) -> None:
        for name, record in sorted(asyncio.run(_list(resolve_store_url(store))).items()):
            created = record.get("created")
            when = (
                datetime.fromtimestamp(float(created), UTC).strftime("%Y-%m-%d")  # type: ignore[arg-type]
                if created
                else "?"
            )
            typer.echo(f"{name}\t{record.get('role')}\tcreated {when}")
