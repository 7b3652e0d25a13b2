"""The generated OpenAPI document, the offline docs UI, and schemathesis against the app's own schema."""

from __future__ import annotations

import itertools
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.execution.transitions import as_table

ROUTES = {
    ("/v1/agents", "post"),
    ("/v1/agents", "get"),
    ("/v1/agents/{agent_id}", "get"),
    ("/v1/agents/{agent_id}", "patch"),
    ("/v1/agents/{agent_id}", "delete"),
    ("/v1/executions", "post"),
    ("/v1/executions", "get"),
    ("/v1/executions/{execution_id}", "get"),
    ("/v1/executions/{execution_id}", "delete"),
    ("/v1/executions/{execution_id}/history", "get"),
    ("/v1/executions/{execution_id}/events", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    *(
        (f"/v1/executions/{{execution_id}}/{action}", "post")
        for action in ("start", "cancel", "pause", "resume", "retry")
    ),
}


def negative_data_is_rejected(ctx, response, case):  # type: ignore[no-untyped-def]
    """schemathesis' negative_data_rejection, also accepting 413 for a body over MAX_REQUEST_BYTES."""
    return True if response.status_code == 413 else negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def test_the_openapi_document_is_3_1_covers_every_route_and_carries_the_transition_table(api):
    doc = api.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented >= ROUTES
    assert doc["x-state-transitions"] == as_table()
    running_row = "| RUNNING | CANCELLING, COMPLETED, FAILED, PAUSING, QUEUED, REQUIRES_ACTION, TIMED_OUT |"
    assert running_row in doc["info"]["description"]
    assert "| REQUIRES_ACTION | CANCELLED, QUEUED, TIMED_OUT |" in doc["info"]["description"]
    create = doc["paths"]["/v1/executions"]["post"]
    assert {p["name"] for p in create["parameters"]} == {"Idempotency-Key"}
    assert {"200", "201", "409", "413", "415", "422", "503"} <= set(create["responses"])
    assert list(create["responses"]["422"]["content"]) == ["application/problem+json"]
    assert "ExecutionOut" in doc["components"]["schemas"] and "Problem" in doc["components"]["schemas"]
    listing = {p["name"] for p in doc["paths"]["/v1/executions"]["get"]["parameters"]}
    assert listing == {
        "state",
        "agent_id",
        "task_id",
        "created_after",
        "created_before",
        "error_code",
        "page",
        "page_size",
    }
    events = doc["paths"]["/v1/executions/{execution_id}/events"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(events)


def test_the_docs_ui_is_served_with_local_assets_only(api):  # type: ignore[no-untyped-def]
    first = api.get("/docs")
    assert first.status_code in (301, 302, 308)
    page = api.get(first.headers["Location"])
    assert page.status_code == 200 and b"swagger-ui" in page.data
    html = page.get_data(as_text=True)
    assert not re.search(r"""(src|href)=["']https?://""", html), "the docs page loads internet assets"
    assets = re.findall(r"""(?:src|href)=["'](swagger/[^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert api.get(f"/docs/{asset}").status_code == 200, asset
    assert api.get("/docs/openapi.json").get_json() == api.get("/openapi.json").get_json()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(api_app, api, mode):
    # Known ids: half of the positive cases aim at an existing agent and execution instead of random ids.
    agent_id = api.post("/v1/agents", json={"name": "fuzzed"}).get_json()["id"]
    known = {
        "agent_id": agent_id,
        "execution_id": api.post(
            "/v1/executions", json={"agent_id": agent_id, "parameters": {"input": "fuzz"}, "start": False}
        ).get_json()["id"],
    }
    schema = schemathesis.openapi.from_wsgi("/openapi.json", api_app)
    checks = CHECKS + ([negative_data_is_rejected] if mode is GenerationMode.NEGATIVE else [])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= len(ROUTES)
    calls = itertools.count()

    def aim_at_known_resources(case):  # type: ignore[no-untyped-def]
        if mode is not GenerationMode.POSITIVE:
            return
        if case.path_parameters and next(calls) % 2 == 0:
            case.path_parameters = {k: known.get(k, v) for k, v in case.path_parameters.items()}
        if case.operation.label == "POST /v1/executions" and isinstance(case.body, dict):
            # An existing agent, left PENDING: fuzzed simulate knobs must not occupy the worker.
            case.body = {**case.body, "agent_id": agent_id, "start": False}

    for operation in operations:
        negatable = any((operation.path_parameters, operation.query, operation.headers, operation.body))
        if mode is GenerationMode.NEGATIVE and not negatable:
            continue  # nothing in the request can be made invalid

        @settings(
            max_examples=15,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):  # type: ignore[no-untyped-def]
            aim_at_known_resources(case)
            if case.path.endswith("/events"):
                case.headers = {**(case.headers or {}), "Accept": "application/json"}
            case.call_and_validate(checks=checks)

        try:
            check()
        except Exception as exc:
            raise AssertionError(f"{operation.label} ({mode.value}): {exc}") from exc


OPERATION_IDS = {
    ("/v1/agents", "post"): "createAgent",
    ("/v1/agents", "get"): "listAgents",
    ("/v1/agents/{agent_id}", "get"): "getAgent",
    ("/v1/agents/{agent_id}", "patch"): "updateAgent",
    ("/v1/agents/{agent_id}", "delete"): "deleteAgent",
    ("/v1/executions", "post"): "createExecution",
    ("/v1/executions", "get"): "listExecutions",
    ("/v1/executions/{execution_id}", "get"): "getExecution",
    ("/v1/executions/{execution_id}", "delete"): "deleteExecution",
    ("/v1/executions/{execution_id}/history", "get"): "getExecutionHistory",
    ("/v1/executions/{execution_id}/events", "get"): "getExecutionEvents",
    ("/v1/executions/{execution_id}/start", "post"): "startExecution",
    ("/v1/executions/{execution_id}/cancel", "post"): "cancelExecution",
    ("/v1/executions/{execution_id}/pause", "post"): "pauseExecution",
    ("/v1/executions/{execution_id}/resume", "post"): "resumeExecution",
    ("/v1/executions/{execution_id}/retry", "post"): "retryExecution",
    ("/healthz", "get"): "getHealth",
    ("/readyz", "get"): "getReadiness",
    ("/metrics", "get"): "getMetrics",
    ("/v1/usage", "get"): "getUsage",
    ("/v1/executions/bulk/cancel", "post"): "bulkCancelExecutions",
    ("/v1/executions/bulk/retry", "post"): "bulkRetryExecutions",
    ("/v1/schedules", "post"): "createSchedule",
    ("/v1/schedules", "get"): "listSchedules",
    ("/v1/schedules/{schedule_id}", "get"): "getSchedule",
    ("/v1/schedules/{schedule_id}", "patch"): "updateSchedule",
    ("/v1/schedules/{schedule_id}", "delete"): "deleteSchedule",
    ("/v1/webhooks", "post"): "createWebhook",
    ("/v1/webhooks", "get"): "listWebhooks",
    ("/v1/webhooks/{webhook_id}", "get"): "getWebhook",
    ("/v1/webhooks/{webhook_id}", "patch"): "updateWebhook",
    ("/v1/webhooks/{webhook_id}", "delete"): "deleteWebhook",
    ("/v1/webhooks/{webhook_id}/deliveries", "get"): "listWebhookDeliveries",
    ("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", "post"): "redeliverWebhookDelivery",
    ("/v1/executions/{execution_id}/input", "post"): "submitToolOutputs",
    ("/v1/tools/secret", "post"): "rotateToolSecret",
}


def test_error_code_is_an_enum_in_the_schema(api):  # type: ignore[no-untyped-def]
    doc = api.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    ref = schemas["ExecutionOut"]["properties"]["error_code"]
    name = next(o["$ref"] for o in ref["anyOf"] if "$ref" in o).rsplit("/", 1)[1]
    assert set(schemas[name]["enum"]) == {
        "model_error",
        "model_error_permanent",
        "retries_exhausted",
        "timeout",
        "worker_lost",
        "agent_not_found",
        "budget_exceeded",
        "interrupted",
        "cancelled",
        "internal_error",
        "max_turns_exceeded",
        "action_expired",
    }


def test_every_operation_has_its_short_stable_camel_case_operation_id(api):  # type: ignore[no-untyped-def]
    doc = api.get("/openapi.json").get_json()
    found = {
        (path, method): op["operationId"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert found == OPERATION_IDS
    assert len(set(found.values())) == len(found), "operationIds are not unique"
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", name) for name in found.values())


def test_each_route_lists_only_the_answers_it_can_give(api):  # type: ignore[no-untyped-def]
    doc = api.get("/openapi.json").get_json()
    responses = {
        (path, method): set(op["responses"])
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert responses[("/healthz", "get")] == {"200"}
    assert responses[("/readyz", "get")] == {"200", "500", "503"}  # open: no key, no rate limit, no input
    assert "422" not in responses[("/metrics", "get")]
    for (path, method), codes in responses.items():
        if path.startswith("/v1/"):
            assert {"401", "422", "429"} <= codes, (method, path)
        for code in codes - {"200", "201", "202", "204"}:
            content = doc["paths"][path][method]["responses"][code].get("content", {})
            assert list(content) == ["application/problem+json"], (method, path, code)
    assert "ValidationErrorModel" not in doc["components"]["schemas"]


def test_the_execution_schema_carries_celery_task_id_task_id_and_the_timeout_limit(api, settings):  # type: ignore[no-untyped-def]
    schemas = api.get("/openapi.json").get_json()["components"]["schemas"]
    out = schemas["ExecutionOut"]
    assert "celery_task_id" in out["required"]
    assert {"type": "null"} in out["properties"]["celery_task_id"]["anyOf"]
    assert "<execution id>-<attempt>" in out["properties"]["celery_task_id"]["description"]
    for schema in (out, schemas["ExecutionCreateBody"]):
        assert "several executions may share it" in schema["properties"]["task_id"]["description"].lower()
    timeout = schemas["ExecutionCreateBody"]["properties"]["timeout_seconds"]
    integer = next(option for option in timeout["anyOf"] if option.get("type") == "integer")
    assert integer["maximum"] == settings.max_timeout_seconds
    assert "MAX_TIMEOUT_SECONDS" in timeout["description"]
