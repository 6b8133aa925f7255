"""Which of the service's processes reconciles: the one that holds the database's leader lock.

Several API processes may share one database (``simclr serve --workers N``, replicas of the
Deployment, an old and a new pod during a rolling update). Exactly one of them may reconcile, or
two would submit, stop and record the same Ray jobs at once. Every process tries the lock on each
reconcile pass; the holder keeps it until it ends, and because the lock dies with its holder (a
crash, a lost connection), another process takes over within one pass.

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a connection kept
  for it alone; the server releases it when that connection ends, and ends a connection whose
  client stopped answering its TCP keepalives within about a minute. The key is derived from the
  schema, so services in separate schemas of one database do not contend. A pooler in front of
  PostgreSQL must hand the service whole sessions (PgBouncer's session mode, not transaction
  mode), or the lock is not held by anything.
- SQLite (a file, so one host): an exclusive ``flock`` on ``<database>.reconciler.lock`` beside
  the database; the kernel releases it when the process ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from typing import Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


class LeaderLock(Protocol):
    def held(self) -> bool:
        """Whether this process holds the lock now, taking it if it is free."""

    def release(self) -> None:
        """Give the lock up (another process may take it on its next try)."""


class Alone:
    """A reconciler alone with its database (tests that build one directly)."""

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


class FileLock:
    """An exclusive ``flock`` on ``path``, released by the kernel when the process ends."""

    def __init__(self, path: str):
        self.path = path
        self._descriptor: int | None = None

    def held(self) -> bool:
        if self._descriptor is not None:
            return True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._descriptor = descriptor
        return True

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor releases the flock
            self._descriptor = None


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on a connection kept for it.

    While held, each call checks that its connection still answers: a connection that broke (a
    restarted or unreachable server) took the lock with it, and this process stops leading until
    it takes the lock again."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._connection: Connection | None = None
        self._key: int | None = None

    def held(self) -> bool:
        try:
            if self._connection is not None:
                self._connection.execute(text("SELECT 1"))
                self._connection.commit()
                return True
            connection = self.engine.connect()
            try:
                # the server probes this session's client after 30 s of silence and ends the
                # session (releasing the lock) after a minute without an answer, rather than the
                # operating system's two hours: a holder lost with its host or its network
                for setting, value in KEEPALIVES.items():
                    connection.execute(text(f"SET {setting} = {value}"))
                schema = connection.execute(text("SELECT current_schema()")).scalar_one()
                self._key = lock_key(f"reconciler:{schema}")
                taken = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                ).scalar_one()
                connection.commit()
            except BaseException:
                connection.invalidate()
                connection.close()
                raise
            if not taken:
                connection.close()
                return False
            self._connection = connection
            return True
        except SQLAlchemyError as error:
            log.warning("the reconciler's leader lock: %s", type(error).__name__)
            self.release()
            return False

    def release(self) -> None:
        if self._connection is None:
            return
        try:  # at once, rather than when the server has noticed the connection closed
            self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            self._connection.commit()
        except SQLAlchemyError:
            pass  # a broken connection holds nothing any more
        # closed for good, not returned to the pool with a lock it might still hold
        self._connection.invalidate()
        self._connection.close()
        self._connection = None


def lock_key(name: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of the service's lock ``name``."""
    digest = hashlib.sha256(f"simclr:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def leader_lock(engine: Engine) -> LeaderLock:
    """The leader lock for the service whose database ``engine`` opens."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return AdvisoryLock(engine)
    if url.get_backend_name() == "sqlite":
        return FileLock(f"{url.database}.reconciler.lock")
    raise ValueError(f"no leader lock for a {url.get_backend_name()} database")
