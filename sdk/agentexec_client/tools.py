"""`client.tools` of both clients: answer an agent's tool calls; the tenant's tool secret.

An `agent` execution whose model asks for `client` tools waits REQUIRES_ACTION with
`execution.required_action["tool_calls"]`; `client.tools.respond(execution, {call_id: text})`
answers them and the execution goes on (QUEUED, a new attempt).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from agentexec_client._core import Call, path_id
from agentexec_client.models import Execution, Model, RequestModel

if TYPE_CHECKING:
    from agentexec_client.async_client import AsyncClient
    from agentexec_client.client import Client


class ToolOutputs(RequestModel):
    """The body of POST /v1/executions/{id}/input."""

    SCHEMA = "ToolOutputsBody"
    tool_outputs: list[dict[str, str]]
    """[{tool_call_id, output}], one per pending call (`output` at most 64 KB)."""


class ToolSecret(Model):
    """The tenant's tool-signing secret, shown once (`whsec_...`, Standard Webhooks)."""

    SCHEMA = "ToolSecretOut"
    secret: str


class RequiresActionPayload(Model):
    """`agent.execution.requires_action`: the tool calls an execution now waits for."""

    execution_id: uuid.UUID
    agent_id: uuid.UUID
    task_id: uuid.UUID | None
    required_action: dict[str, Any]


def pending_calls(execution: Execution) -> list[dict[str, Any]]:
    """The tool calls a REQUIRES_ACTION execution waits for ([] when it waits for nothing)."""
    return list((execution.required_action or {}).get("tool_calls") or [])


def _execution(response: httpx.Response) -> Execution:
    return Execution.model_validate(response.json())


def respond_call(
    execution: Any, outputs: Mapping[str, str], idempotency_key: str | None = None
) -> Call[Execution]:
    """POST /v1/executions/{id}/input; with a key (a new one when none is given) it may be retried."""
    body = ToolOutputs(tool_outputs=[{"tool_call_id": k, "output": v} for k, v in outputs.items()]).body()
    key = idempotency_key or f"agentexec-client-{uuid.uuid4()}"
    path = f"/v1/executions/{path_id(execution)}/input"
    return Call("POST", path, _execution, json=body, headers={"Idempotency-Key": key}, reconnectable=True)


def secret_call() -> Call[ToolSecret]:
    """POST /v1/tools/secret."""
    return Call("POST", "/v1/tools/secret", lambda r: ToolSecret.model_validate(r.json()))


class Tools:
    """`client.tools`: answer tool calls, make or rotate the tool-signing secret."""

    def __init__(self, client: Client):
        self._c = client

    def respond(
        self, execution: Any, outputs: Mapping[str, str], *, idempotency_key: str | None = None
    ) -> Execution:
        """Answer every pending tool call ({tool_call_id: output}); the execution, now QUEUED."""
        return self._c.send(respond_call(execution, outputs, idempotency_key))

    def rotate_secret(self) -> str:
        """A new tool-signing secret (shown once); the earlier one stops signing at once."""
        return self._c.send(secret_call()).secret


class AsyncTools:
    """`client.tools` of the AsyncClient."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def respond(
        self, execution: Any, outputs: Mapping[str, str], *, idempotency_key: str | None = None
    ) -> Execution:
        """Answer every pending tool call ({tool_call_id: output}); the execution, now QUEUED."""
        return await self._c.send(respond_call(execution, outputs, idempotency_key))

    async def rotate_secret(self) -> str:
        """A new tool-signing secret (shown once); the earlier one stops signing at once."""
        return (await self._c.send(secret_call())).secret
