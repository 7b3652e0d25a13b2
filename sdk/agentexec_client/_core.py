"""What the sync and async clients share: calls as data, the retry rules, SSE parsing, stream resumption.

Neither client decides anything itself: a method builds a `Call` (see `_calls`), the
client sends it through `RetryPolicy`, and a stream feeds its lines to `Follow`, which
keeps the last event id, drops repeats, applies the type filter and says when to stop.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from agentexec_client import errors
from agentexec_client.events import AnyEvent, EventType, event_position, parse_event

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
# The server's last frame when it shuts down: reconnect (with Last-Event-ID) after its `retry:`.
RECONNECT_EVENT = "reconnect"
DEFAULT_RECONNECT_SECONDS = 2.0


def base_url_of(base_url: str | None) -> str:
    """The API's base URL: as given, else AGENTEXEC_API_URL, else the local default."""
    return (base_url or os.environ.get("AGENTEXEC_API_URL") or DEFAULT_BASE_URL).rstrip("/")


def headers_of(api_key: str | None, user_agent: str) -> dict[str, str]:
    """The headers of every request; the key as given, else AGENTEXEC_API_KEY."""
    headers = {"User-Agent": user_agent, "Accept": "application/json"}
    key = api_key if api_key is not None else os.environ.get("AGENTEXEC_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer.

    `reconnectable`: a dropped connection may be retried (reads, and creates that carry
    an idempotency key); 429 and 503 answers are retried for every call.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] | None = None
    reconnectable: bool = False

    def request_kwargs(self) -> dict[str, Any]:
        """The arguments of httpx's `request` for this call."""
        kwargs: dict[str, Any] = {}
        if self.params:
            kwargs["params"] = {k: v for k, v in self.params.items() if v is not None and v != []}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.headers:
            kwargs["headers"] = self.headers
        return kwargs


@dataclass
class RetryPolicy:
    """When to send a request again, and after how long.

    429 and 503 are retried after their Retry-After (or a backoff when absent) unless it
    is longer than `max_wait`, except a spent token budget (it renews at midnight, not in
    a moment); a dropped or refused connection is retried only for a
    reconnectable call; nothing else is retried. At most `max_retries` retries per call.
    """

    max_retries: int = 3
    max_wait: float = 60.0
    backoff_base: float = 0.25
    backoff_cap: float = 4.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: about base * 2**attempt, capped."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def after_answer(self, error: errors.ProblemError, attempt: int) -> float | None:
        """Seconds to wait before retrying this error answer, or None to raise it."""
        if not retried(error) or attempt >= self.max_retries:
            return None
        if error.retry_after is None:
            return self.backoff(attempt)
        return error.retry_after if error.retry_after <= self.max_wait else None

    def after_failure(self, call: Call[Any], attempt: int) -> float | None:
        """Seconds to wait before retrying after a transport error, or None to raise it."""
        if not call.reconnectable or attempt >= self.max_retries:
            return None
        return self.backoff(attempt)


def retried(error: errors.ProblemError) -> bool:
    """True for the error answers worth sending the request again for: 429 and 503,
    but not a spent daily token budget."""
    return error.status in RETRY_STATUSES and not isinstance(error, errors.BudgetExceeded)


def path_id(value: Any) -> str:
    """An id for a URL path: a UUID, a string, or a model with an `id`."""
    return urllib.parse.quote(str(getattr(value, "id", value)), safe="")


def as_uuid(value: Any) -> uuid.UUID | None:
    """`value` (a UUID, a model with an `id`, or a string) as a UUID; None when it is a name."""
    value = getattr(value, "id", value)
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# ----------------------------------------------------------------------- SSE


@dataclass
class Frame:
    """One server-sent event as received."""

    id: str | None
    event: str
    data: str
    retry: int | None = None


@dataclass
class SseParser:
    """Splits an SSE line stream into frames; a frame counts only once its blank line arrived.

    As in browsers, a block without `data:` dispatches nothing (a lone `retry:` included).
    """

    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _event: str = "message"
    _retry: int | None = None

    def feed(self, line: str) -> Frame | None:
        """Take one line; returns the frame it completes, if any (comments and heartbeats: none)."""
        if line == "":
            frame = Frame(self._id, self._event, "\n".join(self._data), self._retry) if self._data else None
            self._data, self._id, self._event, self._retry = [], None, "message", None
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


class Follow:
    """The state of one resumable event stream: where it is, what to yield, when to give up.

    Each connection sends `Last-Event-ID` of the last event received (from any of the
    earlier connections), so the server replays exactly what was missed; an event whose
    id is not above it is dropped, so nothing is yielded twice. The stream is finished
    after the completed event, or when a connection opened after the execution was seen
    final ends without one (it was already behind `last_event_id`). A server that shuts
    down sends `event: reconnect` last: the connection is then reopened after the server's
    `retry:` delay, like a dropped one.
    """

    def __init__(
        self,
        execution_id: str,
        last_event_id: int | str | None,
        types: Iterable[str | EventType] | None,
        *,
        reconnects: int,
        read_timeout: float,
        wait_timeout: float | None = None,
    ):
        self.execution_id = execution_id
        self.last_id = last_event_id
        self.types = None if types is None else {str(t) for t in types}
        self.reconnects = reconnects
        self.read_timeout = read_timeout
        self.wait_timeout = wait_timeout
        self.deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        self.path = f"/v1/executions/{path_id(execution_id)}/events"
        if self.types is not None:  # the server sends only these (and the completion, to end on)
            self.path += "?types=" + ",".join(sorted(self.types | {EventType.COMPLETED.value}))
        self.done = False
        self.final_seen = False  # the execution was final before the current connection opened
        self.failures = 0
        self.reconnect_asked = False  # the server asked this connection to reconnect
        self.server_retry: float | None = None  # seconds, from the stream's `retry:` field
        self._parser = SseParser()
        self._progressed = False

    def open(self) -> None:
        """A new connection starts: a fresh parser (a partial frame of the last one is dropped)."""
        self._parser = SseParser()
        self._progressed = False
        self.reconnect_asked = False

    def headers(self) -> dict[str, str]:
        """The headers of the next connection."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        return headers

    def timeout(self, connect: float) -> httpx.Timeout:
        """The connection's timeouts: reads wait for heartbeats, but not past the deadline."""
        read = self.read_timeout
        if self.deadline is not None:
            read = min(read, max(self.deadline - time.monotonic(), 0.01))
        return httpx.Timeout(connect, read=read)

    def feed(self, line: str) -> AnyEvent | None:
        """Take one line; returns the event to yield, if it completes one that is new and wanted."""
        self.check_deadline()
        frame = self._parser.feed(line)
        if frame is None:
            return None
        if frame.retry is not None:
            self.server_retry = frame.retry / 1000.0
        if frame.event == RECONNECT_EVENT:
            self.reconnect_asked = True  # the client ends this connection and opens another
            return None
        event = parse_event(_json(frame.data))
        if self.last_id is not None and event_position(event.id) <= event_position(self.last_id):
            return None
        self.last_id = event.id
        self._progressed = True
        self.done = event.type == EventType.COMPLETED.value
        return event if self.types is None or event.type in self.types else None

    def check_deadline(self) -> None:
        """Raise WaitTimeout once the deadline has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise errors.WaitTimeout(self.execution_id, self.wait_timeout or 0.0)

    def ended(self, clean: bool) -> bool:
        """A connection ended before the completed event; True when the stream is nonetheless over."""
        if self._progressed:
            self.failures = 0
        else:
            self.failures += 1
        return clean and self.final_seen and not self._progressed

    def give_up(self) -> bool:
        """True when too many connections in a row brought nothing."""
        return self.failures > self.reconnects

    def delay(self) -> float:
        """Seconds before the next connection: the server's `retry:` when it asked to reconnect
        (spread a little), none after progress, then a growing backoff."""
        if self.reconnect_asked:
            wait = (self.server_retry or DEFAULT_RECONNECT_SECONDS) * random.uniform(1.0, 1.5)
        elif self.failures == 0:
            return 0.0
        else:
            wait = min(2.0, 0.1 * 2.0 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        if self.deadline is not None:
            wait = min(wait, max(self.deadline - time.monotonic(), 0.0))
        return wait


def answer_wait(error: errors.ProblemError, retry: RetryPolicy) -> float:
    """Seconds to wait after an error answer to a stream request; raises the ones not retried."""
    if not retried(error) or (error.retry_after or 0.0) > retry.max_wait:
        raise error
    return error.retry_after or 0.0


def stream_closing(f: Follow, base_url: str) -> errors.ConnectionFailed:
    """The error of a stream whose connections keep ending without bringing anything."""
    return errors.ConnectionFailed(
        f"the event stream of execution {f.execution_id} keeps closing early",
        base_url=base_url,
        connected=True,
    )


def _json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("an event is a JSON object")
    return data
