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

import functools
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
from app.deltas import DeltaLog
from app.errors import (
    AgentExecError,
    AgentNotFoundError,
    BudgetExceededError,
    DatabaseUnavailableError,
    ExecutionInterrupted,
    ExecutionNotFoundError,
    InvalidExecutionStateError,
    InvalidProgressError,
    ModelOrchestrationError,
    NoSlotError,
)
from app.execution.agent_loop import run_agent_task
from app.execution.control import ControlHub, RunControl
from app.execution.output import OutputStream
from app.execution.policy import (
    Action,
    Outcome,
    Stop,
    TokenBudget,
    backoff_delay,
    end_write,
    estimate_tokens,
    may_retry,
    model_error_code,
    stop_for_state,
    summarize,
    when_refused,
)
from app.execution.progress_tracker import ExecutionProgressTracker
from app.execution.repository import ExecutionRepository
from app.execution.state_manager import ExecutionStateManager
from app.models import Execution
from app.schemas import ErrorCode, ExecutionProgressUpdate, ExecutionState

log = structlog.get_logger(__name__)
S = ExecutionState
E = ErrorCode
_PLACEHOLDER = re.compile(r"\{(input|steps\.[A-Za-z0-9_.-]+)\}")
T = TypeVar("T")
_DB_DOWN = (DatabaseUnavailableError, OperationalError, InterfaceError)


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
    # How long a claim waits for PostgreSQL before the message is given back.
    claim_db_seconds = 2.0

    def __init__(
        self,
        repository: ExecutionRepository,
        state_manager: ExecutionStateManager,
        progress_tracker: ExecutionProgressTracker,
        command_bus: CommandBus,
        settings: Settings,
        control_hub: ControlHub | None = None,
        deltas: DeltaLog | None = None,
    ):
        self.repository = repository
        self.state_manager = state_manager
        self.progress_tracker = progress_tracker
        self.command_bus = command_bus
        self.settings = settings
        self.control_hub = control_hub
        self.deltas = deltas

    # ------------------------------------------------------------------ entry

    def run(self, execution_id: uuid.UUID, attempt: int, worker: str = "local") -> Outcome:
        """Claim (QUEUED -> RUNNING at this attempt) and run; SKIPPED when the claim fails.

        The claim also writes the first progress report and reads the agent: one statement.
        """
        try:
            execution, agent = self._db(
                "claim",
                execution_id,
                lambda: self.state_manager.claim(execution_id, attempt, worker, "Prepare input"),
                patience=self.claim_db_seconds,
            )
        except _DB_DOWN:
            # Nothing is held yet: rather than wait, give the message back for a worker that can
            # reach PostgreSQL (the worker also stops taking messages until it answers again).
            log.warning(
                "database unreachable at claim; giving the message back", execution_id=str(execution_id)
            )
            return Outcome.DATABASE_UNAVAILABLE
        except NoSlotError:
            return Outcome.WAITING
        except (InvalidExecutionStateError, ExecutionNotFoundError) as exc:
            log.info(
                "claim refused; nothing to run", execution_id=str(execution_id), attempt=attempt, why=str(exc)
            )
            return Outcome.SKIPPED
        control = RunControl(execution_id, attempt, execution.timeout_seconds)
        if self.control_hub is not None:
            self.control_hub.register(control)
        try:
            return self.execute_task(execution, control, agent=agent or {})
        finally:
            if self.control_hub is not None:
                self.control_hub.unregister(control)

    def execute_task(
        self, execution: Execution, control: RunControl | None = None, *, agent: dict[str, Any] | None = None
    ) -> Outcome:
        """Run a claimed execution to its end state. `agent` is the agent's settings when the
        claim read them ({} when the agent is gone); None reads them now."""
        control = control or RunControl(execution.id, execution.attempt, execution.timeout_seconds)
        bound = log.bind(
            execution_id=str(execution.id), attempt=execution.attempt, agent_id=str(execution.agent_id)
        )
        structlog.contextvars.bind_contextvars(agent_id=str(execution.agent_id))  # the worker clears it
        output = OutputStream(self.deltas, execution, functools.partial(self._newest_event, execution.id))
        try:
            task_input = self.prepare_task_input(execution, agent) | {"output": output}
            budget = task_input["budget"]
            if reason := budget.refusal(0):  # spent before this run started
                raise BudgetExceededError(reason)
            task_type = execution.parameters.get("type", "standard")
            if task_type == "agent":  # its own loop (app/execution/agent_loop.py) writes its end
                return run_agent_task(self, execution, task_input, control, agent)
            if task_type == "pipeline":
                raw = self.execute_pipeline_task(execution, task_input, control)
                usage = {}  # each step's usage was recorded with its checkpoint
            else:
                raw = self.execute_standard_task(execution, task_input, control)
                usage = dict(raw["responses"][0]["usage"])
            return self._end(
                execution,
                Stop.FINISH,
                S.COMPLETED,
                "completed",
                result=self.process_results(raw),
                usage=usage | {"ended": 1},
            )
        except ExecutionInterrupted as stop:
            return self._end(execution, Stop(stop.kind))
        except InvalidExecutionStateError:  # a progress report or checkpoint was refused
            return self._end(execution, self._stop_from_db(execution))
        except _DB_DOWN:
            # Still down after db_retry_seconds: write nothing; once PostgreSQL is back the
            # reaper finds the stale heartbeat and re-queues (or fails) the execution.
            bound.error("database unavailable for too long; leaving the execution to the reaper")
            return Outcome.LOST
        except BudgetExceededError as exc:
            bound.info("token budget exceeded", why=str(exc))
            return self._end(
                execution,
                Stop.FINISH,
                S.FAILED,
                "token budget exceeded",
                error=str(exc),
                code=E.BUDGET_EXCEEDED,
                usage={"ended": 1},
            )
        except AgentNotFoundError as exc:
            bound.warning("agent not found")
            return self._end(
                execution, Stop.FINISH, S.FAILED, "agent not found", error=str(exc), code=E.AGENT_NOT_FOUND
            )
        except ModelOrchestrationError as exc:
            if exc.retryable and may_retry(execution.attempt, execution.max_retries):
                return self._end(execution, Stop.RETRY, error=str(exc))
            return self._end(
                execution,
                Stop.FINISH,
                S.FAILED,
                "model call failed",
                error=str(exc),
                code=model_error_code(exc.retryable, execution.max_retries),
            )
        except Exception as exc:  # a bug or an unexpected failure must still end the run
            bound.exception("execution failed unexpectedly")
            return self._end(
                execution,
                Stop.FINISH,
                S.FAILED,
                "internal error",
                error=f"internal error: {type(exc).__name__}: {exc}",
                code=E.INTERNAL_ERROR,
            )
        finally:
            output.close()

    # ------------------------------------------------------------ the task

    def prepare_task_input(self, execution: Execution, agent: dict[str, Any] | None = None) -> dict[str, Any]:
        """The agent and the inputs of the task; raises AgentNotFoundError.

        Without `agent` (the claim did not read it) the agent is read and the input step
        reported now.
        """
        params = execution.parameters or {}
        steps = params.get("steps") or [{"name": "generate", "prompt": "{input}"}]
        if agent is None:
            row = self._db("get_agent", execution.id, lambda: self.repository.get_agent(execution.agent_id))
            agent = (
                {}
                if row is None
                else {"model": row.model, "system_prompt": row.system_prompt, "parameters": row.parameters}
            )
            if agent:
                self._progress(execution, 100 / (len(steps) + 2), "Prepare input")
        if not agent:
            raise AgentNotFoundError(execution.agent_id)
        agent_parameters = agent.get("parameters") or {}
        budget = TokenBudget(
            max_tokens=execution.max_tokens,
            used=int(execution.total_tokens or 0),
            daily=agent.get("daily_token_budget"),
            used_today=int(agent.get("tokens_today") or 0),
        )
        return {
            "budget": budget,
            "input": str(params.get("input", "")),
            "steps": steps,
            "system_prompt": agent.get("system_prompt") or "",
            "model": agent["model"],
            "provider": agent_parameters.get("provider"),
            "agent_parameters": agent_parameters,
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
            response = self.call_model_service(
                execution, task_input | {"prompt": prompt, "step": name}, control
            )
            done[name] = {
                "output": response["output"],
                "usage": response["usage"],
                "model": response.get("model"),
                "finish_reason": response.get("finish_reason"),
                "attempt": execution.attempt,
                "finished_at": datetime.now(UTC).isoformat(),
            }
            outputs[name] = response["output"]
            saved = self._db(
                "save_checkpoint",
                execution.id,
                functools.partial(
                    self.repository.save_checkpoint,
                    execution.id,
                    execution.attempt,
                    {"steps": done},
                    usage=response["usage"],
                ),
            )
            if not saved:
                raise ExecutionInterrupted(self._stop_from_db(execution).value)
        control.check()
        return {"steps": [(s["name"], done[s["name"]]) for s in steps], "responses": None}

    def call_model_service(
        self, execution: Execution, task_input: dict[str, Any], control: RunControl | None = None
    ) -> dict[str, Any]:
        """One `model.generate` through the CommandBus; raises ModelOrchestrationError, and
        BudgetExceededError instead of making a call the token budget cannot pay for."""
        budget: TokenBudget | None = task_input.get("budget")
        if budget is not None and (
            reason := budget.refusal(
                estimate_tokens(task_input.get("system_prompt", ""), task_input["prompt"])
            )
        ):
            raise BudgetExceededError(reason)
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
        output: OutputStream | None = task_input.get("output")
        if output is None:
            response: dict[str, Any] = self.command_bus.dispatch(MODEL_GENERATE, request)
        else:
            deltas = output.call(task_input.get("step"))
            request.on_delta = deltas.write
            try:
                response = self.command_bus.dispatch(MODEL_GENERATE, request)
                text = response.get("output")
                if not deltas.received and isinstance(text, str):
                    deltas.write(text)  # a provider that does not stream: its output as one delta
            finally:
                deltas.flush()  # before the output is stored: its deltas come first
        if budget is not None:
            budget.add(int((response.get("usage") or {}).get("total_tokens", 0)))
        return response

    def _newest_event(self, execution_id: uuid.UUID, known: int) -> int:
        """The id of the newest logged event of the execution (at least `known`): the deltas
        of the next model call are placed after it. Costs one indexed read per model call."""
        try:
            while events := self.repository.get_events(execution_id, known, 1000):
                known = events[-1].id
                if len(events) < 1000:
                    break
        except (AgentExecError, *_DB_DOWN) as exc:
            log.info("newest event unknown; deltas placed after the last known", error=str(exc))
        return known

    def process_results(self, result: dict[str, Any]) -> dict[str, Any]:
        """The stored result: output, per-step outputs, summed usage, model, finish_reason."""
        return summarize(result)

    # ------------------------------------------------------------ endings

    def _db(
        self, operation: str, execution_id: uuid.UUID, call: Callable[[], T], patience: float | None = None
    ) -> T:
        """`call()`, retried with capped exponential backoff while PostgreSQL is unavailable,
        for `patience` seconds (default `db_retry_seconds`).

        Every write of a run is idempotent or guarded (attempt fencing, expected state), so
        repeating one whose commit went through but whose answer was lost is harmless.
        """
        give_up = time.monotonic() + (self.db_retry_seconds if patience is None else patience)
        delay = 0.1
        while True:
            try:
                return call()
            except _DB_DOWN:
                if time.monotonic() + delay > give_up:
                    raise
                log.warning(
                    "database unavailable; retrying",
                    operation=operation,
                    execution_id=str(execution_id),
                    retry_in=round(delay, 2),
                )
                time.sleep(delay)
                delay = min(delay * 2, self.db_retry_max_delay)

    def _progress(self, execution: Execution, percentage: float, message: str) -> None:
        try:
            self._db(
                "update_progress",
                execution.id,
                lambda: self.progress_tracker.update_progress(
                    execution.id,
                    ExecutionProgressUpdate(percentage=round(percentage, 2), message=message),
                    expected_attempt=execution.attempt,
                ),
            )
        except InvalidProgressError:
            log.debug("progress already further", execution_id=str(execution.id))

    def _end(
        self,
        execution: Execution,
        stop: Stop,
        target: ExecutionState | None = None,
        reason: str = "",
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        code: ErrorCode | None = None,
        usage: dict[str, int] | None = None,
    ) -> Outcome:
        """Write the end of the run for `stop`; when refused, do what `policy.REFUSED` says.

        `code` is the error_code of a FINISH into FAILED (the other ends have their own)."""
        if stop is Stop.LOST:
            log.warning("lease lost; stopping without writing", execution_id=str(execution.id))
            return Outcome.LOST
        try:
            return Outcome.of(self._write_end(execution, stop, target, reason, result, error, code, usage))
        except InvalidExecutionStateError as exc:
            found = S(exc.current_state)
            action = when_refused(stop, found)
        if action is Action.CANCEL:
            return self._end(execution, Stop.CANCEL)
        if action is Action.PAUSE:
            return self._end(execution, Stop.PAUSE)
        if action is Action.FAIL:
            return self._end(
                execution, Stop.FINISH, S.FAILED, "model call failed", error=error, code=E.MODEL_ERROR
            )
        log.info(
            "run ended by someone else", execution_id=str(execution.id), stop=stop.value, state=found.value
        )
        return Outcome.ENDED_ELSEWHERE

    def _write_end(
        self,
        execution: Execution,
        stop: Stop,
        target: ExecutionState | None,
        reason: str,
        result: dict[str, Any] | None,
        error: str | None,
        code: ErrorCode | None,
        usage: dict[str, int] | None = None,
    ) -> ExecutionState:
        attempt = execution.attempt
        if stop is Stop.FINISH:
            assert target is not None
            values: dict[str, Any] = {"result": result, "error_message": error}
            if target is S.FAILED:
                values["error_code"] = (code or E.MODEL_ERROR).value
            if target is S.COMPLETED:
                values |= {"progress_percentage": 100, "progress_message": "Finalize"}
            self._change_state(
                execution,
                target,
                reason,
                expected_attempt=attempt,
                values=values,
                progress_event=target is S.COMPLETED,
                usage=usage,
            )
            return target
        if stop is Stop.RETRY:
            s = self.settings
            delay = backoff_delay(attempt, s.retry_backoff_base, s.retry_backoff_cap)
            self._change_state(
                execution,
                S.QUEUED,
                f"retry {attempt} of {execution.max_retries} in {delay:.2f} s: {error}",
                expected_state=S.RUNNING,
                expected_attempt=attempt,
                delay=delay,
            )
            return S.QUEUED
        write = end_write(stop, execution.timeout_seconds)
        self._change_state(
            execution,
            write.target,
            write.reason,
            expected_state=write.expected,
            expected_attempt=attempt,
            values={"error_message": "timed out"} if stop is Stop.TIMEOUT else None,
        )
        return write.target

    def _change_state(
        self, execution: Execution, target: ExecutionState, reason: str, **kwargs: Any
    ) -> Execution:
        return self._db(
            f"change_state:{target.value}",
            execution.id,
            lambda: self.state_manager.change_state(execution.id, target, reason, **kwargs),
        )

    def _stop_from_db(self, execution: Execution) -> Stop:
        row = self._db("get_by_id", execution.id, lambda: self.repository.get_by_id(execution.id))
        if row is None:
            return Stop.LOST
        return stop_for_state(S(row.state), row.attempt == execution.attempt)
