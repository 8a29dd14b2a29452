"""What the OpenAPI document says the API answers besides its successes: the problem statuses of
each kind of route, declared once here and given to the routes as ``responses=``, the problem
schema they refer to, and the ways to log in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from kilowatch.errors import PROBLEM_TYPE_BASE
from kilowatch.web.deps import SESSION_COOKIE

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem body; docs/api.md lists the `type` slugs.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "description": f"{PROBLEM_TYPE_BASE}<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what happened and what to do"},
        "instance": {"type": "string", "description": "the path asked for"},
        "invalid-params": {
            "type": "array",
            "description": "the parameters that are wrong (RFC 9457 §3)",
            "items": {
                "type": "object",
                "required": ["name", "reason"],
                "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}

READING_EVENT: dict[str, Any] = {
    "description": "One server-sent event: `retry` first, then `reading`s (a reading's JSON in "
    "`data`, the shape of `kilowatch decode`).",
    "type": "object",
    "properties": {
        "event": {"enum": ["reading"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer", "minimum": 0},
    },
}

_WHEN = {
    400: "A parameter is wrong (`invalid-parameter`, naming it in `invalid-params`).",
    401: "No or unknown credentials (`login-required`).",
    403: "A viewer tried to write, or a session write came without its CSRF token or from "
    "another site (`forbidden`, `csrf`).",
    404: "No such device (`not-found`).",
    422: "The body or a typed parameter does not parse: not JSON, an unknown field, a number "
    "out of range (`invalid-parameters`).",
    503: "The store cannot be reached (`store-unavailable`).",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: a problem body for each of ``statuses``."""
    return {
        status: {
            "description": _WHEN[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }


READ = problems(401, 503)
"""A viewer's GET without parameters."""
FILTERED_READ = problems(401, 422, 503)
"""A viewer's GET with typed query parameters (``device``, ``limit``)."""
QUESTION = problems(400, 401, 422, 503)
"""A viewer's GET whose parameters the handler checks too (``/energy``: zone, dates, range)."""
DEVICE_READ = problems(401, 404, 422, 503)
"""A viewer's GET under ``/devices/{device}`` (404: no such device, or a ``/`` in the id)."""
DEVICE_WRITE = problems(401, 403, 404, 422, 503)
"""An admin's write to one device."""
SETTINGS_WRITE = problems(400, 401, 403, 422, 503)
"""An admin's write of settings the handler checks too (zone, tariff, retention)."""
PUBLIC: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The store does not answer (`error`), or it does not take what arrives "
        "(`degraded`, with `reasons`).",
        "content": {"application/json": {}},
    }
}
"""The health check: no login, no problem body (monitoring reads its JSON)."""

SECURITY_SCHEMES = {
    "token": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token: `kilowatch token create USER`.",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The login form's session (writes also need the X-CSRF-Token header).",
    },
}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` hold the problem schema and the login schemes its routes use."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def document() -> dict[str, Any]:
        doc = build()  # FastAPI builds it once and keeps it: this adds to it once
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        components["securitySchemes"] = SECURITY_SCHEMES
        doc.setdefault("security", [{"token": []}, {"session": []}])
        return doc

    app.openapi = document  # type: ignore[method-assign]


__all__ = [
    "DEVICE_READ",
    "DEVICE_WRITE",
    "FILTERED_READ",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_SCHEMA",
    "PUBLIC",
    "QUESTION",
    "READ",
    "READING_EVENT",
    "SETTINGS_WRITE",
    "install",
    "problems",
]
