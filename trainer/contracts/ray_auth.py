"""Ray 2.60's token authentication, as its own clients do it: the token from ``RAY_AUTH_TOKEN``,
else the file ``RAY_AUTH_TOKEN_PATH`` (default ``~/.ray/auth_token``), sent as a bearer token."""

from __future__ import annotations

import os
from pathlib import Path


def ray_auth_token() -> str | None:
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip() if path.is_file() else None


def use_token_auth_when_available() -> None:
    """Make this process a token-authenticating Ray client when a token is available and
    ``RAY_AUTH_MODE`` is unset: Ray's clients default to no authentication even where its
    ``ray start`` turned tokens on, and then cannot connect. Never turns authentication off."""
    if "RAY_AUTH_MODE" not in os.environ and ray_auth_token() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_auth_headers() -> dict[str, str]:
    token = ray_auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
