"""Agents with tools (#14): answer a waiting execution's tool calls; the tenant's tool secret."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from api.deps import answer, service, tenant
from api.models import ExecutionOut, ExecutionPath, IdempotencyHeader
from api.openapi import BODY_ERRORS, problems
from api.security import SECURITY
from app.schemas import ToolOutputsSubmit

bp = APIBlueprint(
    "agent_tools",
    __name__,
    url_prefix="/v1",
    abp_security=SECURITY,
    abp_tags=[Tag(name="tools", description="Agents that call tools and wait for their outputs")],
)


class ToolOutputsBody(ToolOutputsSubmit):
    """The body of POST /v1/executions/{execution_id}/input."""


class ToolSecretOut(BaseModel):
    """The tenant's tool-signing secret: shown once, here; a second call replaces it."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}
    )

    secret: str = Field(
        description="Standard Webhooks secret (`whsec_` + base64) that signs every http tool call"
    )


@bp.post(
    "/executions/<execution_id>/input",
    operation_id="submitToolOutputs",
    responses={200: ExecutionOut, **problems(404, 409, *BODY_ERRORS)},
)
def submit_tool_outputs(path: ExecutionPath, header: IdempotencyHeader, body: ToolOutputsBody) -> Response:
    """Answer the tool calls an execution in REQUIRES_ACTION waits for: 200 with it QUEUED (a new
    attempt that goes on with the outputs in its conversation).

    `tool_outputs` must name each pending call (`required_action.tool_calls[].id`) exactly once,
    else 422; each `output` is a string of at most 64 KB. 409 when it is not waiting, or when
    this input was accepted already. With an `Idempotency-Key`, the same key and body again
    answer 200 with the execution as it is now (the same key with another body: 409).
    """
    row = service().submit_tool_outputs(
        path.execution_id, body, tenant=tenant(), idempotency_key=header.idempotency_key
    )
    return answer(ExecutionOut.of(row))


@bp.post("/tools/secret", operation_id="rotateToolSecret", responses={201: ToolSecretOut, **problems()})
def rotate_tool_secret() -> Response:
    """Make the tenant's tool-signing secret and show it, once: the worker signs each http tool
    call with it (Standard Webhooks headers `webhook-id`, `webhook-timestamp`,
    `webhook-signature`). A second call replaces it at once (a rotation): calls from then on
    are signed with the new one only. Until the first call, http tool calls go unsigned.
    """
    return answer(ToolSecretOut(secret=service().rotate_tool_secret(tenant=tenant())), 201)
