"""``kilowatch fleet firmware``: being built (issue 12)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the command to ``app`` (nothing yet)."""
    del app
