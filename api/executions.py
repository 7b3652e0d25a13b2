"""/v1/executions: create (idempotently), list, read, delete, control, and read the history."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request
from flask_openapi3 import APIBlueprint, Tag
from flask_openapi3.types import ResponseDict

from api.deps import answer, service, settings, tenant
from api.guards import strict_body
from api.models import (
    BulkActionBody,
    BulkResult,
    ControlBody,
    ExecutionCreateBody,
    ExecutionListQuery,
    ExecutionOut,
    ExecutionPage,
    ExecutionPath,
    HistoryItem,
    HistoryOut,
    HistoryQuery,
    IdempotencyHeader,
)
from api.openapi import BODY_ERRORS, optional_control_body, problems
from api.problems import problem
from api.security import SECURITY
from app.models import Execution
from app.schemas import ExecutionFilters, ExecutionState, Pagination

bp = APIBlueprint(
    "executions",
    __name__,
    url_prefix="/v1/executions",
    abp_security=SECURITY,
    abp_tags=[Tag(name="executions", description="Runs of an agent on a task")],
)
INTERMEDIATE = frozenset({ExecutionState.CANCELLING, ExecutionState.PAUSING})


@bp.post(
    "",
    operation_id="createExecution",
    responses={201: ExecutionOut, 200: ExecutionOut, **problems(409, *BODY_ERRORS)},
)
def create_execution(header: IdempotencyHeader, body: ExecutionCreateBody) -> Response:
    """Create an execution and, unless `start` is false, queue it.

    201 with the new execution. With an `Idempotency-Key`: the same key and body again
    answer 200 with the first execution; the same key with another body answers 409.
    An unknown `agent_id` or bad `parameters` answer 422. With a `task_id` and
    `on_conflict=reject` while another execution of the task is active: 409 naming it
    (`active_execution_id`). When the agent's daily token budget is spent: 429
    (type `.../budget-exceeded`) with Retry-After, the seconds to the next UTC midnight.
    """
    refusal = _beyond_this_deployment(body)
    if refusal is not None:
        return refusal
    row, created = service().create_execution(body, idempotency_key=header.idempotency_key, tenant=tenant())
    return answer(
        ExecutionOut.of(row), 201 if created else 200, headers={"Location": f"/v1/executions/{row.id}"}
    )


def _beyond_this_deployment(body: ExecutionCreateBody) -> Response | None:
    """422 for a queue no worker reads or a timeout over MAX_TIMEOUT_SECONDS (both are settings)."""
    conf = settings()
    if body.queue is not None and body.queue not in conf.accepted_queues:
        names = ", ".join(sorted(conf.accepted_queues))
        detail = f"queue {body.queue!r} is not read by any worker of this deployment; use one of: {names}"
        return _invalid("queue", detail, f"must be one of: {names}", "unknown_queue")
    limit = conf.max_timeout_seconds
    if body.timeout_seconds is not None and body.timeout_seconds > limit:
        detail = (
            f"timeout_seconds {body.timeout_seconds} is over the limit of {limit} s (MAX_TIMEOUT_SECONDS)"
        )
        return _invalid("timeout_seconds", detail, f"must be at most {limit}", "less_than_equal")
    return None


def _invalid_query(name: str, detail: str) -> Response:
    return problem(
        422,
        "Unprocessable Content",
        detail,
        errors=[{"loc": ["query", name], "msg": detail, "type": "value_error"}],
    )


def _invalid(field: str, detail: str, msg: str, kind: str) -> Response:
    return problem(
        422, "Unprocessable Content", detail, errors=[{"loc": ["body", field], "msg": msg, "type": kind}]
    )


@bp.get("", operation_id="listExecutions", responses={200: ExecutionPage, **problems()})
def list_executions(query: ExecutionListQuery) -> Response:
    """A page of executions, newest first; `state` may repeat; unknown filters are 422.

    `metadata.KEY=VALUE` (one parameter per key, all must match) selects executions whose
    metadata holds KEY with that value: the string, or the number or boolean it spells
    (`metadata.n=5` matches `{"n": 5}` and `{"n": "5"}`). The same filter as bulk actions.
    """
    repeated = sorted(
        {k for k in request.args if k.startswith("metadata.") and len(request.args.getlist(k)) > 1}
    )
    if repeated:
        detail = f"{repeated[0]} is given more than once; each metadata key takes one value"
        return _invalid_query(repeated[0], detail)
    filters = ExecutionFilters(
        state=query.state,
        agent_id=query.agent_id,
        task_id=query.task_id,
        created_after=query.created_after,
        created_before=query.created_before,
        error_code=query.error_code,
        metadata=query.metadata,
    )
    rows, total, exact = service().list_executions_page(
        filters, Pagination(page=query.page, page_size=query.page_size), tenant=tenant()
    )
    return answer(
        ExecutionPage(
            items=[ExecutionOut.of(r) for r in rows],
            total=total,
            total_exact=exact,
            page=query.page,
            page_size=query.page_size,
        )
    )


def _bulk(action: str, body: BulkActionBody) -> Response:
    return answer(BulkResult(**service().bulk(action, body, tenant=tenant())))


@bp.post(
    "/bulk/cancel", operation_id="bulkCancelExecutions", responses={200: BulkResult, **problems(*BODY_ERRORS)}
)
def bulk_cancel(body: BulkActionBody) -> Response:
    """Cancel many executions: `ids` (at most 10,000), or the newest `limit` a `filter` matches
    (state, agent_id, task_id, created_after, created_before, error_code, metadata pairs).

    Each goes through the same guarded transition as POST .../cancel, one at a time, so no
    long lock is held and a race with a worker stays safe. The answer says how many matched,
    how many changed, and each one skipped with its state and why. `dry_run` changes nothing.
    """
    return _bulk("cancel", body)


@bp.post(
    "/bulk/retry", operation_id="bulkRetryExecutions", responses={200: BulkResult, **problems(*BODY_ERRORS)}
)
def bulk_retry(body: BulkActionBody) -> Response:
    """Retry many FAILED or TIMED_OUT executions (new attempts), chosen like bulk cancel."""
    return _bulk("retry", body)


@bp.get("/<execution_id>", operation_id="getExecution", responses={200: ExecutionOut, **problems(404)})
def get_execution(path: ExecutionPath) -> Response:
    """One execution."""
    return answer(ExecutionOut.of(service().get_execution(path.execution_id, tenant=tenant())))


@bp.delete("/<execution_id>", operation_id="deleteExecution", responses={204: None, **problems(404, 409)})
def delete_execution(path: ExecutionPath) -> Response:
    """Delete a finished execution with its history and events (409 while it is active)."""
    service().delete_execution(path.execution_id, tenant=tenant())
    return Response(status=204)


@bp.get(
    "/<execution_id>/history",
    operation_id="getExecutionHistory",
    responses={200: HistoryOut, **problems(404)},
)
def get_history(path: ExecutionPath, query: HistoryQuery) -> Response:
    """The last `limit` state transitions, oldest first."""
    rows = service().get_state_history(path.execution_id, query.limit, tenant=tenant())
    return answer(HistoryOut(items=[HistoryItem.of(r) for r in rows]))


# ----------------------------------------------------------------- control

ControlCall = Callable[..., Execution]
CONTROL_RESPONSES: ResponseDict = {200: ExecutionOut, 202: ExecutionOut, **problems(404, 409, *BODY_ERRORS)}


def _control(call: ControlCall, path: ExecutionPath) -> Response:
    body = strict_body(ControlBody)
    row = call(path.execution_id, tenant=tenant(), reason=body.reason)
    return answer(ExecutionOut.of(row), 202 if ExecutionState(row.state) in INTERMEDIATE else 200)


@bp.post(
    "/<execution_id>/start",
    operation_id="startExecution",
    responses=CONTROL_RESPONSES,
    openapi_extensions=optional_control_body(),
)
def start_execution(path: ExecutionPath) -> Response:
    """Queue a PENDING execution (200; 409 from any other state)."""
    return _control(service().start_execution, path)


@bp.post(
    "/<execution_id>/cancel",
    operation_id="cancelExecution",
    responses=CONTROL_RESPONSES,
    openapi_extensions=optional_control_body(),
)
def cancel_execution(path: ExecutionPath) -> Response:
    """Cancel: 200 CANCELLED at once when not running; 202 CANCELLING while a worker stops it."""
    return _control(service().cancel_execution, path)


@bp.post(
    "/<execution_id>/pause",
    operation_id="pauseExecution",
    responses=CONTROL_RESPONSES,
    openapi_extensions=optional_control_body(),
)
def pause_execution(path: ExecutionPath) -> Response:
    """Pause a RUNNING execution: 202 PAUSING; the worker stops at the next step boundary."""
    return _control(service().pause_execution, path)


@bp.post(
    "/<execution_id>/resume",
    operation_id="resumeExecution",
    responses=CONTROL_RESPONSES,
    openapi_extensions=optional_control_body(),
)
def resume_execution(path: ExecutionPath) -> Response:
    """Queue a PAUSED execution again; it continues after its last finished step (200)."""
    return _control(service().resume_execution, path)


@bp.post(
    "/<execution_id>/retry",
    operation_id="retryExecution",
    responses=CONTROL_RESPONSES,
    openapi_extensions=optional_control_body(),
)
def retry_execution(path: ExecutionPath) -> Response:
    """Queue a FAILED or TIMED_OUT execution again with a new attempt (200)."""
    return _control(service().retry_execution, path)
