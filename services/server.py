"""``simclr serve``: the API in ``settings.workers`` uvicorn processes over one database.

The parent prepares what must exist once before any worker starts: the internal token, the
database's schema (migrated here, so workers never race to migrate) and, for the embedded
default, the local Ray head (one per service, stopped when the parent exits). It then hands the
listening socket to uvicorn's supervisor, which starts the workers, restarts one that dies, and
stops them all on SIGINT or SIGTERM. Each worker builds the app from the settings the parent
resolved (passed in its environment, readable by this user only) and runs a reconciler that acts
only while it holds the leader lock (``services.leader``). With several workers, the latency
histograms are kept in files in a private temporary directory of this machine (Prometheus's
multiprocess mode, removed at exit) so that ``/metrics`` reports every worker's requests,
whichever worker answers the scrape.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile

import uvicorn
from fastapi import FastAPI

from services.app import create_app
from services.dispatcher import Dispatcher
from services.ray_head import start_head
from services.service import internal_token
from services.settings import Settings
from services.store.db import make_engine, migrate

SETTINGS_ENV = "SIMCLR_SERVE_SETTINGS"
PARENT_ENV = "SIMCLR_SERVE_PARENT"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("simclr.serve")


def serve(settings: Settings, app: str = "services.server:app", local_head: bool = True) -> None:
    """Serve ``app`` (an import path to a factory of the app, reading ``worker_settings()``)
    until SIGINT or SIGTERM. ``local_head=False``: never start a Ray head (an app that brings its
    own dispatcher, as the benchmarks do)."""
    settings = settings.model_copy(update={"internal_token": internal_token(settings)})
    engine = make_engine(settings.database_url, 1)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    head = None
    if local_head and settings.ray_address is None:
        head = start_head(settings.state_dir, settings.dashboard_port)
        settings = settings.model_copy(update={"ray_address": head.dashboard_url})
    # uvicorn ends a single process's run by raising SIGTERM again with the default handler,
    # which would end this process before the head is stopped: make it an exit that unwinds
    signal.signal(signal.SIGTERM, _exit)
    metrics = None
    try:
        # set after the head started: the head and its jobs must not inherit the settings
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        os.environ[PARENT_ENV] = str(os.getpid())
        os.environ.pop(METRICS_ENV, None)  # one process keeps its histograms in memory
        if settings.workers > 1:  # local to this machine, never on a storage others share
            metrics = tempfile.mkdtemp(prefix="simclr-metrics-")
            os.environ[METRICS_ENV] = metrics
        log.info("serving on %s:%d in %d process(es); the console: http://%s:%d/ui/",
                 settings.host, settings.port, settings.workers, settings.host,
                 settings.port)  # fmt: skip
        uvicorn.run(app, factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level="info",
                    access_log=settings.access_log)  # fmt: skip
    finally:
        if head is not None:
            log.info("stopping the local Ray head")
            head.stop()
        if metrics is not None:
            shutil.rmtree(metrics, ignore_errors=True)


def _exit(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # a stop that was asked for


def configure_logging() -> None:
    """The service's log lines, in the parent and in every worker (spawned afresh)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def end_with_the_parent() -> None:
    """In a worker of ``serve``: have the kernel send this process SIGTERM (uvicorn's graceful
    shutdown) when ``serve`` ends, also when it is SIGKILLed. Otherwise its workers would go on
    serving the socket, and one of them reconciling, with nothing left to stop them (Linux only)."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None or int(parent) == os.getpid() or not sys.platform.startswith("linux"):
        return  # not started by serve, or serve itself (one process: no workers of its own)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def worker_settings() -> Settings:
    """The settings ``serve`` resolved, in one of its workers."""
    return Settings.model_validate_json(os.environ[SETTINGS_ENV])


def app(dispatcher: Dispatcher | None = None, reconcile: bool = True) -> FastAPI:
    """The app of one worker (uvicorn calls it in each); ``dispatcher`` and ``reconcile`` as
    ``create_app`` takes them."""
    configure_logging()
    end_with_the_parent()
    # migrated by the parent: a worker that uvicorn restarts while the database is down starts
    # anyway and answers 503 until it is back, instead of failing in its migration
    application = create_app(worker_settings(), dispatcher, reconcile, migrated=True)
    # what is alive now (modules, routes, models) lives as long as the process: kept out of the
    # collector's scans, whose full passes otherwise stall requests for tens of ms
    # (docs/benchmarks.md: p99 of a job list at one client, back to back, 62-76 ms -> 9-11 ms)
    gc.freeze()
    return application
