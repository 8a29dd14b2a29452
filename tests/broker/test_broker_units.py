"""Pure parts of the embedded broker: password hashing, option checks and the async context
manager's contract (the MQTT codec and topic matching it uses are tested in tests/mqtt)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kilowatch.broker import (
    EmbeddedBroker,
    hash_password,
    load_password_file,
    verify_password,
)
from kilowatch.errors import BrokerError


def test_password_hash_round_trip() -> None:
    encoded = hash_password("correct horse", log2_n=10)
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
    assert verify_password(b"correct horse", encoded)
    assert not verify_password(b"correct horse!", encoded)
    assert not verify_password(b"correct horse", "$scrypt$garbage")
    assert hash_password("correct horse", log2_n=10) != encoded  # fresh salt


def test_invalid_options_are_clear_errors() -> None:
    with pytest.raises(BrokerError, match="invalid broker port 70000"):
        EmbeddedBroker(port=70000)
    with pytest.raises(BrokerError, match="max_inflight_messages"):
        EmbeddedBroker(port=0, max_inflight_messages=0)


async def test_callers_exception_propagates_unchanged() -> None:
    with pytest.raises(KeyError):
        async with EmbeddedBroker(port=0) as broker:
            assert broker.port != 0
            raise KeyError("boom")


async def test_context_manager_stops_listening() -> None:
    async with EmbeddedBroker(port=0) as broker:
        port = broker.port
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_password_line_tool(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "kilowatch.broker.auth", "meter"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=60,
        check=True,
    )
    line = done.stdout.strip()
    (tmp_path / "passwd").write_text(line + "\n")
    users = load_password_file(tmp_path / "passwd")
    assert list(users) == ["meter"]
    assert verify_password(b"s3cret", users["meter"])
