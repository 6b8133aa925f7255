"""Errors as ``application/problem+json`` (RFC 9457): ``type``, ``title``, ``status``, ``detail``,
and for validation errors ``errors``, each naming the field. Nothing else reaches a client: an
unexpected exception is logged here and answered with a 500 that says only that; a database that
does not answer is a 503 with ``Retry-After`` (workers keep their reports and send them again)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from services.kinds import ConfigError
from services.store.store import Conflict, NotFound

log = logging.getLogger(__name__)
# how a route documents an error answer in OpenAPI (``responses={404: PROBLEM}``)
PROBLEM = {"content": {"application/problem+json": {}}}


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, **extra}  # fmt: skip
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


def _field(loc: tuple | list) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    items = [{"field": _field(e["loc"]), "message": e["msg"]} for e in errors]
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in items)
    return problem(422, detail or "invalid request", errors=items)


class RefuseNul:
    """A NUL character in the path or the query string is a 422: no id or name holds one, and
    PostgreSQL cannot even compare with one."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"]
            or b"%00" in scope["query_string"]
            or b"\x00" in scope["query_string"]
        ):
            response = problem(422, "the path or query holds a NUL character",
                               errors=[{"field": "path", "message": "NUL character"}])  # fmt: skip
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_problem(list(error.errors()))

    @app.exception_handler(ConfigError)
    async def _config(_: Request, error: ConfigError) -> JSONResponse:
        return validation_problem(error.errors)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        return problem(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, error: NotFound) -> JSONResponse:
        return problem(404, str(error))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, error: Conflict) -> JSONResponse:
        return problem(409, str(error))

    async def _database_down(request: Request, error: Exception) -> JSONResponse:
        log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path,
                    type(error).__name__)  # fmt: skip
        return problem(
            503, "the database is unavailable; try again shortly", headers={"Retry-After": "5"}
        )

    for error_type in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(error_type, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "internal error; the service log has the details")
