"""Helpers shared by the simulator tests (imported by path-free name: importlib mode)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture(rel: str) -> Any:
    """A recorded payload, parsed as JSON."""
    return json.loads((FIXTURES / rel).read_text())


def shape(value: Any) -> Any:
    """Structure of a payload: key names and JSON kinds (int and float are both 'number')."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list"]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__
