"""The reaper's scans and the scrape-time figures: reads over many executions at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import func, select, text, update

from app.execution.repository.base import RepositoryBase
from app.execution.repository.stats import STATS_QUERIES
from app.models import Execution
from app.schemas import FINISHED_STATES, HELD_BY_WORKER, ExecutionState

REAPER_LOCK_KEY = 0x61676578  # "agex"


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


class OperationRows(RepositoryBase):
    """Reads and small writes for recovery and metrics."""

    @contextmanager
    def reaper_lock(self) -> Iterator[bool]:
        """Hold the cluster-wide reaper lock for the block; False when another reaper has it."""
        with self._work(None, "reaper_lock", autocommit=False) as work:
            try:
                yield bool(work.session.scalar(select(func.pg_try_advisory_xact_lock(REAPER_LOCK_KEY))))
            finally:
                work.session.rollback()  # releases the advisory lock

    def stale_held(self, lease_timeout: float, limit: int) -> Sequence[Any]:
        """RUNNING, PAUSING and CANCELLING executions whose heartbeat is older than the lease.

        Right after a PostgreSQL restart every heartbeat looks stale (no worker could write
        one while it was down), so nothing counts as stale within one lease of the start.
        """
        edge = func.now() - _seconds(lease_timeout)
        stmt = (
            select(
                Execution.id,
                Execution.state,
                Execution.attempt,
                Execution.max_retries,
                (Execution.deadline_at < func.now()).label("past_deadline"),
            )
            .where(
                Execution.state.in_([s.value for s in HELD_BY_WORKER]),
                Execution.heartbeat_at < edge,
                func.pg_postmaster_start_time() < edge,
            )
            .limit(limit)
        )
        with self._work(None, "stale_held") as work:
            return work.session.execute(stmt).all()

    def requeue_unclaimed(self, redeliver_after: float, limit: int) -> Sequence[Any]:
        """QUEUED executions no worker claimed for `redeliver_after` s: their queued_at is reset
        (so the next pass leaves them alone) and their (id, attempt, queue, priority) returned."""
        queued = ExecutionState.QUEUED.value
        stale = (
            select(Execution.id)
            .where(
                Execution.state == queued,
                Execution.queued_at < func.now() - _seconds(redeliver_after),
                Execution.waiting_reason.is_(None),  # no message on purpose: it waits for a slot
            )
            .limit(limit)
            .scalar_subquery()
        )
        stmt = (
            update(Execution)
            .where(Execution.id.in_(stale), Execution.state == queued)
            .values(queued_at=func.now())
            .returning(Execution.id, Execution.attempt, Execution.queue, Execution.priority)
        )
        with self._work(None, "requeue_unclaimed") as work:
            return work.session.execute(stmt).all()

    def purge_finished(self, older_than_seconds: float, batch: int = 1000, *, dry_run: bool = False) -> int:
        """Delete executions that finished more than `older_than_seconds` ago, with their history
        and events (ON DELETE CASCADE), `batch` executions per transaction; how many went.

        Active executions are never touched (only COMPLETED, FAILED, TIMED_OUT, CANCELLED with
        a completed_at). Rows another transaction holds are skipped, left for the next run.
        `dry_run` counts what would go and deletes nothing.
        """
        finished = [s.value for s in FINISHED_STATES]
        where = (
            "state = ANY(%(f)s::text[]) AND completed_at IS NOT NULL"
            " AND completed_at < now() - make_interval(secs => %(age)s::float8)"
        )
        params = {"f": finished, "age": float(older_than_seconds), "n": int(batch)}
        if dry_run:
            with self._work(None, "purge_count") as work:
                sql = f"SELECT count(*) FROM executions WHERE {where}"
                return int(work.connection.exec_driver_sql(sql, params).scalar() or 0)
        delete = (
            f"DELETE FROM executions WHERE id IN (SELECT id FROM executions WHERE {where}"
            " LIMIT %(n)s FOR UPDATE SKIP LOCKED)"
        )
        total = 0
        while True:
            with self._work(None, "purge_finished", autocommit=False) as work:
                deleted = work.connection.exec_driver_sql(delete, params).rowcount
            total += deleted
            if deleted < batch:
                return total

    def record_retention_run(self, deleted: int) -> None:
        """Note a finished retention run and add what it deleted to the total."""
        sql = (
            "INSERT INTO retention_status (id, last_run_at, last_deleted, deleted, runs) "
            "VALUES (1, now(), %(n)s, %(n)s, 1) ON CONFLICT (id) DO UPDATE SET last_run_at = now(), "
            "last_deleted = EXCLUDED.last_deleted, deleted = retention_status.deleted + EXCLUDED.deleted, "
            "runs = retention_status.runs + 1"
        )
        with self._work(None, "record_retention_run") as work:
            work.connection.exec_driver_sql(sql, {"n": int(deleted)})

    def record_reaper_pass(self, counts: dict[str, int]) -> None:
        """Note a finished reaper pass: its time and counts, added to the totals by kind."""
        sql = (
            "INSERT INTO reaper_status (id, last_pass_at, last_counts, recovered, passes) "
            "VALUES (1, now(), %(c)s, %(c)s, 1) "
            "ON CONFLICT (id) DO UPDATE SET last_pass_at = now(), last_counts = EXCLUDED.last_counts, "
            "passes = reaper_status.passes + 1, recovered = ("
            " SELECT jsonb_object_agg(k, coalesce((reaper_status.recovered ->> k)::bigint, 0) + v::bigint)"
            " FROM jsonb_each_text(EXCLUDED.last_counts) AS t(k, v))"
        )
        with self._work(None, "record_reaper_pass") as work:
            work.connection.exec_driver_sql(sql, {"c": Jsonb(counts)})

    def record_periodic_run(self, task: str) -> None:
        """Note a finished pass of one of beat's periodic tasks (the schedule tick, the dispatcher)."""
        sql = (
            "INSERT INTO periodic_status (task, last_run_at, runs) VALUES (%(t)s, now(), 1) "
            "ON CONFLICT (task) DO UPDATE SET last_run_at = now(), runs = periodic_status.runs + 1"
        )
        with self._work(None, "record_periodic_run") as work:
            work.connection.exec_driver_sql(sql, {"t": task})

    def periodic_status(self) -> dict[str, float]:
        """Seconds since each recorded periodic task last ran, by task (absent: never ran)."""
        sql = "SELECT task, extract(epoch FROM now() - last_run_at)::float8 FROM periodic_status"
        with self._work(None, "periodic_status") as work:
            return {str(task): float(age) for task, age in work.connection.exec_driver_sql(sql)}

    def reaper_status(self) -> tuple[float, dict[str, int]] | None:
        """(seconds since the reaper's last pass, what it recovered in all), or None if it never ran."""
        sql = "SELECT extract(epoch FROM now() - last_pass_at)::float8, recovered FROM reaper_status"
        with self._work(None, "reaper_status") as work:
            row = work.connection.exec_driver_sql(sql).first()
        return None if row is None else (float(row[0]), dict(row[1]))

    def executions_by_state(self) -> dict[str, int]:
        """How many executions are in each state (states with none are left out)."""
        with self._work(None, "executions_by_state") as work:
            rows = work.connection.exec_driver_sql("SELECT state, count(*) FROM executions GROUP BY state")
            return {state: int(n) for state, n in rows}

    def execution_stats(self) -> dict[str, Sequence[Any]]:
        """The rows of every scrape-time figure (see app.metrics)."""
        with self._work(None, "execution_stats") as work:
            return {name: work.session.execute(text(sql)).all() for name, sql in STATS_QUERIES.items()}

    def ping(self) -> None:
        """Raise DatabaseError unless PostgreSQL answers."""
        with self._work(None, "ping") as work:
            work.session.execute(text("SELECT 1"))
