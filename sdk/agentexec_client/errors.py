"""The exceptions of the client: API answers (problem+json), lost connections, waits that ran out.

Every error answer of the API is `application/problem+json`; `ProblemError` carries its
fields and has one subclass per status a caller commonly handles, and a subclass of
those for the answers a caller acts on differently (a busy task names the execution
holding it; a spent token budget is not retried). `str()` of any of them is one line.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from typing import Any

import httpx
from pydantic import ValidationError

from agentexec_client.models import FieldError


class AgentexecError(Exception):
    """Base of every error this client raises."""


class ProblemError(AgentexecError):
    """The API answered with an error status; the fields of its problem+json body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        errors: list[FieldError] | None = None,
        *,
        type: str = "about:blank",
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ):
        self.status, self.title, self.detail = status, title, detail
        self.errors: list[FieldError] = errors or []
        self.type = type
        self.retry_after = retry_after
        self.body: dict[str, Any] = body or {}
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        """'Title: detail [loc: msg; ...] (HTTP status)', naming up to three invalid fields."""
        text = self.title
        if self.detail and self.detail != self.title:
            text = f"{text}: {self.detail}"
        fields = [_field(e) for e in self.errors[:3]]
        if fields:
            text += " [" + "; ".join(f for f in fields if f) + "]"
        return f"{text} (HTTP {self.status})"


class Unauthorized(ProblemError):
    """401: the API key is missing, malformed, unknown or revoked."""


class NotFound(ProblemError):
    """404: no such agent or execution (or it belongs to another tenant)."""


class Conflict(ProblemError):
    """409: not allowed in the current state, a name taken, or an idempotency key reused."""


class TaskBusy(Conflict):
    """409 from a create with `on_conflict="reject"`: `active_execution_id` holds the task."""

    @property
    def active_execution_id(self) -> uuid.UUID:
        """The active execution with the same task_id."""
        return uuid.UUID(str(self.body["active_execution_id"]))


class ValidationFailed(ProblemError):
    """422: the request is invalid; `errors` names each field."""


class RateLimited(ProblemError):
    """429: too many requests; `retry_after` says how many seconds to wait."""


class BudgetExceeded(RateLimited):
    """429: the agent's daily token budget is spent; `retry_after` is the seconds to the next
    UTC midnight, when it renews. Never retried by the client."""


class ConnectionFailed(AgentexecError):
    """The API could not be reached, or the connection broke, after the retries allowed."""

    def __init__(self, message: str, *, base_url: str, connected: bool):
        super().__init__(message)
        self.base_url = base_url
        self.connected = connected  # False: no connection was ever made (wrong URL, server down)


class WaitTimeout(AgentexecError, TimeoutError):
    """`wait()` ran out of time before the execution ended."""

    def __init__(self, execution_id: str, timeout: float):
        super().__init__(f"execution {execution_id} did not end within {timeout:g} s")
        self.execution_id, self.timeout = execution_id, timeout


BY_STATUS: dict[int, type[ProblemError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
}
BUDGET_EXCEEDED_TYPE = "https://agentexec.dev/problems/budget-exceeded"


def _class_of(status: int, body: dict[str, Any]) -> type[ProblemError]:
    """The exception class of an answer: by its problem type or members, else by its status."""
    if status == 429 and body.get("type") == BUDGET_EXCEEDED_TYPE:
        return BudgetExceeded
    if status == 409 and _is_uuid(body.get("active_execution_id")):
        return TaskBusy
    return BY_STATUS.get(status, ProblemError)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return value is not None


def _field(error: FieldError) -> str:
    loc = ".".join(str(p) for p in error.loc)
    return f"{loc}: {error.msg}" if loc else error.msg


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _field_errors(raw: Any) -> list[FieldError]:
    errors = []
    for item in raw if isinstance(raw, list) else []:
        try:  # a member missing from a hand-written problem is empty rather than unreadable
            errors.append(FieldError.model_validate({"loc": [], "msg": "", "type": ""} | item))
        except (TypeError, ValidationError):
            errors.append(FieldError(loc=[], msg=str(item), type=""))
    return errors


def problem_error(response: httpx.Response) -> ProblemError:
    """The exception for an error answer (problem+json when it is one, the status line otherwise)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    cls = _class_of(response.status_code, body)
    wait = retry_after(response)
    if wait is None and isinstance(body.get("retry_after"), int | float):
        wait = max(float(body["retry_after"]), 0.0)
    return cls(
        response.status_code,
        str(body.get("title") or response.reason_phrase or "HTTP error"),
        str(body.get("detail") or ""),
        _field_errors(body.get("errors")),
        type=str(body.get("type") or "about:blank"),
        retry_after=wait,
        body=body,
    )


def connection_failed(base_url: str, exc: httpx.TransportError) -> ConnectionFailed:
    """The exception for a transport failure, its message one line."""
    if isinstance(exc, httpx.ConnectError):
        return ConnectionFailed(
            f"cannot connect to the agentexec API at {base_url}", base_url=base_url, connected=False
        )
    if isinstance(exc, httpx.TimeoutException):
        message = f"the agentexec API at {base_url} did not answer in time"
        return ConnectionFailed(
            message, base_url=base_url, connected=not isinstance(exc, httpx.ConnectTimeout)
        )
    return ConnectionFailed(
        f"connection to the agentexec API at {base_url} failed: {type(exc).__name__}: {exc}",
        base_url=base_url,
        connected=True,
    )
