"""``kilowatch user`` and ``kilowatch token`` on a SQLite file (in-process, and one subprocess)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from kilowatch.accounts.tokens import verify_token
from kilowatch.accounts.users import Principal, Role, verify_password
from kilowatch.cli.app import app
from kilowatch.errors import ConfigError
from kilowatch.store import open_store

SRC = str(Path(__file__).resolve().parents[2] / "src")
runner = CliRunner()


def check(url: str, user: str, password: str, token: str) -> tuple[Role | None, Principal | None]:
    async def run() -> tuple[Role | None, Principal | None]:
        async with open_store(url) as store:
            return await verify_password(store, user, password), await verify_token(store, token)

    return asyncio.run(run())


def test_user_add_and_token_create(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    added = runner.invoke(
        app, ["user", "add", "carol", "--role", "viewer", "--password-stdin", "--store", url],
        input="carol-password\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "created user 'carol' with role viewer" in added.output
    refused = runner.invoke(app, ["token", "create", "carol", "--role", "admin", "--store", url])
    assert isinstance(refused.exception, ConfigError)
    assert "viewer" in str(refused.exception)
    created = runner.invoke(app, ["token", "create", "carol", "--name", "grafana", "--store", url])
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    assert token.startswith("kw_")
    listed = runner.invoke(app, ["token", "list", "--store", url])
    assert "grafana" in listed.output and token not in listed.output
    role, principal = check(url, "carol", "carol-password", token)
    assert role is Role.VIEWER
    assert principal is not None and principal.role is Role.VIEWER
    revoked = runner.invoke(app, ["token", "revoke", token.split("_")[1], "--store", url])
    assert revoked.exit_code == 0, revoked.output
    assert check(url, "carol", "carol-password", token)[1] is None


def test_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    short = runner.invoke(
        app, ["user", "add", "dave", "--password-stdin", "--store", url], input="short\n"
    )
    assert "at least 8 characters" in str(short.exception)
    role = runner.invoke(
        app, ["user", "add", "dave", "--role", "boss", "--generate", "--store", url]
    )
    assert "admin, viewer" in str(role.exception)
    for command in (["user", "add", "--help"], ["token", "create", "--help"]):
        helped = runner.invoke(app, command)
        assert helped.exit_code == 0 and "Example" in helped.output


def test_errors_are_one_line_on_stderr(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch", "token", "create", "nobody", "--store", url],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert done.returncode == 1
    assert "kilowatch user add nobody" in done.stderr
    assert "Traceback" not in done.stderr
