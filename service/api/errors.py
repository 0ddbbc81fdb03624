"""RFC 9457 problem+json answers for every error the API returns."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://shears.dev/problems/"
log = logging.getLogger("shears.api")


class Problem(Exception):
    """An error a client can act on: stable ``type`` slug, status, and how to fix it."""

    def __init__(self, status: int, type_: str, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type_
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


def problem_response(
    status: int, type_: str, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    body = {
        "type": TYPE_BASE + type_,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API serves at ``path``, from its OpenAPI document (Starlette's own 405
    names only the first route that matched the path, e.g. POST but not GET on ``/v1/models``). A
    literal path (``/v1/jobs/upload``) takes precedence over a template that also matches it
    (``/v1/jobs/{job_id}``), as in OpenAPI path matching."""
    table = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = [
            (
                template,
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
                {m.upper() for m in ops},
            )
            for template, ops in app.openapi().get("paths", {}).items()
        ]
        app.state.allowed_methods = table
    matches = [(template, ops) for template, regex, ops in table if regex.match(path)]
    literal = [ops for template, ops in matches if "{" not in template]  # /v1/jobs/upload, not /v1/jobs/{job_id}
    methods = set().union(*(literal or [ops for _, ops in matches]))
    return sorted(methods | {"OPTIONS"}) if methods else []


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response problem+json, validation errors included."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.type, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in exc.errors()]
        fields = ", ".join(e["field"] for e in errors)
        return problem_response(
            422,
            "invalid-request",
            f"The request is invalid at {fields}; fix the listed fields and retry.",
            errors=errors,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        if not isinstance(exc, OperationalError) and not exc.connection_invalidated:
            raise exc  # a bug (bad SQL, constraint), not an outage: a 500 with a traceback in the log
        return problem_response(
            503,
            "database-unavailable",
            "The job database is unreachable for a moment; nothing was changed. Retry after the "
            "Retry-After delay (with the same Idempotency-Key for POST /v1/jobs).",
            {"Retry-After": "5"},
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        """The client went away mid-body: nobody reads an answer, and it is not our error."""
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return problem_response(400, "client-disconnected", "The request body ended early; send it again.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request.app, request.url.path))
            headers["Allow"] = allow
            if request.method == "OPTIONS":  # RFC 9110 §9.3.7: say what the resource supports
                return Response(status_code=204, headers=headers)
            return problem_response(
                405, "method-not-allowed", f"{request.method} is not supported here; use one of {allow}.", headers
            )
        slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        return problem_response(exc.status_code, slug, str(exc.detail), headers)
