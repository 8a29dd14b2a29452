"""kilowatch.web: the dashboard and the ``/api/v1`` REST API (FastAPI)."""

from kilowatch.web.app import create_app, serve_web, start_web

__all__ = ["create_app", "serve_web", "start_web"]
