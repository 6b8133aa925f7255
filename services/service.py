"""The running service: its settings, store, dispatcher, reconciler and (embedded default) Ray head,
built at start-up and torn down at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from services.dispatcher import Dispatcher, RayDispatcher
from services.ray_head import LocalRayHead, start_head
from services.reconciler import Reconciler
from services.settings import Settings
from services.store.db import make_engine, migrate
from services.store.store import Store
from services.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    store: Store
    dispatcher: Dispatcher
    reconciler: Reconciler
    telemetry: Telemetry
    head: LocalRayHead | None = None

    @classmethod
    def start(
        cls, settings: Settings, dispatcher: Dispatcher | None = None, reconcile: bool = True
    ) -> Service:
        """Migrate the database, start or attach to Ray, start reconciling."""
        engine = make_engine(settings.database_url)
        migrate(engine)
        store = Store(engine)
        head = None
        if dispatcher is None:
            address = settings.ray_address
            if address is None:
                head = start_head(Path(settings.storage_path).parent, settings.dashboard_port)
                address = head.dashboard_url
            dispatcher = RayDispatcher(address, settings)
        reconciler = Reconciler(store, dispatcher, settings.reconcile_interval_s)
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
