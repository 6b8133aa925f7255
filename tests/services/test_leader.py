"""One reconciler however many API processes share the database: the leader lock on SQLite (a
file lock) and PostgreSQL (an advisory lock), taken over when its holder dies or loses its
connection, and reconcilers that pass only while they lead."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services.leader import AdvisoryLock, FileLock, leader_lock
from services.reconciler import Reconciler
from services.store.db import make_engine, migrate
from services.store.store import Store
from tests.conftest import _postgres_schema_url, postgres_schema
from tests.services.test_reconciler import ScriptedRay, create
from tests.services.test_service_ray import wait_for


def test_a_file_lock_has_one_holder_until_it_is_released(tmp_path):
    path = str(tmp_path / "simclr.db.reconciler.lock")
    first, second = FileLock(path), FileLock(path)
    assert first.held()
    assert first.held()  # held, it stays held
    assert not second.held()
    first.release()
    assert second.held()
    assert not first.held()


def test_a_file_lock_is_free_once_its_holder_is_killed(tmp_path):
    path = str(tmp_path / "simclr.db.reconciler.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from services.leader import FileLock
            assert FileLock({path!r}).held()
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FileLock(path).held()
    finally:
        holder.kill()
        holder.wait()
    assert FileLock(path).held()


def test_each_database_gets_its_lock(tmp_path):
    lock = leader_lock(create_engine(f"sqlite:///{tmp_path}/simclr.db"))
    assert isinstance(lock, FileLock) and lock.path == f"{tmp_path}/simclr.db.reconciler.lock"
    assert isinstance(leader_lock(create_engine("postgresql+psycopg://u@h/db")), AdvisoryLock)
    with pytest.raises(ValueError, match="mysql"):
        leader_lock(SimpleNamespace(url=make_url("mysql+pymysql://u@h/db")))


@pytest.fixture
def postgres_url():
    with postgres_schema() as schema:
        yield _postgres_schema_url(schema)


def test_an_advisory_lock_has_one_holder_per_schema(postgres_url):
    engines = [make_engine(postgres_url) for _ in range(2)]
    first, second = (AdvisoryLock(engine) for engine in engines)
    try:
        assert first.held() and first.held()
        assert not second.held()
        keepalive = first._connection.execute(text("SHOW tcp_keepalives_idle")).scalar_one()
        first._connection.commit()
        assert keepalive == "30"  # a lost holder's session ends in a minute, not two hours
        with postgres_schema() as other:  # another service's schema: another lock
            elsewhere = make_engine(_postgres_schema_url(other))
            assert AdvisoryLock(elsewhere).held()
            elsewhere.dispose()
        first.release()
        assert second.held()
        assert not first.held()
    finally:
        first.release()
        second.release()
        for engine in engines:
            engine.dispose()


def test_an_advisory_lock_is_lost_with_its_connection_and_taken_over(postgres_url):
    engines = [make_engine(postgres_url) for _ in range(3)]
    holder, successor = AdvisoryLock(engines[0]), AdvisoryLock(engines[1])
    try:
        assert holder.held()
        assert not successor.held()
        pid = holder._connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        holder._connection.commit()
        with engines[2].connect() as admin:  # an operator, a failover, a network cut
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            admin.commit()
        assert not holder.held()  # it notices, and stops leading
        wait_for(
            successor.held, 10, "the lock to be free", poll=0.02
        )  # once the server has ended the holder's session
        assert not holder.held()
    finally:
        holder.release()
        successor.release()
        for engine in engines:
            engine.dispose()


class Through:
    """One process's view of a shared (scripted) Ray: every call this process made."""

    def __init__(self, ray: ScriptedRay):
        self.ray = ray
        self.calls: list[tuple[str, str]] = []
        self.dashboard_url = ray.dashboard_url

    def __getattr__(self, name):
        method = getattr(self.ray, name)

        def call(*args):
            self.calls.append((name, args[-1]))  # the submission id
            return method(*args)

        return call

    def submitted(self) -> list[str]:
        return [submission for name, submission in self.calls if name == "submit"]


def test_only_the_leading_reconciler_passes_and_another_takes_over_when_it_stops(database_url):
    store = Store(make_engine(database_url))
    migrate(store.engine)
    ray = ScriptedRay()
    processes = [Through(ray), Through(ray)]
    reconcilers = []
    for dispatcher in processes:  # each with its own engine, as each process has
        engine = make_engine(database_url)
        reconcilers.append(Reconciler(Store(engine), dispatcher, 0.05, leader=leader_lock(engine)))
    try:
        reconcilers[0].start()
        wait_for(lambda: reconcilers[0].leading, 10, "a leader", poll=0.02)
        reconcilers[1].start()
        job = create(store)
        first = job.attempts[0].submission_id
        wait_for(lambda: ray.jobs.get(first) == "pending", 10, "a submission", poll=0.02)
        ray.jobs[first] = "running"
        wait_for(lambda: store.get_job(job.id).status == "running", 10, "running", poll=0.02)
        time.sleep(0.3)  # several passes of both
        assert processes[0].submitted() == [first]
        assert {"state", "logs"} <= {name for name, _ in processes[0].calls}
        assert processes[1].calls == []  # the other process asked Ray nothing
        assert reconcilers[0].leading and not reconcilers[1].leading

        reconcilers[0].stop()  # the leader's process ends: its lock is released
        second = create(store).attempts[0].submission_id
        wait_for(lambda: processes[1].submitted() == [second], 10, "the new leader", poll=0.02)
        assert reconcilers[1].leading
        ray.jobs[first] = "succeeded"  # the new leader follows what the old one submitted
        wait_for(lambda: store.get_job(job.id).status == "succeeded", 10, "success", poll=0.02)
        assert ray.submits == 2
    finally:
        for reconciler in reconcilers:
            reconciler.stop()
            reconciler.store.engine.dispose()
        store.engine.dispose()


class Until:
    """A lock held for the first ``n`` checks, then lost."""

    def __init__(self, n: int):
        self.checks = n

    def held(self) -> bool:
        self.checks -= 1
        return self.checks >= 0

    def release(self) -> None:
        pass


def test_a_leader_that_loses_its_lock_mid_pass_stops_there(store):
    ray = Through(ScriptedRay())
    first, second = (create(store).attempts[0].submission_id for _ in range(2))
    for submission in (first, second):
        store.mark_submitted(submission)
        ray.ray.jobs[submission] = "running"
    reconciler = Reconciler(store, ray, leader=Until(1))
    reconciler.leading = True
    reconciler.run_once()
    assert len({submission for name, submission in ray.calls if name == "state"}) == 1
    assert not reconciler.leading
