"""The ONE mapping from domain exceptions to HTTP answers, and the handlers that apply it.

Every error leaves the API as application/problem+json (RFC 9457). Domain errors are
looked up along their class hierarchy in ERROR_STATUS (the most specific entry wins);
ENDPOINT_STATUS overrides an entry for one route (an unknown agent in the body of
POST /v1/executions is invalid input, not a missing resource). Flask's own errors
(404, 405, 413, 415, ...) keep their status; anything else is a bug and answers 500
without details.
"""

from __future__ import annotations

import structlog
from flask import Flask, Response, request
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.sansio.response import Response as WerkzeugResponse

from api.problems import problem, validation_problem
from app.errors import (
    AgentExecError,
    AgentNotFoundError,
    BudgetExceededError,
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    ExecutionNotFoundError,
    InvalidExecutionStateError,
    InvalidProgressError,
    ScheduleNotFoundError,
    TaskBusyError,
    UnprocessableError,
    WebhookNotFoundError,
    WebhookUrlRefusedError,
)

log = structlog.get_logger(__name__)
RETRY_AFTER_SECONDS = 2

ERROR_STATUS: dict[type[Exception], int] = {
    ExecutionNotFoundError: 404,
    AgentNotFoundError: 404,
    ScheduleNotFoundError: 404,
    InvalidExecutionStateError: 409,
    InvalidProgressError: 409,
    ConflictError: 409,
    WebhookNotFoundError: 404,
    WebhookUrlRefusedError: 422,
    UnprocessableError: 422,
    BudgetExceededError: 429,
    DatabaseUnavailableError: 503,
    OperationalError: 503,  # a connection lost outside the repository's wrapper
    InterfaceError: 503,
    DatabaseError: 500,
    SQLAlchemyError: 500,
}
ENDPOINT_STATUS: dict[tuple[str, type[Exception]], int] = {
    ("executions.create_execution", AgentNotFoundError): 422,
    ("schedules.create_schedule", AgentNotFoundError): 422,
    ("schedules.update_schedule", AgentNotFoundError): 422,
}
TITLES = {
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def status_for(exc: Exception, endpoint: str | None) -> int | None:
    """The HTTP status of a domain error on this endpoint, or None when it is not mapped."""
    for cls in type(exc).__mro__:
        status = ENDPOINT_STATUS.get((endpoint or "", cls)) or ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return None


def _detail(exc: Exception, status: int) -> str:
    if status == 503:
        return "the database is unavailable; try again shortly"
    if status >= 500:
        return "an internal error occurred; it has been logged"
    return str(exc)


def handle_domain_error(exc: Exception) -> Response:
    """Answer a domain or database error from the mapping."""
    status = status_for(exc, request.endpoint)
    if status is None:
        return handle_unexpected(exc)
    if status >= 500:
        log.error(
            "request failed",
            status=status,
            error_type=type(exc).__name__,
            error=str(exc),
            path=request.path,
            method=request.method,
        )
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    extra: dict[str, object] = {}
    if isinstance(exc, TaskBusyError):  # on_conflict=reject: which execution holds the task
        extra["type"] = "https://agentexec.dev/problems/task-busy"
        extra["active_execution_id"] = str(exc.active_execution_id)
    if isinstance(exc, BudgetExceededError):
        extra["type"] = "https://agentexec.dev/problems/budget-exceeded"
        if exc.retry_after is not None:  # the daily budget renews at the next UTC midnight
            headers = {"Retry-After": str(exc.retry_after)}
            extra["retry_after"] = exc.retry_after
    return problem(status, TITLES.get(status, "Error"), _detail(exc, status), headers=headers, **extra)


def handle_http_error(exc: HTTPException) -> WerkzeugResponse:
    """Flask's and Werkzeug's own errors (404, 405, 413, 415, ...) as problem+json."""
    status = exc.code or 500
    headers: dict[str, str] = {}
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    if exc.response is not None:
        return exc.response  # an abort() that already carries its answer
    detail = exc.description or exc.name
    if isinstance(exc, NotFound) and "//" in request.path:
        detail = f"no route matches {request.path}: a path segment is empty (an id left out?)"
    return problem(status, exc.name, detail, headers=headers or None)


def handle_unexpected(exc: Exception) -> Response:
    """A bug: log it with its traceback and answer 500 without internals."""
    log.exception("unhandled error", path=request.path, method=request.method, error_type=type(exc).__name__)
    return problem(500, "Internal Server Error", "an internal error occurred; it has been logged")


def register_error_handlers(app: Flask) -> None:
    """Install the problem+json handlers on the app."""
    app.register_error_handler(ValidationError, validation_problem)
    app.register_error_handler(HTTPException, handle_http_error)
    for cls in (AgentExecError, SQLAlchemyError):
        app.register_error_handler(cls, handle_domain_error)
    app.register_error_handler(Exception, handle_unexpected)
