"""The reaper: PostgreSQL is the truth, so stale executions are found there and recovered.

One reaper runs at a time across the cluster (a transaction-level advisory lock). It
re-queues RUNNING executions whose worker stopped heartbeating (or fails them when
their retries are spent), times out those past their deadline, finishes stale
CANCELLING and PAUSING ones, and re-sends QUEUED executions no worker claimed in
time (a lost message, a flushed Redis). Within one lease of a PostgreSQL restart no
heartbeat counts as stale: the workers could not write them while it was down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select, update

from app.errors import ExecutionNotFoundError, InvalidExecutionStateError
from app.models import Execution
from app.schemas import ExecutionState

if TYPE_CHECKING:
    from app.execution.service import ExecutionService

log = structlog.get_logger(__name__)
S = ExecutionState
REAPER_LOCK_KEY = 0x61676578  # "agex"
_BATCH = 500


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


class Reaper:
    """Finds stale executions in PostgreSQL and moves them on."""

    def __init__(self, service: ExecutionService):
        self.service = service
        self.settings = service.settings
        self.state_manager = service.state_manager

    def run_once(self) -> dict[str, int]:
        """One pass; returns what it did, by kind. Skips when another reaper holds the lock."""
        counts = {"requeued": 0, "failed": 0, "timed_out": 0, "cancelled": 0, "paused": 0, "redelivered": 0}
        with self.service.repository.session_factory() as lock_session:
            if not lock_session.scalar(select(func.pg_try_advisory_xact_lock(REAPER_LOCK_KEY))):
                return counts | {"skipped": 1}
            try:
                self._stale_held(lock_session, counts)
                self._unclaimed(lock_session, counts)
            finally:
                lock_session.rollback()  # releases the advisory lock
        if any(counts.values()):
            log.info("reaper pass", **counts)
        return counts

    def _stale_held(self, session: Any, counts: dict[str, int]) -> None:
        lease_edge = func.now() - _seconds(self.settings.lease_timeout)
        rows = session.execute(
            select(
                Execution.id,
                Execution.state,
                Execution.attempt,
                Execution.max_retries,
                (Execution.deadline_at < func.now()).label("past_deadline"),
            )
            .where(
                Execution.state.in_([S.RUNNING.value, S.PAUSING.value, S.CANCELLING.value]),
                Execution.heartbeat_at < lease_edge,
                # No worker could heartbeat while PostgreSQL was down: right after a restart
                # every heartbeat looks stale, so give live workers a full lease to beat again.
                func.pg_postmaster_start_time() < lease_edge,
            )
            .limit(_BATCH)
        ).all()
        for row in rows:
            state = S(row.state)
            if state is S.CANCELLING:
                self._move(row, S.CANCELLED, "worker lost while cancelling", counts, "cancelled")
            elif row.past_deadline:
                self._move(row, S.TIMED_OUT, "deadline passed and worker lost", counts, "timed_out",
                           values={"error_message": "timed out (worker lost)"})
            elif state is S.PAUSING:
                self._move(row, S.PAUSED, "worker lost while pausing", counts, "paused")
            elif row.attempt - 1 < row.max_retries:
                self._move(row, S.QUEUED, f"worker lost (no heartbeat for {self.settings.lease_timeout:g} s);"
                           " requeued", counts, "requeued")
            else:
                self._move(row, S.FAILED, "worker lost", counts, "failed",
                           values={"error_message": "worker lost and retries exhausted"})

    def _move(self, row: Any, target: S, reason: str, counts: dict[str, int], key: str,
              values: dict[str, Any] | None = None) -> None:
        try:
            self.state_manager.change_state(
                row.id, target, reason, expected_state=S(row.state), expected_attempt=row.attempt,
                values=values,
            )
            counts[key] += 1
        except (InvalidExecutionStateError, ExecutionNotFoundError):
            pass  # it moved on by itself meanwhile

    def _unclaimed(self, session: Any, counts: dict[str, int]) -> None:
        bg = self.service.background_tasks
        if bg is None:
            return
        edge = func.now() - _seconds(self.settings.redeliver_after)
        with self.service.repository.session_factory() as s:
            rows = s.execute(
                update(Execution)
                .where(
                    Execution.id.in_(
                        select(Execution.id)
                        .where(Execution.state == S.QUEUED.value, Execution.queued_at < edge)
                        .limit(_BATCH)
                        .scalar_subquery()
                    ),
                    Execution.state == S.QUEUED.value,
                )
                .values(queued_at=func.now())
                .returning(Execution.id, Execution.attempt, Execution.queue, Execution.priority)
            ).all()
            s.commit()
        for row in rows:
            try:
                bg.start_task(row.id, row.attempt, queue=row.queue, priority=row.priority)
                counts["redelivered"] += 1
            except Exception as exc:  # broker still down: the next pass tries again
                log.warning("redelivery failed", execution_id=str(row.id), error=str(exc))
                break


