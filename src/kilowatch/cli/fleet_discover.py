"""Part of ``kilowatch fleet`` (being written)."""

from __future__ import annotations

import typer


def register(group: typer.Typer) -> None:
    """Add this part's commands to the ``fleet`` group."""
