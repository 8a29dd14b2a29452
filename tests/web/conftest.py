"""Web app fixtures: a real store (SQLite file or redis-server) with known data, and the app."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

# importlib import mode: make this folder's helper module importable by the test files.
sys.path.insert(0, str(Path(__file__).parent))

from webseed import ADMIN, NOW, TZ, VIEWER, client_for, known_batch, login, users_meta

from kilowatch.accounts.users import USERS_KEY
from kilowatch.intake.live import LiveHub
from kilowatch.store import Store, open_store
from kilowatch.web import create_app


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each kind, holding :func:`known_batch` and two users."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'web.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    async with open_store(url) as s:
        await s.commit(known_batch())
        await s.put_meta(USERS_KEY, users_meta())
        yield s


@pytest.fixture
def hub() -> LiveHub:
    return LiveHub()


@pytest.fixture
async def app(store: Store, hub: LiveHub) -> AsyncIterator[FastAPI]:
    application = create_app(store, live=hub, site_tz=TZ, clock=lambda: NOW)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with client_for(app) as c:
        yield c, await login(c, *ADMIN)


@pytest.fixture
async def viewer(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with client_for(app) as c:
        yield c, await login(c, *VIEWER)
