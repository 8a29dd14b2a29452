"""The Alerts page and its API (``/alerts``, ``/api/v1/alerts``). Being built (issue 12)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()

__all__ = ["router"]
