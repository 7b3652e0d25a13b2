"""The reaper: PostgreSQL is the truth, so stale executions are found there and recovered.

One reaper runs at a time across the cluster (a transaction-level advisory lock). It
re-queues RUNNING executions whose worker stopped heartbeating (or fails them when
their retries are spent), times out those past their deadline, finishes stale
CANCELLING and PAUSING ones, times out waits for tool outputs (REQUIRES_ACTION) past
their `action_expires_at`, and re-sends QUEUED executions no worker claimed in
time (a lost message, a flushed Redis). Within one lease of a PostgreSQL restart no
heartbeat counts as stale: the workers could not write them while it was down.
"""

from __future__ import annotations

from typing import Any

import structlog

from app.config import Settings
from app.errors import ExecutionNotFoundError, InvalidExecutionStateError
from app.execution.dispatch import TaskDispatcher
from app.execution.policy import may_retry
from app.execution.repository import ExecutionRepository
from app.execution.state_manager import ExecutionStateManager
from app.schemas import ErrorCode, ExecutionState

log = structlog.get_logger(__name__)
S = ExecutionState
_BATCH = 500


class Reaper:
    """Finds stale executions in PostgreSQL and moves them on."""

    def __init__(
        self,
        repository: ExecutionRepository,
        state_manager: ExecutionStateManager,
        background_tasks: TaskDispatcher | None,
        settings: Settings,
    ):
        self.repository = repository
        self.state_manager = state_manager
        self.background_tasks = background_tasks
        self.settings = settings

    def run_once(self) -> dict[str, int]:
        """One pass; returns what it did, by kind. Skips when another reaper holds the lock."""
        counts = {
            "requeued": 0,
            "failed": 0,
            "timed_out": 0,
            "cancelled": 0,
            "paused": 0,
            "redelivered": 0,
            "still_in_broker": 0,
            "woken": 0,
            "action_expired": 0,
        }
        with self.repository.reaper_lock() as held:
            if not held:
                return counts | {"skipped": 1}
            self._stale_held(counts)
            self._expired_actions(counts)
            self._unclaimed(counts)
            self._waiting_for_slots(counts)
            self._waiting_for_tasks(counts)
            self.repository.record_reaper_pass(counts)
        if any(counts.values()):
            log.info("reaper pass", **counts)
        return counts

    def _stale_held(self, counts: dict[str, int]) -> None:
        lease = self.settings.lease_timeout
        for row in self.repository.stale_held(lease, _BATCH):
            state = S(row.state)
            if state is S.CANCELLING:
                self._move(row, S.CANCELLED, "worker lost while cancelling", counts, "cancelled")
            elif row.past_deadline:
                self._move(
                    row,
                    S.TIMED_OUT,
                    "deadline passed and worker lost",
                    counts,
                    "timed_out",
                    values={"error_message": "timed out (worker lost)"},
                )
            elif state is S.PAUSING:
                self._move(row, S.PAUSED, "worker lost while pausing", counts, "paused")
            elif may_retry(row.attempt, row.max_retries):
                self._move(
                    row, S.QUEUED, f"worker lost (no heartbeat for {lease:g} s); requeued", counts, "requeued"
                )
            else:
                self._move(
                    row,
                    S.FAILED,
                    "worker lost",
                    counts,
                    "failed",
                    values={
                        "error_message": "worker lost and retries exhausted",
                        "error_code": ErrorCode.WORKER_LOST.value,
                    },
                )

    def _expired_actions(self, counts: dict[str, int]) -> None:
        """REQUIRES_ACTION past its expires_at -> TIMED_OUT (action_expired). The write is guarded
        by the state and attempt: an input that arrived meanwhile wins, and this does nothing."""
        for row in self.repository.expired_actions(_BATCH):
            try:
                self.state_manager.change_state(
                    row.id,
                    S.TIMED_OUT,
                    "no tool outputs before the wait expired",
                    expected_state=S.REQUIRES_ACTION,
                    expected_attempt=row.attempt,
                    values={
                        "error_message": "the wait for tool outputs expired",
                        "error_code": ErrorCode.ACTION_EXPIRED.value,
                    },
                )
                counts["action_expired"] += 1
            except (InvalidExecutionStateError, ExecutionNotFoundError):
                pass  # answered or cancelled meanwhile

    def _move(
        self,
        row: Any,
        target: S,
        reason: str,
        counts: dict[str, int],
        key: str,
        values: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.state_manager.change_state(
                row.id,
                target,
                reason,
                expected_state=S(row.state),
                expected_attempt=row.attempt,
                values=values,
            )
            counts[key] += 1
        except (InvalidExecutionStateError, ExecutionNotFoundError):
            pass  # it moved on by itself meanwhile

    def _waiting_for_slots(self, counts: dict[str, int]) -> None:
        """The backstop of the slot hand-over: wake as many waiting executions as slots are free
        (the run that frees a slot wakes one itself; a crash between its commit and that send,
        or a woken execution that lost the slot to a newcomer, leaves one waiting)."""
        tenant_free: dict[str, float] = {}
        for group in self.repository.waiting_groups(self.settings.tenant_max_concurrency):
            if group.tenant not in tenant_free:
                limit = group.tenant_limit
                tenant_free[group.tenant] = limit - group.tenant_held if limit and limit > 0 else float("inf")
            agent_free = (
                group.agent_limit - group.agent_held if group.agent_limit is not None else float("inf")
            )
            free = int(min(group.waiting, agent_free, tenant_free[group.tenant]))
            if free > 0:
                woken = self.state_manager.wake_waiters(group.tenant, group.agent_id, free)
                tenant_free[group.tenant] -= woken
                counts["woken"] += woken

    def _waiting_for_tasks(self, counts: dict[str, int]) -> None:
        """The backstop of the task hand-over (enqueue, interrupt): a task whose executions all
        ended or wait gets its oldest waiter sent."""
        for row in self.repository.idle_task_waiters(_BATCH):
            if self.state_manager.wake_task_waiter(row.tenant, row.task_id):
                counts["woken"] += 1

    def _unclaimed(self, counts: dict[str, int]) -> None:
        bg = self.background_tasks
        if bg is None:
            return
        waiting: dict[str, int] = {}  # queue -> messages in the broker, read once per pass
        for row in self.repository.requeue_unclaimed(self.settings.redeliver_after, _BATCH):
            try:
                if row.queue not in waiting:
                    waiting[row.queue] = bg.queue_depth(row.queue)
                if waiting[row.queue] > 0:
                    # Its message may still be waiting there (workers busy, or none reading this
                    # queue): another one would only pile up. Looked at again next time.
                    counts["still_in_broker"] += 1
                    continue
                bg.start_task(row.id, row.attempt, queue=row.queue, priority=row.priority)
                counts["redelivered"] += 1
            except Exception as exc:  # broker still down: the next pass tries again
                log.warning("redelivery failed", execution_id=str(row.id), error=str(exc))
                break
