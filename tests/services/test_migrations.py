"""Every migration, from every earlier revision, keeps every row, on SQLite and PostgreSQL.

A database is built at each revision, every table of that revision gets rows (values made from
the reflected column types, foreign keys pointing at real rows), then it is upgraded to head and
every row and value is compared; then downgraded back and compared again. A new migration gets
this test for free; one that moves a column's data elsewhere says where in ``MOVED``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from services.store import db
from services.store.db import alembic_config, downgrade, make_engine, migrate, use_wal

ROWS_PER_TABLE = 3


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def sample(column: sa.Column, table: str, n: int) -> Any:
    """A value of ``column``'s type for row ``n``, distinct across rows (unique constraints)."""
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return n % 2 == 0
    if isinstance(kind, sa.Integer):
        return n + 1
    if isinstance(kind, sa.Float | sa.Numeric):
        return n + 0.25
    if isinstance(kind, sa.DateTime):
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(hours=n)
    if isinstance(kind, sa.JSON):
        return {"n": n, "nested": [1.5, "é", None], "table": table}
    if isinstance(kind, sa.LargeBinary):
        return bytes([n, 0, 255]) * 7
    if isinstance(kind, sa.String):  # Text too
        text = f"{table}.{column.name}-{n} é\nline two"
        return text[: kind.length] if kind.length else text
    raise AssertionError(f"no sample value for {table}.{column.name} of type {kind!r}")


def fill(engine: sa.Engine) -> None:
    """``ROWS_PER_TABLE`` rows in every table; a foreign key takes the referenced table's row of
    the same index (a table referencing itself: the previous row, none for the first)."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    written: dict[str, list[dict[str, Any]]] = {}
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            if table.name == "alembic_version":
                continue
            rows = []
            for n in range(ROWS_PER_TABLE):
                row = {}
                for column in table.columns:
                    [key] = column.foreign_keys or [None]
                    if key is None:
                        row[column.name] = sample(column, table.name, n)
                    elif key.column.table is table:
                        row[column.name] = rows[n - 1][key.column.name] if n else None
                    else:
                        row[column.name] = written[key.column.table.name][n][key.column.name]
                rows.append(row)
            connection.execute(table.insert(), rows)
            written[table.name] = rows


def snapshot(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows, as dicts, in primary-key order."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        return {
            table.name: [
                dict(row._mapping)
                for row in connection.execute(sa.select(table).order_by(*table.primary_key.columns))
            ]
            for table in metadata.sorted_tables
            if table.name != "alembic_version"
        }


def attempt_log_moved(after: dict[str, list[dict[str, Any]]], row: dict[str, Any]) -> Any:
    """0003 moved ``attempts.log`` into ``attempt_logs`` chunks: the text, put back together."""
    chunks = [c for c in after["attempt_logs"] if c["attempt_id"] == row["id"]]
    return "".join(c["text"] for c in sorted(chunks, key=lambda c: c["start"]))


# (table, column) dropped by a migration -> where its value is now, given the upgraded snapshot
# and the row (with its primary key) as it is after the upgrade.
MOVED: dict[tuple[str, str], Callable[[dict, dict], Any]] = {
    ("attempts", "log"): attempt_log_moved,
}


def assert_kept(before: dict, after: dict) -> None:
    for table, rows in before.items():
        assert table in after, f"table {table} was dropped with its {len(rows)} rows"
        assert len(after[table]) == len(rows), (
            f"{table}: {len(rows)} rows became {len(after[table])}"
        )
        for old, new in zip(rows, after[table], strict=True):
            for column, value in old.items():
                if column in new:
                    assert new[column] == value, (
                        f"{table}.{column}: {value!r} became {new[column]!r}"
                    )
                else:
                    assert (table, column) in MOVED, f"{table}.{column} was dropped with its data"
                    assert MOVED[table, column](after, new) == value, (
                        f"{table}.{column} moved wrong"
                    )


def assert_no_dangling_references(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []


@pytest.mark.parametrize("revision", revisions()[:-1])
def test_upgrading_from_every_revision_keeps_every_row(database_url, revision):
    engine = make_engine(database_url)
    try:
        migrate(engine, revision)
        fill(engine)
        before = snapshot(engine)
        assert all(len(rows) == ROWS_PER_TABLE for rows in before.values())

        migrate(engine, "head")
        assert_kept(before, snapshot(engine))
        assert_no_dangling_references(engine)

        downgrade(engine, revision)
        assert snapshot(engine) == before
        assert_no_dangling_references(engine)
    finally:
        engine.dispose()


def test_a_restarted_service_keeps_its_jobs_attempts_and_what_workers_reported(tmp_path):
    """The audit's case, end to end through the store: a database at revision 0001 with a
    running job, its attempt, a metric, a checkpoint and an artifact comes through the start-up
    migration whole, and the job can still be cancelled and its log read."""
    from services.store.store import Store

    engine = make_engine(f"sqlite:///{tmp_path / 'simclr.db'}")
    migrate(engine, "0001")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO jobs (id, kind, name, status, config, resources, max_attempts, "
            "created_at, updated_at) VALUES ('job-1', 'simclr', 'j', 'running', '{}', '{}', 3, "
            "?, ?)",
            (now, now),
        )
        connection.exec_driver_sql(
            "INSERT INTO attempts (job_id, number, submission_id, state, submit_errors, log, "
            "created_at) VALUES ('job-1', 1, 'job-1-a1', 'running', 0, 'step 1\n', ?)",
            (now,),
        )
        connection.exec_driver_sql(
            "INSERT INTO metrics (job_id, step, epoch, name, value, recorded_at) "
            "VALUES ('job-1', 1, 0, 'loss', 6.5, ?)",
            (now,),
        )
        connection.exec_driver_sql(
            "INSERT INTO checkpoints (job_id, name, step, epoch, path, metrics, available, "
            "created_at) VALUES ('job-1', 'step-00000001', 1, 0, '/runs/job-1/step-00000001', "
            "'{}', 1, ?)",
            (now,),
        )
        connection.exec_driver_sql(
            "INSERT INTO artifacts (job_id, name, content_type, data, created_at) "
            "VALUES ('job-1', 'views.png', 'image/png', x'89504e47', ?)",
            (now,),
        )
    migrate(engine)
    store = Store(engine)
    job = store.get_job("job-1")
    assert [a.submission_id for a in job.attempts] == ["job-1-a1"]
    assert [(m.name, m.value) for m in store.list_metrics("job-1")] == [("loss", 6.5)]
    assert [c.name for c in store.list_checkpoints("job-1")] == ["step-00000001"]
    assert store.artifact("job-1", "views.png").data == b"\x89PNG"
    assert store.read_log("job-1", None, 0, 100)[1:] == (0, "step 1\n")
    assert store.request_cancel("job-1").status == "cancelling"
    engine.dispose()


def test_processes_that_start_together_migrate_one_at_a_time(database_url):
    """Several API processes or replicas starting at once on a new database: one migrates, the
    others wait for it and find the schema at head."""
    engines = [make_engine(database_url) for _ in range(3)]
    start = threading.Barrier(len(engines))

    def start_up(engine: sa.Engine) -> None:
        start.wait()
        migrate(engine)

    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(start_up, engines))  # re-raises what any of them raised
        with engines[0].connect() as connection:
            version = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert [row[0] for row in version] == [revisions()[-1]]
    finally:
        for engine in engines:
            engine.dispose()


def _writer_on_a_new_database(path) -> sqlite3.Connection:
    """A connection holding a write transaction on a new database still in SQLite's default
    (rollback journal) mode: another process's connection in the middle of its own switch."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE first_writer (a)")
    return writer


def test_a_connection_waits_for_a_writer_to_switch_a_new_database_to_wal(tmp_path, monkeypatch):
    """SQLite refuses the switch to WAL at once, without the busy timeout, while another
    connection writes; the engine's connection retries until the writer commits (the cause of
    the flaky start-together test above). The writer commits during the first retry's pause, so
    the test takes the retry path however slow the machine."""
    path = tmp_path / "simclr.db"
    writer = _writer_on_a_new_database(path)
    pauses = []

    def commit_then_sleep(seconds: float) -> None:
        if not pauses:
            writer.execute("COMMIT")
        pauses.append(seconds)

    monkeypatch.setattr(db.time, "sleep", commit_then_sleep)
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
        assert mode == "wal"
        assert len(pauses) == 1
    finally:
        writer.close()
        engine.dispose()


def test_a_writer_that_never_commits_fails_the_switch_after_the_timeout(tmp_path):
    path = tmp_path / "simclr.db"
    writer = _writer_on_a_new_database(path)
    reader = sqlite3.connect(path, check_same_thread=False)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            use_wal(reader, timeout_s=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert not reader.in_transaction
    finally:
        reader.close()
        writer.close()


def test_a_database_that_keeps_another_journal_mode_is_refused_at_once():
    """SQLite answers ``PRAGMA journal_mode=WAL`` with the mode it kept where it cannot use WAL
    (an in-memory database here), without an error: that must not pass as a switch."""
    memory = sqlite3.connect(":memory:")
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="kept the 'memory' journal mode"):
            use_wal(memory, timeout_s=30)
        assert time.monotonic() - started < 5
    finally:
        memory.close()


def test_an_error_other_than_busy_is_raised_without_waiting(tmp_path):
    """Only SQLITE_BUSY is worth a retry: a database opened read-only refuses the switch, and
    that is raised at once, not after the timeout."""
    path = tmp_path / "simclr.db"
    sqlite3.connect(path).close()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            use_wal(read_only, timeout_s=30)
        assert time.monotonic() - started < 5
    finally:
        read_only.close()
