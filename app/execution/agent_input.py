"""Input for an agent waiting REQUIRES_ACTION: its client tools' outputs, and the tool secret.

The outputs join the conversation (`context.agent.messages`) and the execution goes
REQUIRES_ACTION -> QUEUED with a new attempt in ONE guarded write (state and attempt), so of
two inputs racing exactly one is accepted; the other finds it QUEUED (409). An accepted
input's Idempotency-Key and body fingerprint are kept in `context.agent.answered`: the same
key with the same body again answers the execution as it is now (200), with another body 409.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from app.errors import ConflictError, ExecutionNotFoundError, InvalidExecutionStateError, UnprocessableError
from app.execution.repository import ExecutionRepository
from app.execution.state_manager import ExecutionStateManager
from app.models import Execution
from app.outbound import new_secret
from app.schemas import ExecutionState, ToolOutputsSubmit

S = ExecutionState


def input_fingerprint(body: ToolOutputsSubmit) -> str:
    """SHA-256 of the canonical JSON of an input body."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _repeat(row: Execution, key: str | None, fingerprint: str) -> bool:
    """True when this key's input was accepted already with this body; ConflictError for another body."""
    if key is None:
        return False
    for accepted in ((row.context or {}).get("agent") or {}).get("answered") or []:
        if accepted.get("key") == key:
            if accepted.get("fingerprint") != fingerprint:
                raise ConflictError(f"idempotency key {key!r} was already used with a different request body")
            return True
    return False


def submit_tool_outputs(
    repository: ExecutionRepository,
    state_manager: ExecutionStateManager,
    execution_id: uuid.UUID,
    body: ToolOutputsSubmit,
    *,
    tenant: str | None,
    idempotency_key: str | None = None,
) -> Execution:
    """Add the outputs of the pending tool calls and queue the execution (a new attempt).

    Raises ExecutionNotFoundError (also another tenant's), InvalidExecutionStateError (not
    waiting, or answered already: 409), ConflictError (a key reused with another body) and
    UnprocessableError (the ids are not exactly the pending calls': 422).
    """
    fingerprint = input_fingerprint(body)
    for _ in range(2):  # a second look when another input won the race: maybe it was ours
        row = repository.get_by_id(execution_id, tenant=tenant)
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        if _repeat(row, idempotency_key, fingerprint):
            return row
        waiting: dict[str, Any] = row.required_action or {}
        if S(row.state) is not S.REQUIRES_ACTION or not waiting:
            raise InvalidExecutionStateError(
                execution_id,
                row.state,
                S.QUEUED,
                f"execution {execution_id} is {row.state}: it waits for no input "
                "(not waiting for tool outputs, or this input was accepted already)",
            )
        calls = waiting.get("tool_calls") or []
        _check_ids(calls, body)
        outputs = {o.tool_call_id: o.output for o in body.tool_outputs}
        state = dict((row.context or {}).get("agent") or {})
        messages = list(state.get("messages") or [])
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "name": c["name"], "content": outputs[c["id"]]}
            for c in calls
        ]
        state["messages"] = messages
        if idempotency_key is not None:
            state["answered"] = [
                *(state.get("answered") or []),
                {"key": idempotency_key, "fingerprint": fingerprint},
            ]
        context = dict(row.context or {}) | {"agent": state}
        try:
            return state_manager.change_state(
                execution_id,
                S.QUEUED,
                f"{len(calls)} tool output(s) received",
                expected_state=S.REQUIRES_ACTION,
                expected_attempt=row.attempt,
                tenant=tenant,
                values={"context": context},
            )
        except InvalidExecutionStateError:
            if idempotency_key is None:
                raise
    raise InvalidExecutionStateError(execution_id, S.QUEUED, S.QUEUED, "this input was accepted already")


def _check_ids(calls: list[dict[str, Any]], body: ToolOutputsSubmit) -> None:
    pending = [c["id"] for c in calls]
    given = [o.tool_call_id for o in body.tool_outputs]
    if len(set(given)) != len(given) or set(given) != set(pending):
        raise UnprocessableError(
            "tool_outputs must answer exactly the pending tool calls, once each: "
            f"pending {sorted(pending)}, given {given}"
        )


def rotate_tool_secret(repository: ExecutionRepository, tenant: str) -> str:
    """A new tool-signing secret for the tenant, replacing any earlier one (shown once)."""
    secret = new_secret()
    repository.set_tool_secret(tenant, secret)
    return secret
