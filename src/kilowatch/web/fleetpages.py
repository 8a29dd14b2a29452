"""The Fleet page, the Audit page and their API (``/fleet``, ``/fleet/audit``, ``/api/v1/fleet``,
``/api/v1/audit``). Being built (issue 12)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()

__all__ = ["router"]
