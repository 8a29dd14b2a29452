"""Fixtures of the intake tests: a real store of each kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kilowatch.store import Store, open_store


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, empty store: a SQLite file, or a flushed database on the tests' redis-server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'intake.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    async with open_store(url) as s:
        yield s
