"""The HTTP client of the CLI: JSON calls, problem+json errors, and the SSE event stream.

A pure client of the agentexec API (no application imports). Every failure becomes
an `ApiError` or `CliError` whose message is one line, for the CLI to print.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
COMPLETED_EVENT = "agent.execution.completed"


class CliError(Exception):
    """A failure to report as one line (exit code 1)."""


class ApiError(CliError):
    """The API answered with an error (problem+json when it can)."""

    def __init__(self, status: int, title: str, detail: str = "", errors: list[Any] | None = None):
        self.status, self.title, self.detail, self.errors = status, title, detail, errors or []
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """'Title: detail (HTTP status)', with up to three field errors appended."""
        text = self.title
        if self.detail and self.detail != self.title:
            text = f"{text}: {self.detail}"
        fields = [_field_error(e) for e in self.errors[:3]]
        if fields:
            text += " [" + "; ".join(f for f in fields if f) + "]"
        return f"{text} (HTTP {self.status})"


def _field_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    loc = error.get("loc") or error.get("field") or error.get("path") or ""
    if isinstance(loc, list | tuple):
        loc = ".".join(str(p) for p in loc)
    msg = error.get("msg") or error.get("message") or ""
    return f"{loc}: {msg}" if loc else str(msg)


@dataclass
class SseEvent:
    """One server-sent event: its id, event name and decoded JSON data."""

    id: str | None = None
    event: str = "message"
    data: Any = None
    raw: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        """The agentexec event type (from the data, else the SSE event name)."""
        if isinstance(self.data, dict) and self.data.get("type"):
            return str(self.data["type"])
        return self.event

    @property
    def payload(self) -> dict[str, Any]:
        """The event payload (empty when absent)."""
        if isinstance(self.data, dict):
            return self.data.get("payload") or {}
        return {}


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Split an SSE line stream into events (comments and heartbeats are skipped)."""
    current = SseEvent()
    for line in lines:
        if line == "":
            if current.raw:
                text = "\n".join(current.raw)
                try:
                    current.data = json.loads(text)
                except ValueError:
                    current.data = text
                yield current
            current = SseEvent(id=None)
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            current.raw.append(value)
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value


class ApiClient:
    """Calls the agentexec HTTP API; raises ApiError/CliError with one-line messages."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "agentexec-cli", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ------------------------------------------------------------------ plain calls

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; an error status raises ApiError, an unreachable API raises CliError."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._api_error(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET and decode JSON (None-valued params are dropped)."""
        clean = {k: v for k, v in params.items() if v is not None and v != []}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST a JSON body (or none); returns the response for its status and JSON."""
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            kwargs["json"] = body
        return self.request("POST", path, **kwargs)

    def delete(self, path: str) -> None:
        """DELETE a resource."""
        self.request("DELETE", path)

    # ------------------------------------------------------------------ events

    def follow_events(
        self, execution_id: str, after: str | None = None, *, reconnects: int = 20, read_timeout: float = 60.0
    ) -> Iterator[SseEvent]:
        """Yield the execution's events over SSE until its completed event.

        A dropped stream is reopened with Last-Event-ID, so no event is missed or repeated;
        after `reconnects` failed attempts in a row the API counts as unreachable.
        """
        last_id = after
        failures = 0
        delay = 0.2
        path = f"/v1/executions/{execution_id}/events"
        timeout = httpx.Timeout(10.0, read=read_timeout)
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id is not None:
                headers["Last-Event-ID"] = str(last_id)
            error: httpx.HTTPError | None = None
            received = False
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise self._api_error(response)
                    for event in parse_sse(response.iter_lines()):
                        received = True
                        if event.id is not None:
                            last_id = event.id
                        yield event
                        if event.type == COMPLETED_EVENT:
                            return
            except httpx.HTTPError as exc:
                error = exc
            # The stream ended before the completed event: it was dropped; reconnect.
            failures = 0 if received else failures + 1
            delay = 0.2 if received else delay
            if failures > reconnects:
                raise (
                    self._transport_error(error)
                    if error
                    else CliError(f"the event stream of execution {execution_id} keeps closing early")
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    # ------------------------------------------------------------------ errors

    def _transport_error(self, exc: httpx.HTTPError) -> CliError:
        if isinstance(exc, httpx.ConnectError):
            return CliError(
                f"cannot connect to the agentexec API at {self.base_url} "
                "(is it running? set --api-url or AGENTEXEC_API_URL)"
            )
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"the agentexec API at {self.base_url} did not answer in time")
        return CliError(
            f"connection to the agentexec API at {self.base_url} failed: {type(exc).__name__}: {exc}"
        )

    @staticmethod
    def _api_error(response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and ("title" in body or "detail" in body):
            return ApiError(
                response.status_code,
                str(body.get("title") or response.reason_phrase),
                str(body.get("detail") or ""),
                body.get("errors"),
            )
        return ApiError(response.status_code, response.reason_phrase or "HTTP error")
