"""The client's models cannot drift from the API: compared with the live /openapi.json.

Each model of `agentexec_client` names the component schema it mirrors (`SCHEMA`); its
fields, which of them are required and which may be null must be the schema's; its
enums and the query parameters its listings send must be the document's. The
event payloads are not in the document; they are compared with the server's one
definition of them (`PAYLOADS`). The comparison is shown to catch a field added to the
API but not to the client, on a changed copy of the document.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any

import httpx
import pytest
from agentexec_client import (
    Agent,
    AgentCreate,
    AgentPage,
    AgentUpdate,
    BulkResult,
    BulkSkip,
    CompletedEvent,
    CompletedPayload,
    DeliveryPage,
    ErrorCode,
    Event,
    Execution,
    ExecutionCreate,
    ExecutionPage,
    ExecutionParameters,
    ExecutionState,
    FieldError,
    History,
    HistoryItem,
    OnConflict,
    PipelineStep,
    Problem,
    Progress,
    ProgressEvent,
    ProgressPayload,
    Schedule,
    ScheduleCreate,
    SchedulePage,
    ScheduleUpdate,
    SimulateOptions,
    StateChangedEvent,
    StateChangedPayload,
    Usage,
    UsageGroup,
    UsageItem,
    UsageReport,
    WaitingReason,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookDelivery,
    WebhookPage,
    WebhookUpdate,
    __version__,
)
from agentexec_client import _calls as calls
from agentexec_client import webhooks as webhook_calls
from agentexec_client.tools import RequiresActionPayload, ToolOutputs, ToolSecret
from pydantic import BaseModel

from app.events import COMPLETED, PROGRESS, REQUIRES_ACTION, STATE_CHANGED
from app.execution.event_emitter import PAYLOADS

ANSWERS: list[type[BaseModel]] = [
    Agent,
    AgentPage,
    Execution,
    ExecutionPage,
    Progress,
    Usage,
    HistoryItem,
    History,
    UsageItem,
    UsageReport,
    BulkResult,
    BulkSkip,
    Event,
    StateChangedEvent,
    ProgressEvent,
    CompletedEvent,
    FieldError,
    Problem,
    Schedule,
    SchedulePage,
    Webhook,
    WebhookCreated,
    WebhookPage,
    WebhookDelivery,
    DeliveryPage,
    ToolSecret,
]
REQUESTS: list[type[BaseModel]] = [
    AgentCreate,
    AgentUpdate,
    ExecutionCreate,
    ExecutionParameters,
    PipelineStep,
    SimulateOptions,
    ScheduleCreate,
    ScheduleUpdate,
    WebhookCreate,
    WebhookUpdate,
    ToolOutputs,
]
# Every /v1 route, with the schema of its success answer and of its body, as the client reads and sends them.
ROUTES: dict[tuple[str, str], tuple[str | None, str | None]] = {
    ("get", "/v1/agents"): ("AgentPage", None),
    ("post", "/v1/agents"): ("AgentOut", "AgentCreateBody"),
    ("get", "/v1/agents/{agent_id}"): ("AgentOut", None),
    ("patch", "/v1/agents/{agent_id}"): ("AgentOut", "AgentUpdateBody"),
    ("delete", "/v1/agents/{agent_id}"): (None, None),
    ("get", "/v1/executions"): ("ExecutionPage", None),
    ("post", "/v1/executions"): ("ExecutionOut", "ExecutionCreateBody"),
    ("get", "/v1/executions/{execution_id}"): ("ExecutionOut", None),
    ("delete", "/v1/executions/{execution_id}"): (None, None),
    ("get", "/v1/executions/{execution_id}/history"): ("HistoryOut", None),
    ("get", "/v1/executions/{execution_id}/events"): ("EventsOut", None),
    ("get", "/v1/usage"): ("UsageOut", None),
    ("post", "/v1/executions/bulk/cancel"): ("BulkResult", "BulkActionBody"),
    ("post", "/v1/executions/bulk/retry"): ("BulkResult", "BulkActionBody"),
    ("get", "/v1/schedules"): ("SchedulePage", None),
    ("post", "/v1/schedules"): ("ScheduleOut", "ScheduleCreateBody"),
    ("get", "/v1/schedules/{schedule_id}"): ("ScheduleOut", None),
    ("patch", "/v1/schedules/{schedule_id}"): ("ScheduleOut", "ScheduleUpdateBody"),
    ("delete", "/v1/schedules/{schedule_id}"): (None, None),
    ("get", "/v1/webhooks"): ("WebhookPage", None),
    ("post", "/v1/webhooks"): ("WebhookCreated", "WebhookCreateBody"),
    ("get", "/v1/webhooks/{webhook_id}"): ("WebhookOut", None),
    ("patch", "/v1/webhooks/{webhook_id}"): ("WebhookOut", "WebhookUpdateBody"),
    ("delete", "/v1/webhooks/{webhook_id}"): (None, None),
    ("get", "/v1/webhooks/{webhook_id}/deliveries"): ("DeliveryPage", None),
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): ("DeliveryOut", None),
    ("post", "/v1/executions/{execution_id}/input"): ("ExecutionOut", "ToolOutputsBody"),
    ("post", "/v1/tools/secret"): ("ToolSecretOut", None),
} | {
    ("post", f"/v1/executions/{{execution_id}}/{a}"): ("ExecutionOut", "control")
    for a in (
        "start",
        "cancel",
        "pause",
        "resume",
        "retry",
    )
}
# The enums of the document, each with the client's own.
ENUMS: dict[str, list[str]] = {
    "ExecutionState": [s.value for s in ExecutionState],
    "ErrorCode": [c.value for c in ErrorCode],
    "OnConflict": [c.value for c in OnConflict],
    "WaitingReason": [r.value for r in WaitingReason],
}
# The query parameters the client's listings send (paging included).
QUERIES: dict[str, set[str]] = {
    "/v1/executions": {"page", "page_size", *calls.filters_of(None, None, None, None, None)},
    "/v1/agents": {"page", "page_size"},
    "/v1/schedules": set(calls.schedule_page(1, 1).params or {}),
    "/v1/webhooks": set(webhook_calls.page_call(1, 1).params or {}),
    "/v1/webhooks/{webhook_id}/deliveries": set(webhook_calls.deliveries_call("x", 1, 1).params or {}),
    "/v1/usage": set(calls.usage("agent", None, None, None).params or {}),
    "/v1/executions/{execution_id}/history": set(calls.history("x", 1).params or {}),
    "/v1/executions/{execution_id}/events": set(calls.events_page("x", 0, 1).params or {}),
}
PAYLOAD_MODELS = {
    STATE_CHANGED: StateChangedPayload,
    PROGRESS: ProgressPayload,
    COMPLETED: CompletedPayload,
    REQUIRES_ACTION: RequiresActionPayload,
}


def _nullable(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is None or annotation is type(None)


def _schema_nullable(prop: dict[str, Any]) -> bool:
    return any(option.get("type") == "null" for option in prop.get("anyOf", []))


def drift(doc: dict[str, Any]) -> list[str]:
    """Every difference between the client's models and the document (empty: none)."""
    schemas = doc["components"]["schemas"]
    found: list[str] = []
    for model in ANSWERS + REQUESTS:
        name = model.SCHEMA  # type: ignore[attr-defined]
        schema = schemas.get(name)
        if schema is None:
            found.append(f"{name} (of {model.__name__}) is not in the API")
            continue
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        fields = model.model_fields
        found += [
            f"{name}.{f} is in the API, not in {model.__name__}" for f in sorted(set(props) - set(fields))
        ]
        found += [
            f"{model.__name__}.{f} is not in the API's {name}" for f in sorted(set(fields) - set(props))
        ]
        for field in sorted(set(props) & set(fields)):
            if fields[field].is_required() != (field in required):
                found.append(f"{model.__name__}.{field}: required differs from {name}")
            if model in ANSWERS and _nullable(fields[field].annotation) != _schema_nullable(props[field]):
                found.append(f"{model.__name__}.{field}: nullable differs from {name}")
    for enum_name, ours in ENUMS.items():
        theirs = schemas.get(enum_name, {}).get("enum", [])
        if theirs != ours:
            found.append(f"{enum_name} {ours} != the API's {theirs}")
    if set(schemas.get("EventsOut", {}).get("properties", {})) != {"items"}:
        found.append("EventsOut is no longer {items}")
    found += _route_drift(doc)
    found += _query_drift(doc)
    return found


def _ref(content: dict[str, Any] | None) -> str | None:
    schema = ((content or {}).get("application/json") or {}).get("schema") or {}
    ref = schema.get("$ref")
    if ref:
        return str(ref).rsplit("/", 1)[-1]
    return "control" if set(schema.get("properties", {})) == {"reason"} else None


def _route_drift(doc: dict[str, Any]) -> list[str]:
    routes = {
        (method, path): operation
        for path, operations in doc["paths"].items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
    }
    found = [
        f"{m.upper()} {p} is in the API, not in the client" for m, p in sorted(set(routes) - set(ROUTES))
    ]
    found += [f"{m.upper()} {p} is no longer in the API" for m, p in sorted(set(ROUTES) - set(routes))]
    for key in sorted(set(routes) & set(ROUTES)):
        answer, body = ROUTES[key]
        ok = [r for code, r in routes[key]["responses"].items() if code.startswith("2")]
        if {_ref(r.get("content")) for r in ok} != {answer}:
            found.append(f"{key[0].upper()} {key[1]} answers another schema than {answer}")
        if _ref((routes[key].get("requestBody") or {}).get("content")) != body:
            found.append(f"{key[0].upper()} {key[1]} takes another body than {body}")
    return found


def _query_drift(doc: dict[str, Any]) -> list[str]:
    """The query parameters the client sends, and the group_by values it knows, against the API's."""
    found = []
    for path, ours in QUERIES.items():
        params = doc["paths"].get(path, {}).get("get", {}).get("parameters", [])
        theirs = {p["name"] for p in params if p.get("in") == "query"}
        if theirs != ours:
            found.append(f"GET {path} takes {sorted(theirs)}, the client sends {sorted(ours)}")
    group_by = next(
        (
            p["schema"]
            for p in doc["paths"].get("/v1/usage", {}).get("get", {}).get("parameters", [])
            if p["name"] == "group_by"
        ),
        {},
    )
    if group_by.get("enum") != list(typing.get_args(UsageGroup)):
        found.append(f"UsageGroup {list(typing.get_args(UsageGroup))} != the API's {group_by.get('enum')}")
    return found


@pytest.fixture(scope="module")
def openapi(api_server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{api_server.url}/openapi.json", timeout=10)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def test_the_client_models_match_the_live_openapi_document(openapi: dict[str, Any]) -> None:
    assert drift(openapi) == []


def test_a_field_added_to_the_api_but_not_to_the_client_is_caught(openapi: dict[str, Any]) -> None:
    changed = copy.deepcopy(openapi)
    changed["components"]["schemas"]["ExecutionOut"]["properties"]["snoozed_until"] = {"type": "string"}
    assert drift(changed) == ["ExecutionOut.snoozed_until is in the API, not in Execution"]
    changed["components"]["schemas"]["AgentOut"]["required"].remove("model")
    changed["components"]["schemas"]["ExecutionState"]["enum"].append("SNOOZED")
    changed["paths"]["/v1/executions/{execution_id}/snooze"] = {"post": {"responses": {}}}
    changed["components"]["schemas"]["ErrorCode"]["enum"].append("snoozed_too_long")
    changed["paths"]["/v1/usage"]["get"]["parameters"].append({"name": "queue", "in": "query"})
    assert set(drift(changed)) == {
        "ExecutionOut.snoozed_until is in the API, not in Execution",
        "Agent.model: required differs from AgentOut",
        f"ExecutionState {[s.value for s in ExecutionState]} != the API's "
        f"{[*[s.value for s in ExecutionState], 'SNOOZED']}",
        "POST /v1/executions/{execution_id}/snooze is in the API, not in the client",
        f"ErrorCode {[c.value for c in ErrorCode]} != the API's "
        f"{[*[c.value for c in ErrorCode], 'snoozed_too_long']}",
        "GET /v1/usage takes ['agent_id', 'created_after', 'created_before', 'group_by', 'queue'], "
        "the client sends ['agent_id', 'created_after', 'created_before', 'group_by']",
    }


def test_the_event_payload_models_match_the_servers_payload_definitions() -> None:
    assert set(PAYLOAD_MODELS) == set(PAYLOADS)
    for event_type, model in PAYLOAD_MODELS.items():
        assert set(model.model_fields) == set(PAYLOADS[event_type]), event_type


def test_the_client_version_is_the_api_version(openapi: dict[str, Any]) -> None:
    assert __version__ == openapi["info"]["version"]
