"""The FastAPI application: ``create_app(settings)``; ``simclr serve`` runs it under uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from services import problems
from services.dispatcher import Dispatcher
from services.routes import console, docs, evaluations, health, internal, jobs, kinds
from services.service import Service
from services.settings import Settings
from services.telemetry import LatencyMiddleware


def create_app(
    settings: Settings | None = None,
    dispatcher: Dispatcher | None = None,
    reconcile: bool = True,
    migrated: bool = False,
) -> FastAPI:
    """The API over a ``Service`` started in the app's lifespan. ``dispatcher`` replaces Ray (the
    no-op one for benchmarks and API tests); ``reconcile=False`` leaves the reconciler off;
    ``migrated``: the schema is at head already, do not migrate at start-up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # sync routes run on anyio's thread pool (40 threads by default): fewer threads contend
        # less for Python's lock (docs/benchmarks.md, the API's processes and threads)
        to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        app.state.service = Service.start(settings, dispatcher, reconcile, migrated)
        try:
            yield
        finally:
            app.state.service.stop()

    app = FastAPI(
        title="SimCLR at scale",
        version="0.1.0",
        summary="Submit, follow and inspect SimCLR and generative training jobs run on Ray.",
        lifespan=lifespan,
        # served by services.routes.docs, behind the API token like everything but /healthz
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(
        LatencyMiddleware,
        telemetry=lambda: getattr(getattr(app.state, "service", None), "telemetry", None),
    )
    app.add_middleware(problems.RefuseNul)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(jobs.router)
    app.include_router(evaluations.router)
    app.include_router(kinds.router)
    app.include_router(console.router)
    app.include_router(internal.router)
    return app
