"""RFC 9457 problem details: every error the web app answers with (JSON, or a page for people)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match

from kilowatch.errors import ConfigError, InvalidQueryError, Problem, StoreError


def bad_param(name: str, detail: str) -> Problem:
    """400 for one invalid parameter, naming it (``invalid-params`` as in RFC 9457 §3)."""
    return Problem(
        400,
        f"{name}: {detail}",
        slug="invalid-parameter",
        title="Invalid parameter",
        extra={"invalid-params": [{"name": name, "reason": detail}]},
    )


def _invalid_param(err: Mapping[str, Any]) -> dict[str, str]:
    """One entry of ``invalid-params`` for one of pydantic's (or FastAPI's) validation errors."""
    loc = err.get("loc", ())
    if err.get("type") == "json_invalid":  # loc is ("body", offset)
        why = (err.get("ctx") or {}).get("error") or "invalid"
        offset = loc[1] if len(loc) > 1 else 0
        return {"name": "body", "reason": f"not JSON (RFC 8259) at character {offset}: {why}"}
    return {"name": ".".join(str(p) for p in loc[1:]) or "body", "reason": str(err.get("msg"))}


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """The methods some route takes at the request's path (RFC 9110 §15.5.6): Starlette's 405
    names only the first route's (``GET`` for ``/api/v1/settings``, whose ``PATCH`` is another
    route)."""
    routes = request.app.router.routes

    def taken(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in routes)

    return ", ".join(m for m in _METHODS if taken(m))


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
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and "Allow" in headers:  # a route's (StaticFiles' has none)
            headers["Allow"] = _allowed_methods(request)
        return problem_response(
            request, Problem(exc.status_code, str(exc.detail), headers=headers or None)
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        params = [_invalid_param(err) for err in exc.errors()]
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


__all__ = ["bad_param", "install", "problem_response"]
