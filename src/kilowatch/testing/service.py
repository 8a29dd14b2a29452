"""``kilowatch serve`` in the caller's event loop, for tests and benches that need the whole
service: SQLite, the managed mosquitto (plain and TLS listeners on free ports), the intake.

:func:`service_settings` makes the settings of such a site under a temporary directory;
:func:`running_service` runs the service until the block ends and yields its
:class:`~kilowatch.service.server.Running` once it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kilowatch.errors import KilowatchError
from kilowatch.service.config import Settings, load_settings
from kilowatch.service.server import Running, WebStarter, serve

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
"""How long a graceful stop may take before the service is cancelled."""


def service_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of a site in ``tmp_path``: store ``kilowatch.db``, data dir ``data``, the managed
    mosquitto on free ports with its TLS listener, time zone UTC, a fresh MQTT client id;
    ``overrides`` replace any of them. The environment is not read."""
    values: dict[str, Any] = {
        "broker": "managed",
        "store": f"sqlite:///{tmp_path}/kilowatch.db",
        "mqtt_client_id": f"kw-test-{uuid.uuid4().hex[:12]}",
        "data_dir": str(tmp_path / "data"),
        "tz": "UTC",
        "mqtt_port": 0,
        "mqtt_tls_local": True,
        "mqtt_tls_port": 0,
        **overrides,
    }
    return load_settings(values, env={})


@asynccontextmanager
async def running_service(
    settings: Settings, *, web: WebStarter | None = None, timeout_s: float = READY_TIMEOUT_S
) -> AsyncIterator[Running]:
    """Run ``kilowatch serve`` with ``settings`` (and the ``web`` starter, if any) as a task of
    this loop; yield once it is ready; stop it gracefully when the block ends, also when the
    block raised (its error comes out as itself). A service that fails before it is ready
    raises its own error; one not ready within ``timeout_s`` a :class:`KilowatchError`."""
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve(settings, stop, on_ready=ready.set_result, web=web))
    try:
        waiting: set[asyncio.Future[Any]] = {ready, task}
        await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            if task.done():
                task.result()  # its error
            raise KilowatchError(f"kilowatch serve did not become ready in {timeout_s} s")
        yield ready.result()
    finally:
        stop.set()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["READY_TIMEOUT_S", "STOP_TIMEOUT_S", "running_service", "service_settings"]
