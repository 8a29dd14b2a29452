"""RFC 9457 problem details: every error the web app answers with (JSON, or a page for people)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response

from kilowatch.errors import ConfigError, StoreError
from kilowatch.store.periods import InvalidQueryError

PROBLEM_TYPE_BASE = "https://kilowatch.dev/problems/"
"""Problem ``type`` URIs are identifiers (RFC 9457 §3.1.1), not fetched; docs/api.md lists them."""

_TITLES = {
    400: "Bad request",
    401: "Login required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Invalid parameters",
    429: "Too many requests",
    503: "Store unavailable",
}


class Problem(Exception):  # noqa: N818 - RFC 9457 calls it a problem
    """Raise anywhere in a route to answer with a problem body."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _TITLES.get(status, "error").lower().replace(" ", "-")
        self.title = title or _TITLES.get(status, "Error")
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str) -> dict[str, Any]:
        return {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extra,
        }


def bad_param(name: str, detail: str) -> Problem:
    """400 for one invalid parameter, naming it (``invalid-params`` as in RFC 9457 §3)."""
    return Problem(
        400,
        f"{name}: {detail}",
        slug="invalid-parameter",
        title="Invalid parameter",
        extra={"invalid-params": [{"name": name, "reason": detail}]},
    )


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith(
        ("/api/", "/metrics")
    ) and "text/html" in request.headers.get("accept", "")


def problem_response(request: Request, problem: Problem) -> Response:
    if _wants_html(request):
        if problem.status == 401:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        templates = request.app.state.templates
        page: Response = templates.TemplateResponse(
            request,
            "error.html",
            {
                "problem": problem,
                "principal": getattr(request.state, "principal", None),
                "site": request.app.state.web.site,
            },
            status_code=problem.status,
            headers=problem.headers,
        )
        return page
    return Response(
        orjson.dumps(problem.body(request.url.path)),
        status_code=problem.status,
        media_type="application/problem+json",
        headers=problem.headers,
    )


def install(app: FastAPI) -> None:
    """Route every error through :func:`problem_response`."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(request, exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            request, Problem(exc.status_code, str(exc.detail), headers=exc.headers or None)
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        params = [
            {
                "name": ".".join(str(p) for p in err.get("loc", ())[1:]) or "body",
                "reason": err.get("msg"),
            }
            for err in exc.errors()
        ]
        detail = "; ".join(f"{p['name']}: {p['reason']}" for p in params)
        return problem_response(request, Problem(422, detail, extra={"invalid-params": params}))

    async def on_config(request: Request, exc: Exception) -> Response:
        return problem_response(request, Problem(400, str(exc), slug="invalid-parameter"))

    async def on_store(request: Request, exc: Exception) -> Response:
        if isinstance(exc, InvalidQueryError):  # the store judged the question, not its health
            return problem_response(request, Problem(400, str(exc), slug="invalid-parameter"))
        return problem_response(request, Problem(503, str(exc)))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ConfigError, on_config)
    app.add_exception_handler(StoreError, on_store)


__all__ = ["Problem", "bad_param", "install", "problem_response"]
