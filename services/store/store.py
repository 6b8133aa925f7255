"""Every read and write of the service's database: routes, the workers' reports and the reconciler
all go through ``Store``, in every API process.

A job comes back as a ``JobRecord``: a snapshot of its row and its attempts' rows, apart from
any session (a write loads the rows again under a lock). Snapshots are plain dataclasses built
from the tables' columns, read in one query with SQLAlchemy Core: a third of the cost of ORM
objects, whose identity map and instrumented attributes a read-only answer does not need (0.27 ->
0.10 ms per job read on SQLite)."""

from __future__ import annotations

import base64
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import make_dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, Select, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.store.tables import (
    Artifact,
    Attempt,
    AttemptLog,
    Checkpoint,
    Job,
    MetricPoint,
    utcnow,
)
from trainer.contracts.states import (
    FINISHED_ATTEMPT_STATES,
    JOB_STATUSES,
    TERMINAL,
    move,
)
from trainer.reporter import json_safe

# The newest characters of an attempt's log that are kept (older chunks are dropped whole, so up
# to one chunk more may stay): 4 Mi characters, a day of a chatty job's log at 50 bytes/s.
LOG_CAP_CHARS = 4 << 20


AttemptRecord = make_dataclass(
    "AttemptRecord", [c.name for c in Attempt.__table__.columns], frozen=True, slots=True
)
JobRecord = make_dataclass(
    "JobRecord", [c.name for c in Job.__table__.columns] + ["attempts"], frozen=True, slots=True
)


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """A request that contradicts the record: a reused idempotency key, an illegal transition."""


def new_job_id() -> str:
    """Time-ordered and readable: ``job-20261124-031255-a1b2c3``."""
    return f"job-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def submission_id(job_id: str, number: int) -> str:
    return f"{job_id}-a{number}"


def _encode_cursor(job: Job) -> str:
    """The position after ``job`` in the newest-first order: its creation time and id."""
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, _, job_id = (
            base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode().partition("|")
        )
        return datetime.fromisoformat(created), job_id
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"invalid cursor {cursor!r}: pass the next_cursor of a previous page"
        ) from None


def _summarise(job_id: str, message: str, tail: int = 3000) -> str:
    """Ray's message of a failed job, shortened: the driver's own reason first (its last line
    ``job <id> failed: <the error underneath>``, which Ray's actors may print past), then the
    message's first line and the end of the log it appends, not the whole 20,000 characters."""
    reasons = re.findall(rf"job {re.escape(job_id)} failed: (.+)", message)
    if len(message) > tail + 200:
        first, _, rest = message.partition("\n")
        message = f"{first}\n...\n{rest[-tail:]}"
    return f"{reasons[-1].strip()}\n\n{message}" if reasons else message


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._writes = sessionmaker(engine, expire_on_commit=False)
        # reads without BEGIN and ROLLBACK around them, two round trips fewer on PostgreSQL
        # (docs/benchmarks.md: GET /v1/jobs/{id} 1,283 -> 1,770/s). Neither database gives a
        # snapshot across statements here (pysqlite begins only before a write, PostgreSQL reads
        # committed rows at each statement): a read of several statements copes with what
        # changed between them (read_log)
        self._reads_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._reads = sessionmaker(self._reads_engine, expire_on_commit=False)

    def _insert(self):
        return (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        kind: str,
        name: str | None,
        config: dict[str, Any],
        resources: dict[str, Any],
        max_attempts: int,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        source_job_id: str | None = None,
        evaluate: list[dict[str, Any]] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Write a queued job and its first attempt; return it and whether it is new.

        With an idempotency key already used for the same request (``request_hash``), the
        existing job comes back (``False``); for another request, ``Conflict``. Concurrent
        requests with one key create one job: the key is unique in the table."""
        for _ in range(5):
            if idempotency_key is not None:
                existing = self.job_by_idempotency_key(idempotency_key, request_hash)
                if existing is not None:
                    return existing, False
            job_id = new_job_id()
            job = Job(
                id=job_id, kind=kind, name=name or job_id, status="queued", config=config,
                resources=resources, max_attempts=max_attempts,
                idempotency_key=idempotency_key, request_hash=request_hash,
                source_job_id=source_job_id, evaluate=evaluate or None,
            )  # fmt: skip
            job.attempts.append(
                Attempt(number=1, submission_id=submission_id(job_id, 1), state="new")
            )
            try:
                with self._writes.begin() as session:
                    session.add(job)
                return self.get_job(job_id), True
            except IntegrityError:
                continue  # the key was taken meanwhile (re-read it) or the id collided (new one)
        raise RuntimeError("could not create the job: repeated database conflicts")

    def job_by_idempotency_key(self, key: str, request_hash: str | None) -> JobRecord | None:
        """The job created with ``key``, or None; ``Conflict`` when it was created for another
        request (``request_hash``)."""
        found = self._records(select(Job.id).where(Job.idempotency_key == key))
        if found and found[0].request_hash != request_hash:
            raise Conflict(f"Idempotency-Key {key!r} was already used for a different request "
                           f"(job {found[0].id})")  # fmt: skip
        return found[0] if found else None

    def get_job(self, job_id: str) -> JobRecord:
        found = self._records(select(Job.id).where(Job.id == job_id))
        if not found:
            raise NotFound(f"no job {job_id!r}")
        return found[0]

    def _records(self, page: Select) -> list[JobRecord]:
        """The jobs whose ids ``page`` selects, newest first, each with its attempts by number,
        in one query of one statement (no transaction around it)."""
        jobs, attempts = Job.__table__, Attempt.__table__
        query = (
            select(jobs, attempts)
            .outerjoin(attempts, attempts.c.job_id == jobs.c.id)
            .where(jobs.c.id.in_(page.scalar_subquery()))
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc(), attempts.c.number)
        )
        split = len(jobs.columns)
        with self._reads_engine.connect() as connection:
            rows = connection.execute(query).all()
        firsts, attempts_of = [], {}
        for row in rows:  # each job's rows together, newest job first, its attempts in order
            if row[0] not in attempts_of:
                firsts.append(row)
                attempts_of[row[0]] = []
            if row[split] is not None:
                attempts_of[row[0]].append(AttemptRecord(*row[split:]))
        return [JobRecord(*row[:split], attempts=tuple(attempts_of[row[0]])) for row in firsts]

    def list_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        kinds: Sequence[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
        source_job_id: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first; ``cursor`` continues after the last job of the previous page. ``kind``:
        of this kind only; ``kinds``: of any of these."""
        query = select(Job.id).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        if status:
            query = query.where(Job.status == status)
        if kind:
            query = query.where(Job.kind == kind)
        if kinds is not None:
            query = query.where(Job.kind.in_(kinds))
        if source_job_id:
            query = query.where(Job.source_job_id == source_job_id)
        if cursor:
            created, job_id = _decode_cursor(cursor)
            if self.engine.dialect.name == "sqlite":
                created = created.replace(tzinfo=None)  # SQLite keeps naive UTC
            query = query.where(
                (Job.created_at < created) | ((Job.created_at == created) & (Job.id < job_id))
            )
        jobs = self._records(query)
        if len(jobs) > limit:
            return jobs[:limit], _encode_cursor(jobs[limit - 1])
        return jobs, None

    def count_by_status(self) -> dict[str, int]:
        with self._reads() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            counts = {status: count for status, count in rows}
        return {status: counts.get(status, 0) for status in JOB_STATUSES}

    def request_cancel(self, job_id: str) -> JobRecord:
        """Mark the job ``cancelling`` (the reconciler stops its Ray job), or ``cancelled`` at once
        when no attempt ever reached Ray."""
        with self._writes.begin() as session:
            job = self._locked(session, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"job {job_id} is already {job.status}")
            attempt = job.attempts[-1]
            if attempt.state == "new":
                attempt.state, attempt.finished_at = "stopped", utcnow()
                move(job, "cancelled")
            else:
                move(job, "cancelling")
        return self.get_job(job_id)

    def retry(self, job_id: str) -> JobRecord:
        """A new attempt for a failed or cancelled job; it resumes from the latest checkpoint."""
        with self._writes.begin() as session:
            job = self._locked(session, job_id)
            if job.status not in ("failed", "cancelled"):
                raise Conflict(f"job {job_id} is {job.status}: only failed or cancelled jobs retry")
            self._add_attempt(job)
            job.error = None
            job.evaluations_scheduled = False  # its new checkpoints and end are to come
        return self.get_job(job_id)

    def jobs_scheduling_evaluations(self, limit: int = 1000) -> list[JobRecord]:
        """Jobs that asked for evaluations at submission and have not had all of them
        submitted yet (``services.scheduled``): the ``limit`` oldest, as ``_records`` orders them."""
        query = (
            select(Job.id)
            .where(Job.evaluate.is_not(None), Job.evaluations_scheduled.is_(False))
            .order_by(Job.created_at)
            .limit(limit)
        )
        return self._records(query)

    def idempotency_keys(self, prefix: str) -> set[str]:
        """The idempotency keys in use that start with ``prefix`` (one query)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = select(Job.idempotency_key).where(
            Job.idempotency_key.like(f"{escaped}%", escape="\\")
        )
        with self._reads() as session:
            return set(session.scalars(query))

    def mark_evaluations_scheduled(self, job_id: str) -> None:
        """Every evaluation ``job_id`` asked for is submitted; unless it was retried meanwhile."""
        with self._writes.begin() as session:
            job = self._locked(session, job_id)
            if job.status in TERMINAL:
                job.evaluations_scheduled = True

    @staticmethod
    def _locked(session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    @staticmethod
    def _locked_attempt(session: Session, submission: str) -> Attempt:
        return session.scalars(
            select(Attempt).where(Attempt.submission_id == submission).with_for_update()
        ).one()

    @staticmethod
    def _add_attempt(job: Job) -> None:
        number = job.attempts[-1].number + 1 if job.attempts else 1
        job.attempts.append(
            Attempt(number=number, submission_id=submission_id(job.id, number), state="new")
        )
        move(job, "queued")

    # -- attempts (dispatcher and reconciler) ---------------------------------------------------

    def attempts_in(self, states: Sequence[str]) -> list[Attempt]:
        """The latest attempt of every unfinished job whose attempt is in one of ``states``."""
        with self._reads() as session:
            latest = (
                select(Attempt.job_id, func.max(Attempt.number).label("number"))
                .group_by(Attempt.job_id)
                .subquery()
            )
            query = (
                select(Attempt)
                .join(
                    latest,
                    (Attempt.job_id == latest.c.job_id) & (Attempt.number == latest.c.number),
                )
                .join(Job, Job.id == Attempt.job_id)
                .where(Attempt.state.in_(states), Job.status.not_in(TERMINAL))
                .order_by(Attempt.id)
            )
            return list(session.scalars(query))

    def attempt(self, submission: str) -> Attempt:
        with self._reads() as session:
            attempt = session.scalars(
                select(Attempt).where(Attempt.submission_id == submission)
            ).one_or_none()
        if attempt is None:
            raise NotFound(f"no attempt {submission!r}")
        return attempt

    def mark_submitted(self, submission: str) -> bool:
        """Record that Ray has the attempt; False when it was cancelled meanwhile."""
        with self._writes.begin() as session:
            result = session.execute(
                update(Attempt)
                .where(Attempt.submission_id == submission, Attempt.state == "new")
                .values(state="submitted", message=None)
            )
        return result.rowcount == 1

    def record_submit_error(self, submission: str, message: str, fail_after: int) -> None:
        """Count a failed submission; after ``fail_after`` of them the job fails with ``message``.
        An attempt no longer ``new`` (cancelled, or submitted by another process) counts none."""
        with self._writes.begin() as session:
            attempt = self._locked_attempt(session, submission)
            if attempt.state != "new":  # cancelled (or submitted) meanwhile: nothing to fail
                return
            attempt.submit_errors += 1
            attempt.message = message
            if attempt.submit_errors >= fail_after:
                attempt.state, attempt.finished_at = "failed", utcnow()
                job = self._locked(session, attempt.job_id)
                move(job, "failed")
                job.error = (
                    f"could not submit to Ray after {attempt.submit_errors} tries: {message}"
                )

    def update_attempt(
        self, submission: str, state: str, message: str | None = None, log: str | None = None
    ) -> JobRecord:
        """Record Ray's view of an attempt (``state`` in lower case, or ``lost``) and derive the
        job's status from it; ``log`` is the Ray job's whole log, of which the characters past
        those already stored are appended. A lost attempt is followed by a new one while the job
        has attempts left; a job being cancelled ends ``cancelled`` however its Ray job ended but
        success."""
        with self._writes.begin() as session:
            attempt = self._locked_attempt(session, submission)
            job = self._locked(session, attempt.job_id)
            if log is not None:
                self._append_log(session, attempt, log[attempt.log_size :])
            if message is not None:
                attempt.message = message
            if state != attempt.state:
                attempt.state = state
                if state == "running" and attempt.started_at is None:
                    attempt.started_at = utcnow()
                if state in FINISHED_ATTEMPT_STATES:
                    attempt.finished_at = utcnow()
            if job.status not in TERMINAL and attempt is job.attempts[-1]:
                self._follow_attempt(job, attempt, state, message)
        return self.get_job(job.id)

    def _follow_attempt(self, job: Job, attempt: Attempt, state: str, message: str | None) -> None:
        """The job's status once its latest attempt is in ``state``."""
        if state == "succeeded":
            move(job, "succeeded")
        elif job.status == "cancelling":
            if state in ("failed", "stopped", "lost"):
                move(job, "cancelled")
        elif state == "running":
            move(job, "running")
        elif state == "failed":
            move(job, "failed")
            job.error = _summarise(job.id, message or "the Ray job failed")
        elif state == "stopped":
            move(job, "cancelled")
            job.error = "the Ray job was stopped outside the service"
        elif state == "lost":
            if attempt.number < job.max_attempts:
                self._add_attempt(job)
            else:
                move(job, "failed")
                job.error = (
                    f"the Ray job vanished from the cluster {attempt.number} time(s); "
                    f"giving up after max_attempts={job.max_attempts}"
                )

    @staticmethod
    def _append_log(session: Session, attempt: Attempt, text: str) -> None:
        """Append ``text`` to the attempt's log; drop the chunks that end before the newest
        ``LOG_CAP_CHARS`` characters (a chunk longer than the cap keeps only its end)."""
        if not text:
            return
        text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL; SQLite stops at it
        end = attempt.log_size + len(text)
        kept = text[-LOG_CAP_CHARS:]
        session.add(AttemptLog(attempt_id=attempt.id, start=end - len(kept), text=kept))
        attempt.log_size = end
        session.execute(
            delete(AttemptLog).where(
                AttemptLog.attempt_id == attempt.id,
                AttemptLog.start + func.length(AttemptLog.text) <= end - LOG_CAP_CHARS,
            )
        )

    def read_log(
        self, job_id: str, number: int | None, offset: int, limit: int
    ) -> tuple[Attempt, int, str]:
        """Attempt ``number`` (default: the latest) of a job, and at most ``limit`` characters of
        its log from ``offset`` as ``(start, text)``: ``start`` is later than ``offset`` when the
        characters before it were dropped by the cap."""
        with self._reads() as session:
            query = select(Attempt).where(Attempt.job_id == job_id)
            query = (
                query.order_by(Attempt.number.desc())
                if number is None
                else query.where(Attempt.number == number)
            )
            attempt = session.scalars(query.limit(1)).first()
            if attempt is None:
                self.get_job(job_id)  # NotFound for a job that does not exist
                raise LookupError(f"job {job_id} has no attempt {number}")
            end = AttemptLog.start + func.length(AttemptLog.text)
            mine = AttemptLog.attempt_id == attempt.id
            first = session.scalar(select(func.min(AttemptLog.start)).where(mine, end > offset))
            if first is None:
                return attempt, min(offset, attempt.log_size), ""
            start = max(offset, first)
            chunks = session.execute(
                select(AttemptLog.start, AttemptLog.text)
                .where(mine, end > start, AttemptLog.start < start + limit)
                .order_by(AttemptLog.start)
            ).all()
        if not chunks:  # dropped by the cap between the two reads
            return attempt, start, ""
        start = max(start, chunks[0].start)
        text = "".join(chunk.text for chunk in chunks)[start - chunks[0].start :][:limit]
        return attempt, start, text

    # -- what workers report ------------------------------------------------------------------

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        with self._writes.begin() as session:
            self._locked(session, job_id).result = result

    def add_metrics(self, job_id: str, points: Iterable[dict[str, Any]]) -> int:
        """Store metric points ``{step, epoch, name, value}``; a point reported again (a resumed
        attempt repeats the steps after its checkpoint) replaces the earlier one. A NaN value is
        stored as NULL (SQLite cannot keep NaN); infinities as they are."""
        now = utcnow()
        # one row per (name, step), the last reported winning: PostgreSQL refuses to upsert the
        # same row twice in one statement (a resumed run's metrics.jsonl repeats steps)
        rows = list({
            (point["name"], point["step"]): {
                "job_id": job_id, "recorded_at": now, **point,
                "value": None if math.isnan(point["value"]) else point["value"],
            }
            for point in points
        }.values())  # fmt: skip
        if not rows:
            return 0
        self.get_job(job_id)
        insert = self._insert()(MetricPoint)
        statement = insert.on_conflict_do_update(
            index_elements=["job_id", "name", "step"],
            set_={"value": insert.excluded.value, "epoch": insert.excluded.epoch,
                  "recorded_at": insert.excluded.recorded_at},
        )  # fmt: skip
        # the rows as parameters of one statement (SQLAlchemy sends them in batches), not a
        # statement of 10,000 VALUES compiled anew for every report: 20x faster
        with self._writes.begin() as session:
            session.execute(statement, rows)
        return len(rows)

    def list_metrics(
        self, job_id: str, name: str | None = None, after_step: int | None = None
    ) -> list[Row]:
        """The job's points (``step``, ``epoch``, ``name``, ``value``; NaN is None) by step and
        name, as plain rows: a 100,000-point history is read in a tenth of the ORM's time."""
        self.get_job(job_id)
        points = MetricPoint.__table__.c
        query = select(points.step, points.epoch, points.name, points.value).where(
            points.job_id == job_id
        )
        if name:
            query = query.where(points.name == name)
        if after_step is not None:
            query = query.where(points.step > after_step)
        with self._reads_engine.connect() as connection:
            return list(connection.execute(query.order_by(points.step, points.name)))

    def progress(self, jobs: Sequence[JobRecord]) -> dict[str, dict[str, Any]]:
        """What a jobs table shows of each of ``jobs``: ``step`` (of its newest loss point),
        ``loss`` (that point's value, when finite), ``total_steps`` (its newest), ``steps_per_s``
        (a running job's pace over the last tenth of its steps, from the times the service
        received them, when those steps belong to the running attempt) and ``best`` (the
        evaluation of its checkpoints with the highest top-1: ``{top1, protocol, dataset,
        checkpoint}``). A key is absent when nothing says it.

        Every point is found by one step down the ``(job_id, name, step)`` index, so the cost is
        the page's, not the histories': two statements for the page, and one per running job."""
        ids = [job.id for job in jobs]
        out: dict[str, dict[str, Any]] = {job_id: {} for job_id in ids}
        if not ids:
            return out
        points, jobs_table = MetricPoint.__table__.c, Job.__table__.c

        def newest(name: str, column):
            """``column`` of the job's newest point of ``name`` (correlated with its row)."""
            query = select(column).where(points.job_id == jobs_table.id, points.name == name)
            return query.order_by(points.step.desc()).limit(1).scalar_subquery()

        latest = select(
            jobs_table.id, newest("loss", points.step), newest("loss", points.value),
            newest("loss", points.recorded_at), newest("total_steps", points.value),
        ).where(jobs_table.id.in_(ids))  # fmt: skip
        scores = select(jobs_table.source_job_id, jobs_table.kind, jobs_table.config,
                        jobs_table.result).where(
            jobs_table.source_job_id.in_(ids), jobs_table.status == "succeeded"
        )  # fmt: skip
        started = {
            job.id: job.attempts[-1].started_at
            for job in jobs
            if job.status == "running" and job.attempts and job.attempts[-1].started_at
        }
        with self._reads_engine.connect() as connection:
            for job_id, step, loss, received, total in connection.execute(latest):
                progress = out[job_id]
                if step is not None:
                    progress["step"] = step
                if loss is not None and math.isfinite(loss):
                    progress["loss"] = loss
                if total is not None and math.isfinite(total):
                    progress["total_steps"] = int(total)
                if job_id in started and step:
                    probe = select(points.step, points.recorded_at).where(
                        points.job_id == job_id, points.name == "loss",
                        points.step <= step - max(step // 10, 1),
                    ).order_by(points.step.desc()).limit(1)  # fmt: skip
                    earlier = connection.execute(probe).first()
                    if earlier is not None and earlier.recorded_at >= started[job_id]:
                        seconds = (received - earlier.recorded_at).total_seconds()
                        if seconds > 0:
                            progress["steps_per_s"] = (step - earlier.step) / seconds
            for source, kind, config, result in connection.execute(scores):
                top1 = (result or {}).get("top1")
                best = out[source].get("best")
                if isinstance(top1, int | float) and (best is None or top1 > best["top1"]):
                    out[source]["best"] = {
                        "top1": top1, "protocol": result.get("protocol", kind),
                        "dataset": (config.get("dataset") or {}).get("name"),
                        "checkpoint": config.get("checkpoint"),
                    }  # fmt: skip
        return out

    def add_checkpoint(
        self, job_id: str, *, name: str, step: int, epoch: int, path: str,
        metrics: dict[str, Any], keep: int | None = None,
    ) -> Checkpoint:  # fmt: skip
        """Record a checkpoint; with ``keep``, older ones beyond the newest ``keep`` are marked
        unavailable (Ray Train deletes them)."""
        self.get_job(job_id)
        values = {"step": step, "epoch": epoch, "path": path, "metrics": json_safe(metrics),
                  "available": True}  # fmt: skip
        insert = self._insert()(Checkpoint).values(
            job_id=job_id, name=name, created_at=utcnow(), **values
        )
        with self._writes.begin() as session:
            session.execute(
                insert.on_conflict_do_update(index_elements=["job_id", "name"], set_=values)
            )
            if keep is not None:
                newest = select(Checkpoint.id).where(Checkpoint.job_id == job_id)
                newest = newest.order_by(Checkpoint.step.desc()).limit(keep)
                session.execute(
                    update(Checkpoint)
                    .where(
                        Checkpoint.job_id == job_id, Checkpoint.id.not_in(newest.scalar_subquery())
                    )
                    .values(available=False)
                )
        return self.checkpoint(job_id, name)

    def checkpoint(self, job_id: str, name: str) -> Checkpoint:
        """The checkpoint ``name`` of a job, or its newest available one for ``latest``."""
        query = select(Checkpoint).where(Checkpoint.job_id == job_id)
        if name == "latest":
            query = query.where(Checkpoint.available).order_by(Checkpoint.step.desc()).limit(1)
        else:
            query = query.where(Checkpoint.name == name)
        with self._reads() as session:
            found = session.scalars(query).first()
        if found is None:
            raise NotFound(f"job {job_id!r} has no checkpoint {name!r}")
        return found

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        self.get_job(job_id)
        query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
        with self._reads() as session:
            return list(session.scalars(query))

    def put_artifact(self, job_id: str, name: str, content_type: str, data: bytes) -> None:
        self.get_job(job_id)
        with self._writes.begin() as session:
            session.merge(Artifact(job_id=job_id, name=name, content_type=content_type, data=data))

    def list_artifacts(self, job_id: str) -> list[tuple[str, str, int, datetime]]:
        """``(name, content type, size in bytes, created)`` of a job's artifacts."""
        self.get_job(job_id)
        query = (
            select(
                Artifact.name,
                Artifact.content_type,
                func.length(Artifact.data),
                Artifact.created_at,
            )
            .where(Artifact.job_id == job_id)
            .order_by(Artifact.name)
        )
        with self._reads() as session:
            return [tuple(row) for row in session.execute(query)]

    def artifact(self, job_id: str, name: str) -> Artifact:
        with self._reads() as session:
            found = session.get(Artifact, (job_id, name))
        if found is None:
            raise NotFound(f"job {job_id!r} has no artifact {name!r}")
        return found

    def ping(self) -> None:
        with self._reads() as session:
            session.execute(select(1))
