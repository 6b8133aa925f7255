"""Engine and migrations: one SQLAlchemy engine per service, Alembic upgrades applied at start."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from services.leader import lock_key

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0


def make_engine(url: str, request_threads: int = 8) -> Engine:
    """An engine for ``url`` with a connection for each of ``request_threads`` and for the
    reconciler, its leader lock and the tasks run after a response. SQLite (the embedded default)
    gets its directory created, WAL journaling and a busy timeout, so concurrent requests wait
    for the writer instead of failing."""
    parsed = make_url(url)
    pool = {"pool_size": request_threads + 4, "max_overflow": 4, "pool_pre_ping": True}
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, **pool)
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("an in-memory SQLite database lives in one connection: use a file")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    engine = create_engine(url, connect_args=connect_args, **pool)

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record) -> None:
        use_wal(connection, SQLITE_BUSY_TIMEOUT_S)
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _take_the_write_lock(connection) -> None:
        # pysqlite begins a transaction only at the first write, so a transaction that reads a
        # row and then writes it could interleave with another process's (a lost update; what
        # FOR UPDATE prevents on PostgreSQL). Every transaction takes the database's write lock
        # at its start; reads run without one (AUTOCOMMIT) and never wait for it.
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def use_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    """Put the database in WAL mode, waiting up to about ``timeout_s`` for other connections.

    The mode is stored in the file, so only the first connections to a new database change it.
    The change writes the file's header, and while another connection writes to a database still
    in rollback-journal mode (as another process's own switch does, when several API processes
    start together on a new database) SQLite answers SQLITE_BUSY at once instead of waiting out
    the busy timeout. So the change is retried with backoff until ``timeout_s``, as a busy wait
    would; any other error is raised at once. Where SQLite cannot use WAL at all it keeps the old
    mode without an error, and answers with it: that is raised too (``RuntimeError``), since the
    service's reads run beside a writer only under WAL."""
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            remaining = deadline - time.monotonic()
            busy = (error.sqlite_errorcode & 0xFF) == sqlite3.SQLITE_BUSY
            if not busy or remaining <= 0:
                raise
        time.sleep(min(pause, remaining))
        pause = min(2 * pause, 0.25)
    if mode != "wal":
        raise RuntimeError(
            f"SQLite kept the {mode!r} journal mode where the service needs WAL: put the database"
            " on a local filesystem, or use PostgreSQL"
        )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


class MigrationError(RuntimeError):
    """A migration left rows that reference missing rows; it was rolled back."""


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` (Alembic ``upgrade``), keeping every row; one
    process at a time.

    On SQLite, Alembic's batch mode rebuilds a table (copy, DROP the original, rename the copy);
    with foreign keys enforced, that DROP deletes every row referencing the table through
    ``ON DELETE CASCADE``. So foreign keys are off while migrating (SQLite's documented procedure
    for schema changes, https://sqlite.org/lang_altertable.html#otheralter), checked with
    ``PRAGMA foreign_key_check`` before the commit, and on again after."""
    _run(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (Alembic ``downgrade``), as ``migrate`` does."""
    _run(engine, lambda config: command.downgrade(config, revision))


def _run(engine: Engine, alembic_command) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        # a no-op inside a transaction: set before one begins, on the driver's connection
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                # one migration at a time (several API processes or replicas start together):
                # the database's write lock on SQLite (every transaction begins by taking it, see
                # make_engine), a transaction-scoped advisory lock on PostgreSQL; whoever comes
                # second finds the schema migrated and does nothing
                if not sqlite:
                    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
                    key = lock_key(f"migrate:{schema}")
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                config.attributes["connection"] = connection
                alembic_command(config)
                if sqlite:
                    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if dangling:
                        tables = sorted({row[0] for row in dangling})
                        raise MigrationError(
                            f"migration rolled back: {len(dangling)} row(s) of "
                            f"{', '.join(tables)} would reference missing rows"
                        )
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
