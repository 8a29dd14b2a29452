"""Decoder test helpers: recorded payloads from tests/fixtures, a fresh registry and state."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kilowatch.decode import DecoderRegistry, DecoderState, default_registry
from kilowatch.model.messages import Message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
INDEX: dict[str, dict[str, Any]] = {
    entry["file"]: entry for entry in json.loads((FIXTURES / "index.json").read_text())
}

Decode = Callable[..., list[dict[str, Any]]]


def fixture_message(name: str) -> tuple[str, bytes, float]:
    """(topic, payload, received_at) of a recorded payload, by its path under tests/fixtures."""
    entry = INDEX[name]
    return entry["topic"], (FIXTURES / name).read_bytes(), entry["received_at"]


@pytest.fixture
def registry() -> DecoderRegistry:
    return default_registry()


@pytest.fixture
def state() -> DecoderState:
    return DecoderState()


@pytest.fixture
def decode(registry: DecoderRegistry, state: DecoderState) -> Decode:
    """Decode a message (by fixture name, or topic + payload) to the public JSON shapes."""

    def run(
        name: str | None = None,
        *,
        topic: str | None = None,
        payload: bytes | None = None,
        received_at: float = 1_700_000_000.0,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        if name is not None:
            topic, payload, received_at = fixture_message(name)
        assert topic is not None and payload is not None
        messages: list[Message] = registry.decode(
            topic, payload, received_at=received_at, state=state, **kwargs
        )
        return [message.to_json() for message in messages]

    return run


@pytest.fixture
def recorded() -> Callable[[str], tuple[str, bytes, float]]:
    """``recorded(name)`` → (topic, payload, received_at) of a file under tests/fixtures."""
    return fixture_message


@pytest.fixture
def fixture_index() -> dict[str, dict[str, Any]]:
    return INDEX
