"""ExecutionProgressTracker: progress of a RUNNING execution, never lower within an attempt."""

from __future__ import annotations

import uuid

from app.errors import ExecutionNotFoundError, InvalidExecutionStateError, InvalidProgressError
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.repository import ExecutionRepository
from app.models import Execution
from app.schemas import ExecutionProgressUpdate, ExecutionState


class ExecutionProgressTracker:
    """Tracks and reports execution progress."""

    def __init__(self, repository: ExecutionRepository, event_emitter: ExecutionEventEmitter):
        self.repository = repository
        self.event_emitter = event_emitter

    def update_progress(
        self,
        execution_id: uuid.UUID,
        progress_data: ExecutionProgressUpdate,
        *,
        expected_attempt: int | None = None,
    ) -> Execution:
        """Store the progress and emit `agent.execution.progress` in one transaction.

        Raises ExecutionNotFoundError; InvalidExecutionStateError when the execution is
        not RUNNING (its `current_state` tells a runner it was paused or cancelled) or
        belongs to another attempt; InvalidProgressError when the percentage would drop.
        """
        written = self.repository.record_progress(  # the UPDATE and its event: ONE statement
            execution_id,
            progress_data.percentage,
            progress_data.message,
            progress_data.context_update,
            events=[self.event_emitter.progress()],
            expected_attempt=expected_attempt,
        )
        if written.execution is None:
            self._explain_refusal(execution_id, progress_data, expected_attempt)
        assert written.execution is not None
        self.event_emitter.publish(written.events)
        return written.execution

    def _explain_refusal(
        self, execution_id: uuid.UUID, data: ExecutionProgressUpdate, expected_attempt: int | None
    ) -> None:
        row = self.repository.get_by_id(execution_id)
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        if row.state != ExecutionState.RUNNING.value:
            raise InvalidExecutionStateError(
                execution_id,
                row.state,
                ExecutionState.RUNNING,
                f"progress can only be reported while RUNNING; execution {execution_id} is {row.state}",
            )
        if expected_attempt is not None and row.attempt != expected_attempt:
            raise InvalidExecutionStateError(
                execution_id,
                row.state,
                ExecutionState.RUNNING,
                f"execution {execution_id} is at attempt {row.attempt}, not {expected_attempt}",
            )
        raise InvalidProgressError(
            f"progress of execution {execution_id} cannot go down from "
            f"{row.progress_percentage} to {data.percentage}"
        )
