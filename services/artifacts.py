"""What a job's workers may store as an artifact: its name, its media type, its size."""

from __future__ import annotations

import re

ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
MAX_ARTIFACT_BYTES = 32 << 20
# What an artifact may be: pictures and plain text (no HTML, SVG or anything a browser runs).
ARTIFACT_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain", "text/csv",
     "application/json"}
)  # fmt: skip


def media_type(content_type: str) -> str:
    """The lower-case media type of a Content-Type header, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()
