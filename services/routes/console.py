"""The web console (``services/console/``): the jobs table at ``/ui/``, a job's page at
``/ui/jobs/<id>`` and the submit page at ``/ui/submit``, served by the API itself (same origin).

The pages hold no data: their script reads it from ``/v1`` with the token the user enters, kept
in the tab's sessionStorage and sent as the bearer header (never a cookie, never in a URL), so
they are served without the token. Each answer carries a strict Content-Security-Policy: scripts
and styles from this origin's files only (nothing inline), pictures from here or the blobs the
script made of artifacts, requests to this origin only, no framing."""

from __future__ import annotations

import functools
import html
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from services.store.store import NotFound
from trainer.contracts.states import JOB_STATUSES, TERMINAL

router = APIRouter(include_in_schema=False)

FILES = Path(__file__).resolve().parent.parent / "console"
STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _page() -> bytes:
    """The pages' one HTML document, with the job statuses the API knows."""
    text = (FILES / "index.html").read_text()
    text = text.replace("{{statuses}}", html.escape(",".join(JOB_STATUSES)))
    return text.replace("{{terminal}}", html.escape(",".join(sorted(TERMINAL)))).encode()


def _html() -> Response:
    return Response(_page(), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def jobs_page() -> Response:
    return _html()


@router.get("/ui/submit")
def submit_page() -> Response:
    return _html()


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: str) -> Response:
    return _html()


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    """The console's script and style sheet; nothing else (no path reaches another file)."""
    if name not in STATIC:
        raise NotFound(f"no console file {name!r}")
    return Response((FILES / name).read_bytes(), media_type=STATIC[name], headers=HEADERS)
