"""RFC 9457 problem details: every error the web app answers with (JSON, or a page for people)."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response

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


__all__ = ["bad_param", "install", "problem_response"]
