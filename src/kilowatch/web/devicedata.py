"""A device's power over time, events and logs (``/api/v1/devices/{id}/power|events|logs``).
Being built (issue 12)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()

__all__ = ["router"]
