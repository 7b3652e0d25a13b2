"""ExecutionTaskRunner: claims an attempt, runs its model calls, and ends it in the right state.

Every write of a run is fenced by its attempt number, so a worker that lost its lease
(the reaper re-queued the execution) can never change the execution again. Pipeline
steps are checkpointed in `context.steps.<name>` as they finish; a later attempt skips
them. Between steps and between streamed chunks the run checks for cancel, pause and
its deadline. A PostgreSQL outage (a restart, a failover) is waited out: each database
call of a run is retried with backoff for up to `db_retry_seconds`, after which the run
gives up without writing and the reaper takes over once the database is back.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError

from app.commands import MODEL_GENERATE, CommandBus, ModelRequest
from app.config import Settings
from app.errors import (
    AgentNotFoundError,
    DatabaseUnavailableError,
    ExecutionInterrupted,
    ExecutionNotFoundError,
    InvalidExecutionStateError,
    InvalidProgressError,
    ModelOrchestrationError,
)
from app.execution.control import CANCEL, LOST, PAUSE, TIMEOUT, ControlHub, RunControl
from app.execution.progress_tracker import ExecutionProgressTracker
from app.execution.repository import ExecutionRepository
from app.execution.state_manager import ExecutionStateManager
from app.models import Execution
from app.schemas import ExecutionProgressUpdate, ExecutionState

log = structlog.get_logger(__name__)
S = ExecutionState
_PLACEHOLDER = re.compile(r"\{(input|steps\.[A-Za-z0-9_.-]+)\}")
T = TypeVar("T")
_DB_DOWN = (DatabaseUnavailableError, OperationalError, InterfaceError)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0, ceiling)


def render_prompt(template: str, task_input: str, step_outputs: dict[str, str]) -> str:
    """Fill {input} and {steps.<name>} of earlier steps; unknown names stay as written."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "input":
            return task_input
        return step_outputs.get(key[len("steps.") :], match.group(0))

    return _PLACEHOLDER.sub(sub, template)


class ExecutionTaskRunner:
    """Handles the execution of tasks, communicating with model services."""

    # How long one database call of a run waits out an unavailable PostgreSQL.
    db_retry_seconds = 120.0
    db_retry_max_delay = 2.0

    def __init__(
        self,
        repository: ExecutionRepository,
        state_manager: ExecutionStateManager,
        progress_tracker: ExecutionProgressTracker,
        command_bus: CommandBus,
        settings: Settings,
        control_hub: ControlHub | None = None,
    ):
        self.repository = repository
        self.state_manager = state_manager
        self.progress_tracker = progress_tracker
        self.command_bus = command_bus
        self.settings = settings
        self.control_hub = control_hub

    # ------------------------------------------------------------------ entry

    def run(self, execution_id: uuid.UUID, attempt: int, worker: str = "local") -> str:
        """Claim (QUEUED -> RUNNING at this attempt) and run; 'skipped' when the claim fails."""
        try:
            execution = self._db(
                "claim",
                execution_id,
                lambda: self.state_manager.change_state(
                    execution_id,
                    S.RUNNING,
                    f"claimed by {worker}",
                    expected_state=S.QUEUED,
                    expected_attempt=attempt,
                    values={"worker": worker},
                ),
            )
        except (InvalidExecutionStateError, ExecutionNotFoundError) as exc:
            log.info("claim refused; nothing to run", execution_id=str(execution_id), attempt=attempt,
                     why=str(exc))
            return "skipped"
        control = RunControl(execution_id, attempt, execution.timeout_seconds)
        if self.control_hub is not None:
            self.control_hub.register(control)
        try:
            return self.execute_task(execution, control)
        finally:
            if self.control_hub is not None:
                self.control_hub.unregister(control)

    def execute_task(self, execution: Execution, control: RunControl | None = None) -> str:
        """Run a claimed execution to its end state; returns that state's name."""
        control = control or RunControl(execution.id, execution.attempt, execution.timeout_seconds)
        bound = log.bind(execution_id=str(execution.id), attempt=execution.attempt,
                         agent_id=str(execution.agent_id))
        structlog.contextvars.bind_contextvars(agent_id=str(execution.agent_id))  # the worker clears it
        try:
            task_input = self.prepare_task_input(execution)
            task_type = execution.parameters.get("type", "standard")
            if task_type == "pipeline":
                raw = self.execute_pipeline_task(execution, task_input, control)
            else:
                raw = self.execute_standard_task(execution, task_input, control)
            result = self.process_results(raw)
            return self._finish(execution, S.COMPLETED, "completed", result=result)
        except ExecutionInterrupted as stop:
            return self._stop(execution, stop.kind)
        except InvalidExecutionStateError:
            return self._stop(execution, self._stop_kind_from_db(execution))
        except _DB_DOWN:
            # Still down after db_retry_seconds: write nothing; once PostgreSQL is back the
            # reaper finds the stale heartbeat and re-queues (or fails) the execution.
            bound.error("database unavailable for too long; leaving the execution to the reaper")
            return "lost"
        except AgentNotFoundError as exc:
            bound.warning("agent not found")
            return self._finish(execution, S.FAILED, "agent not found", error=str(exc))
        except ModelOrchestrationError as exc:
            return self._on_model_error(execution, exc)
        except Exception as exc:  # a bug or an unexpected failure must still end the run
            bound.exception("execution failed unexpectedly")
            return self._finish(
                execution, S.FAILED, "internal error", error=f"internal error: {type(exc).__name__}: {exc}"
            )

    # ------------------------------------------------------------ the task

    def prepare_task_input(self, execution: Execution) -> dict[str, Any]:
        """The agent and the inputs of the task; raises AgentNotFoundError."""
        agent = self._db("get_agent", execution.id, lambda: self.repository.get_agent(execution.agent_id))
        if agent is None:
            raise AgentNotFoundError(execution.agent_id)
        params = execution.parameters or {}
        steps = params.get("steps") or [{"name": "generate", "prompt": "{input}"}]
        self._progress(execution, 100 / (len(steps) + 2), "Prepare input")
        return {
            "input": str(params.get("input", "")),
            "steps": steps,
            "system_prompt": agent.system_prompt or "",
            "model": agent.model,
            "provider": (agent.parameters or {}).get("provider"),
            "agent_parameters": agent.parameters or {},
            "simulate": params.get("simulate") or {},
        }

    def execute_standard_task(
        self, execution: Execution, task_input: dict[str, Any], control: RunControl
    ) -> dict[str, Any]:
        """One model call: the agent's system prompt and the execution's input."""
        control.check()
        self._progress(execution, 200 / 3, "Generate")
        response = self.call_model_service(execution, task_input | {"prompt": task_input["input"]}, control)
        return {"steps": None, "responses": [response]}

    def execute_pipeline_task(
        self, execution: Execution, task_input: dict[str, Any], control: RunControl
    ) -> dict[str, Any]:
        """Each step a model call; finished steps (checkpoints) are skipped and reused."""
        steps = task_input["steps"]
        total = len(steps) + 2
        done: dict[str, Any] = dict((execution.context or {}).get("steps") or {})
        outputs = {name: cp["output"] for name, cp in done.items() if "output" in cp}
        for index, step in enumerate(steps, start=1):
            name = step["name"]
            if name in done:
                continue
            control.check()
            self._progress(execution, 100 * (index + 1) / total, f"Step {name}")
            prompt = render_prompt(step["prompt"], task_input["input"], outputs)
            response = self.call_model_service(execution, task_input | {"prompt": prompt}, control)
            done[name] = {
                "output": response["output"],
                "usage": response["usage"],
                "model": response.get("model"),
                "finish_reason": response.get("finish_reason"),
                "attempt": execution.attempt,
                "finished_at": datetime.now(UTC).isoformat(),
            }
            outputs[name] = response["output"]
            saved = self._db("save_checkpoint", execution.id, lambda: self.repository.save_checkpoint(
                execution.id, execution.attempt, {"steps": done}))
            if not saved:
                raise ExecutionInterrupted(self._stop_kind_from_db(execution))
        control.check()
        return {"steps": [(s["name"], done[s["name"]]) for s in steps], "responses": None}

    def call_model_service(
        self, execution: Execution, task_input: dict[str, Any], control: RunControl | None = None
    ) -> dict[str, Any]:
        """One `model.generate` through the CommandBus; raises ModelOrchestrationError."""
        request = ModelRequest(
            prompt=task_input["prompt"],
            system_prompt=task_input.get("system_prompt", ""),
            model=task_input.get("model", "simulated-1"),
            provider=task_input.get("provider"),
            parameters=task_input.get("agent_parameters", {}),
            simulate=task_input.get("simulate", {}),
            attempt=execution.attempt,
        )
        if control is not None:
            request.checkpoint = control.check_urgent
            request.sleep = control.sleep
        response: dict[str, Any] = self.command_bus.dispatch(MODEL_GENERATE, request)
        return response

    def process_results(self, result: dict[str, Any]) -> dict[str, Any]:
        """The stored result: output, per-step outputs, summed usage, model, finish_reason."""
        if result.get("steps"):
            steps = result["steps"]
            responses = [cp for _, cp in steps]
        else:
            steps = None
            responses = result["responses"]
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for r in responses:
            for key in usage:
                usage[key] += int((r.get("usage") or {}).get(key, 0))
        last = responses[-1]
        processed: dict[str, Any] = {
            "output": last["output"],
            "usage": usage | {"model_calls": len(responses)},
            "model": last.get("model"),
            "finish_reason": last.get("finish_reason"),
        }
        if steps is not None:
            processed["steps"] = {name: cp["output"] for name, cp in steps}
        return processed

    # ------------------------------------------------------------ endings

    def _db(self, operation: str, execution_id: uuid.UUID, call: Callable[[], T]) -> T:
        """`call()`, retried with capped exponential backoff while PostgreSQL is unavailable.

        Every write of a run is idempotent or guarded (attempt fencing, expected state), so
        repeating one whose commit went through but whose answer was lost is harmless.
        """
        give_up = time.monotonic() + self.db_retry_seconds
        delay = 0.1
        while True:
            try:
                return call()
            except _DB_DOWN:
                if time.monotonic() + delay > give_up:
                    raise
                log.warning("database unavailable; retrying", operation=operation,
                            execution_id=str(execution_id), retry_in=round(delay, 2))
                time.sleep(delay)
                delay = min(delay * 2, self.db_retry_max_delay)

    def _change_state(self, execution: Execution, target: ExecutionState, reason: str,
                      **kwargs: Any) -> Execution:
        return self._db(f"change_state:{target.value}", execution.id, lambda: self.state_manager.change_state(
            execution.id, target, reason, **kwargs))

    def _progress(self, execution: Execution, percentage: float, message: str) -> None:
        try:
            self._db("update_progress", execution.id, lambda: self.progress_tracker.update_progress(
                execution.id,
                ExecutionProgressUpdate(percentage=round(percentage, 2), message=message),
                expected_attempt=execution.attempt,
            ))
        except InvalidProgressError:
            log.debug("progress already further", execution_id=str(execution.id))

    def _finish(
        self,
        execution: Execution,
        target: ExecutionState,
        reason: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> str:
        values: dict[str, Any] = {"result": result, "error_message": error}
        progress_event = False
        if target is S.COMPLETED:
            values |= {"progress_percentage": 100, "progress_message": "Finalize"}
            progress_event = True
        for _ in range(3):
            try:
                self._change_state(
                    execution,
                    target,
                    reason,
                    expected_attempt=execution.attempt,
                    values=values,
                    progress_event=progress_event,
                )
                return target.value
            except InvalidExecutionStateError as exc:
                current = S(exc.current_state)
                if current is S.CANCELLING:
                    return self._stop(execution, CANCEL)
                if current not in (S.RUNNING, S.PAUSING):
                    log.info("run ended by someone else", execution_id=str(execution.id),
                             state=current.value)
                    return current.value
        return S(execution.state).value

    def _stop(self, execution: Execution, kind: str) -> str:
        if kind == LOST:
            log.warning("lease lost; stopping without writing", execution_id=str(execution.id))
            return "lost"
        target, source = {
            CANCEL: (S.CANCELLED, S.CANCELLING),
            PAUSE: (S.PAUSED, S.PAUSING),
            TIMEOUT: (S.TIMED_OUT, None),
        }[kind]
        try:
            self._change_state(
                execution,
                target,
                {CANCEL: "cancelled while running", PAUSE: "paused at a step boundary",
                 TIMEOUT: f"timed out after {execution.timeout_seconds} s"}[kind],
                expected_state=source,
                expected_attempt=execution.attempt,
                values={"error_message": "timed out"} if kind == TIMEOUT else None,
            )
            return target.value
        except InvalidExecutionStateError as exc:
            current = S(exc.current_state)
            if kind == TIMEOUT and current is S.CANCELLING:
                return self._stop(execution, CANCEL)
            if kind == PAUSE and current is S.CANCELLING:
                return self._stop(execution, CANCEL)
            log.info("stop not applied", execution_id=str(execution.id), kind=kind, state=current.value)
            return current.value

    def _stop_kind_from_db(self, execution: Execution) -> str:
        row = self._db("get_by_id", execution.id, lambda: self.repository.get_by_id(execution.id))
        if row is None or row.attempt != execution.attempt:
            return LOST
        return {S.CANCELLING.value: CANCEL, S.PAUSING.value: PAUSE}.get(row.state, LOST)

    def _on_model_error(self, execution: Execution, exc: ModelOrchestrationError) -> str:
        retries_used = execution.attempt - 1
        if exc.retryable and retries_used < execution.max_retries:
            delay = backoff_delay(
                execution.attempt, self.settings.retry_backoff_base, self.settings.retry_backoff_cap
            )
            try:
                self._change_state(
                    execution,
                    S.QUEUED,
                    f"retry {retries_used + 1} of {execution.max_retries} in {delay:.2f} s: {exc}",
                    expected_state=S.RUNNING,
                    expected_attempt=execution.attempt,
                    delay=delay,
                )
                return S.QUEUED.value
            except InvalidExecutionStateError as state_exc:
                current = S(state_exc.current_state)
                if current is S.CANCELLING:
                    return self._stop(execution, CANCEL)
                if current is not S.PAUSING:
                    return current.value
        return self._finish(execution, S.FAILED, "model call failed", error=str(exc))
