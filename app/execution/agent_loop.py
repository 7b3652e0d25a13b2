"""The `agent` task: model turns with tools until a final answer, checkpointed turn by turn.

A turn is one model call with the conversation so far and the agent's tools. The model
answers, or asks for tool calls: `http` tools are called by the worker (each result
checkpointed as soon as it arrives), `client` tools make the execution wait REQUIRES_ACTION
(no worker, no slot) until POST /v1/executions/{id}/input adds their outputs and queues a new
attempt. The conversation lives in `context.agent`; every finished model call and tool call
is in it before anything else happens, so a resumed, retried or recovered attempt goes on
from there and never repeats one. Past `max_turns` model calls the execution FAILS with
max_turns_exceeded.
"""

from __future__ import annotations

import copy
import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from app.commands import MODEL_GENERATE, ModelRequest
from app.errors import BudgetExceededError, ExecutionInterrupted, InvalidExecutionStateError
from app.execution.control import RunControl
from app.execution.output import OutputStream
from app.execution.policy import Outcome, Stop, estimate_tokens
from app.execution.tools import call_http_tool
from app.models import Execution
from app.schemas import MAX_TURNS_DEFAULT, ErrorCode, ExecutionState

if TYPE_CHECKING:
    from app.execution.task_runner import ExecutionTaskRunner

log = structlog.get_logger(__name__)
S = ExecutionState
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def new_conversation(task_input: str) -> dict[str, Any]:
    """The checkpoint of an agent task that has made no model call yet."""
    return {
        "messages": [{"role": "user", "content": task_input}],
        "turns": 0,
        "usage": dict.fromkeys(_USAGE_KEYS, 0),
    }


def unanswered_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of the last model turn that have no result yet, in the order asked."""
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if last is None:
        return []
    answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    return [c for c in last.get("tool_calls") or [] if c["id"] not in answered]


def turn_progress(turn: int, max_turns: int) -> float:
    """Turn `turn` (1-based) of at most `max_turns`: after the input step's third, below 100."""
    return 100 / 3 + (200 / 3) * (turn - 0.5) / max_turns


class AgentLoop:
    """Runs one attempt of an `agent` task for the task runner (its writes, its end)."""

    def __init__(
        self,
        runner: ExecutionTaskRunner,
        execution: Execution,
        task_input: dict[str, Any],
        control: RunControl,
        agent: dict[str, Any],
    ):
        self.runner = runner
        self.execution = execution
        self.task_input = task_input
        self.control = control
        self.tools: dict[str, dict[str, Any]] = {t["name"]: t for t in agent.get("tools") or []}
        self.max_turns = int((execution.parameters or {}).get("max_turns") or MAX_TURNS_DEFAULT)
        saved = (execution.context or {}).get("agent")
        self.state: dict[str, Any] = copy.deepcopy(saved) if saved else new_conversation(task_input["input"])
        self.secret: str | None = None
        self.secret_read = False

    def run(self) -> Outcome:
        """Turns until a final answer, a wait for client tools, or max_turns."""
        messages: list[dict[str, Any]] = self.state["messages"]
        while True:
            self.control.check()
            pending = unanswered_calls(messages)
            if pending:
                waiting = self._call_tools(pending)
                if waiting:
                    return self._require_action(waiting)
                continue
            last = messages[-1]
            if last.get("role") == "assistant":  # no tool calls asked: the final answer
                return self._finish(last)
            if self.state["turns"] >= self.max_turns:
                return self.runner._end(
                    self.execution,
                    Stop.FINISH,
                    S.FAILED,
                    "max turns exceeded",
                    error=f"the model asked for tools in each of its {self.max_turns} turns (max_turns)",
                    code=ErrorCode.MAX_TURNS_EXCEEDED,
                    usage={"ended": 1},
                )
            self._model_turn(messages)

    # ---------------------------------------------------------------- turns

    def _model_turn(self, messages: list[dict[str, Any]]) -> None:
        turn = self.state["turns"] + 1
        runner, execution, task_input = self.runner, self.execution, self.task_input
        runner._progress(execution, turn_progress(turn, self.max_turns), f"Turn {turn} of {self.max_turns}")
        budget = task_input["budget"]
        text = " ".join(str(m.get("content") or "") for m in messages)
        if reason := budget.refusal(estimate_tokens(task_input.get("system_prompt", ""), text)):
            raise BudgetExceededError(reason)
        request = ModelRequest(
            prompt=str(messages[0].get("content") or ""),
            system_prompt=task_input.get("system_prompt", ""),
            model=task_input.get("model", "simulated-1"),
            provider=task_input.get("provider"),
            parameters=task_input.get("agent_parameters", {}),
            simulate=task_input.get("simulate", {}),
            attempt=execution.attempt,
            messages=copy.deepcopy(messages),
            tools=[
                {"name": t["name"], "description": t.get("description", ""), "parameters": t["parameters"]}
                for t in self.tools.values()
            ],
        )
        request.checkpoint = self.control.check_urgent
        request.sleep = self.control.sleep
        response = self._dispatch(request, task_input.get("output"), f"turn-{turn}")
        usage = {k: int((response.get("usage") or {}).get(k, 0)) for k in _USAGE_KEYS}
        budget.add(usage["total_tokens"])
        messages.append(
            {
                "role": "assistant",
                "content": response.get("output") or "",
                "tool_calls": list(response.get("tool_calls") or []),
            }
        )
        self.state["turns"] = turn
        self.state["model"] = response.get("model")
        self.state["finish_reason"] = response.get("finish_reason")
        self.state["usage"] = {k: int(self.state["usage"].get(k, 0)) + usage[k] for k in _USAGE_KEYS}
        self._checkpoint(usage)

    def _dispatch(self, request: ModelRequest, output: OutputStream | None, step: str) -> dict[str, Any]:
        """The model call; its text streams as output deltas of step `turn-<i>` (as a pipeline's)."""
        if output is None:
            answer: dict[str, Any] = self.runner.command_bus.dispatch(MODEL_GENERATE, request)
            return answer
        deltas = output.call(step)
        request.on_delta = deltas.write
        try:
            answer = self.runner.command_bus.dispatch(MODEL_GENERATE, request)
            text = answer.get("output")
            if not deltas.received and isinstance(text, str) and text:
                deltas.write(text)  # a provider that does not stream: its output as one delta
        finally:
            deltas.flush()  # before the turn is checkpointed: its deltas come first
        return answer

    def _call_tools(self, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Call the pending http tools (each result checkpointed at once); the client calls left."""
        waiting = []
        for call in pending:
            tool = self.tools.get(call["name"])
            if tool is not None and tool.get("kind", "client") == "client":
                waiting.append(call)
                continue
            self.control.check()
            if tool is None:
                output = f"error: the agent has no tool named {call['name']!r}"
            else:
                output = self._call_http(tool, call)
            self.state["messages"].append(
                {"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": output}
            )
            self._checkpoint(None)
        return waiting

    def _call_http(self, tool: dict[str, Any], call: dict[str, Any]) -> str:
        execution = self.execution
        if not self.secret_read:
            self.secret = self.runner._db(
                "get_tool_secret",
                execution.id,
                lambda: self.runner.repository.get_tool_secret(execution.tenant),
            )
            self.secret_read = True
        key = f"{execution.id}:{self.state['turns']}:{call['id']}"
        result = call_http_tool(
            tool["url"],
            {
                "execution_id": str(execution.id),
                "tool_call_id": call["id"],
                "name": call["name"],
                "arguments": call.get("arguments") or {},
            },
            idempotency_key=key,
            secret=self.secret,
            settings=self.runner.settings,
            sleep=self.control.sleep,
        )
        log.info(
            "http tool called",
            execution_id=str(execution.id),
            tool=call["name"],
            error=result.error,
            attempts=result.attempts,
        )
        return result.output

    # ---------------------------------------------------------------- writes

    def _checkpoint(self, usage: dict[str, int] | None) -> None:
        runner, execution = self.runner, self.execution
        saved = runner._db(
            "save_checkpoint",
            execution.id,
            functools.partial(
                runner.repository.save_checkpoint,
                execution.id,
                execution.attempt,
                {"agent": self.state},
                usage=usage,
            ),
        )
        if not saved:
            raise ExecutionInterrupted(runner._stop_from_db(execution).value)

    def _require_action(self, calls: list[dict[str, Any]]) -> Outcome:
        """RUNNING (or PAUSING) -> REQUIRES_ACTION: the slot and the worker are given back."""
        execution = self.execution
        seconds = execution.action_timeout_seconds or self.runner.settings.action_timeout_seconds
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        required = {
            "type": "submit_tool_outputs",
            "tool_calls": [
                {"id": c["id"], "name": c["name"], "arguments": c.get("arguments") or {}} for c in calls
            ],
            "expires_at": expires.isoformat().replace("+00:00", "Z"),  # as the API writes times
        }
        try:
            self.runner._change_state(
                execution,
                S.REQUIRES_ACTION,
                f"waiting for {len(calls)} tool output(s)",
                expected_attempt=execution.attempt,
                from_states=frozenset({S.RUNNING, S.PAUSING}),
                values={"required_action": required, "action_expires_at": expires},
            )
        except InvalidExecutionStateError as exc:
            if S(exc.current_state) is S.CANCELLING:
                return self.runner._end(execution, Stop.CANCEL)
            log.info(
                "wait for tool outputs refused", execution_id=str(execution.id), state=str(exc.current_state)
            )
            return Outcome.ENDED_ELSEWHERE
        return Outcome.REQUIRES_ACTION

    def _finish(self, last: dict[str, Any]) -> Outcome:
        usage = dict(self.state["usage"]) | {"model_calls": self.state["turns"]}
        result = {
            "output": last.get("content") or "",
            "usage": usage,
            "model": self.state.get("model"),
            "finish_reason": self.state.get("finish_reason") or "stop",
            "turns": self.state["turns"],
        }
        return self.runner._end(
            self.execution, Stop.FINISH, S.COMPLETED, "completed", result=result, usage={"ended": 1}
        )


def run_agent_task(
    runner: ExecutionTaskRunner,
    execution: Execution,
    task_input: dict[str, Any],
    control: RunControl,
    agent: dict[str, Any] | None,
) -> Outcome:
    """The task runner's hook for `type: agent` (the agent's tools read when the claim did not)."""
    if agent is None or "tools" not in agent:
        row = runner._db("get_agent", execution.id, lambda: runner.repository.get_agent(execution.agent_id))
        agent = (agent or {}) | {"tools": [] if row is None else (row.tools or [])}
    return AgentLoop(runner, execution, task_input, control, agent).run()
