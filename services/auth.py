"""Bearer tokens: ``SIMCLR_API_TOKEN`` for the API (when set), and a per-job token for workers.

A job's workers get ``job_token(secret, job_id)``, an HMAC-SHA256 of the job id under the
service's internal secret (``SIMCLR_INTERNAL_TOKEN``, or the one kept in the state directory),
which never leaves the service. Ray shows a job's environment to anyone with dashboard access, so
what a worker holds must be worth little: it is good for that job's own ``/internal/v1/jobs/<id>``
reports and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import HTTPException, Request


def job_token(secret: str, job_id: str) -> str:
    """The credential of job ``job_id``'s workers."""
    return hmac.new(secret.encode(), f"simclr-job:{job_id}".encode(), hashlib.sha256).hexdigest()


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


async def require_job_token(request: Request) -> None:
    """The bearer token must be the token of the job the path names."""
    secret = request.app.state.service.settings.internal_token
    job_id = request.path_params.get("job_id", "")
    _require(request, job_token(secret, job_id), "the job's token")
