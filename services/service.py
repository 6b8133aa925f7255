"""The running service: its settings, store, dispatcher, reconciler and (embedded default) Ray head,
built at start-up and torn down at shutdown."""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from anyio import CapacityLimiter, to_thread
from fastapi import BackgroundTasks

from services.dispatcher import Dispatcher, RayDispatcher
from services.leader import leader_lock
from services.ray_head import LocalRayHead, start_head
from services.reconciler import Reconciler
from services.scheduled import schedule_evaluations
from services.settings import Settings
from services.store.db import make_engine, migrate
from services.store.store import Store
from services.telemetry import Telemetry

log = logging.getLogger(__name__)
RAY_THREADS = 4


def internal_token(settings: Settings) -> str:
    """``SIMCLR_INTERNAL_TOKEN``, or the one kept in the state directory (made on first start,
    readable by this user only): a restarted service must accept its running jobs' reports."""
    if settings.internal_token:
        return settings.internal_token
    path = settings.state_dir / "internal_token"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
        temporary.replace(path)
    return path.read_text().strip()


@dataclass
class Service:
    settings: Settings
    store: Store
    dispatcher: Dispatcher
    reconciler: Reconciler
    telemetry: Telemetry
    head: LocalRayHead | None = None
    # the threads that call Ray after a response (seconds each while Ray is slow), apart from
    # the request threads, so that a slow Ray never leaves requests waiting for a thread
    ray_threads: CapacityLimiter = field(default_factory=lambda: CapacityLimiter(RAY_THREADS))

    def after_response(self, background: BackgroundTasks, task: Callable[..., object],
                       *args: object) -> None:  # fmt: skip
        """Run ``task(*args)`` once the response is sent, on one of ``ray_threads``."""
        background.add_task(to_thread.run_sync, task, *args, limiter=self.ray_threads)

    @classmethod
    def start(
        cls,
        settings: Settings,
        dispatcher: Dispatcher | None = None,
        reconcile: bool = True,
        migrated: bool = False,
    ) -> Service:
        """Migrate the database (unless ``migrated``: ``simclr serve`` did it before starting its
        workers), start or attach to Ray, start reconciling."""
        settings = settings.model_copy(update={"internal_token": internal_token(settings)})
        engine = make_engine(settings.database_url, settings.request_threads)
        if not migrated:
            migrate(engine)
        store = Store(engine)
        head = None
        if dispatcher is None:
            address = settings.ray_address
            if address is None:
                head = start_head(settings.state_dir, settings.dashboard_port)
                address = head.dashboard_url
            dispatcher = RayDispatcher(address, settings)
        reconciler = Reconciler(
            store, dispatcher, settings.reconcile_interval_s, settings.run_dir, leader_lock(engine),
            functools.partial(schedule_evaluations, store, settings.max_attempts),
        )  # fmt: skip
        if reconcile:
            reconciler.start()
        log.info(
            "service up: database %s, Ray %s", engine.url.render_as_string(hide_password=True),
            dispatcher.dashboard_url or "not used (no-op dispatcher)",
        )  # fmt: skip
        return cls(settings, store, dispatcher, reconciler, Telemetry(store.count_by_status), head)

    def stop(self) -> None:
        self.reconciler.stop()
        if self.head is not None:
            log.info("stopping the local Ray head")
            self.head.stop()
        self.store.engine.dispose()
