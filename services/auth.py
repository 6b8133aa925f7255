"""Bearer tokens: ``SIMCLR_API_TOKEN`` for the API (when set), the internal token for workers."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


def _require(request: Request, expected: str, what: str) -> None:
    token = _bearer(request)
    if token is None or not secrets.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(
            401,
            f"missing or wrong bearer token: send 'Authorization: Bearer <{what}>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_api_token(request: Request) -> None:
    expected = request.app.state.service.settings.api_token
    if expected:
        _require(request, expected, "SIMCLR_API_TOKEN")


async def require_internal_token(request: Request) -> None:
    _require(request, request.app.state.service.settings.internal_token, "internal token")
