"""`Client`: the agentexec API from synchronous code; sends calls and follows event streams.

Its resources, `client.agents` and `client.executions`, are in `resources.py`;
`client.usage()` (GET /v1/usage) is a method of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, datetime
from typing import TypeVar

import httpx

from agentexec_client import _calls as calls
from agentexec_client import errors
from agentexec_client._core import (
    Call,
    Follow,
    RetryPolicy,
    answer_wait,
    base_url_of,
    headers_of,
    stream_closing,
)
from agentexec_client.events import AnyEvent
from agentexec_client.models import UsageGroup, UsageItem
from agentexec_client.resources import AgentRef, Agents, Executions
from agentexec_client.schedules import Schedules
from agentexec_client.tools import Tools
from agentexec_client.version import USER_AGENT
from agentexec_client.webhooks import Webhooks

T = TypeVar("T")


class Client:
    """A client of one agentexec API; close it (or use `with`) to release its connections.

    `base_url` and `api_key` default to AGENTEXEC_API_URL and AGENTEXEC_API_KEY; `timeout`
    is per HTTP call. See the README for what is retried.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        stream_read_timeout: float = 60.0,
        stream_reconnects: int = 20,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url_of(base_url)
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, max_wait=max_retry_wait)
        self.stream_read_timeout, self.stream_reconnects = stream_read_timeout, stream_reconnects
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers_of(api_key, USER_AGENT),
            timeout=timeout,
            transport=transport,
        )
        self.agents = Agents(self)
        self.executions = Executions(self)
        self.schedules = Schedules(self)
        self.webhooks = Webhooks(self)
        self.tools = Tools(self)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def usage(
        self,
        *,
        group_by: UsageGroup = "agent",
        agent: AgentRef | None = None,
        created_after: date | datetime | None = None,
        created_before: date | datetime | None = None,
    ) -> list[UsageItem]:
        """Tokens this tenant's agents used: one item per agent, per UTC day, or per agent and
        day (`group_by`), optionally of one agent (id or name) and the UTC days from
        `created_after` through `created_before` (a date is that UTC day)."""
        agent_id = None if agent is None else self.agents.id_of(agent)
        return self.send(calls.usage(group_by, agent_id, created_after, created_before))

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying as its policy allows; raise ProblemError or ConnectionFailed."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as exc:
                delay = self.retry.after_failure(call, attempt)
                if delay is None:
                    raise errors.connection_failed(self.base_url, exc) from exc
            else:
                if response.status_code < 400:
                    return call.parse(response)
                error = errors.problem_error(response)
                delay = self.retry.after_answer(error, attempt)
                if delay is None:
                    raise error
            attempt += 1
            time.sleep(delay)

    def follow(self, f: Follow) -> Iterator[AnyEvent]:
        """The events of one stream, reconnecting with Last-Event-ID until it is over."""
        last_error: errors.AgentexecError | None = None
        while True:
            f.check_deadline()
            f.open()
            clean, wait = False, 0.0
            try:
                with self._http.stream(
                    "GET", f.path, headers=f.headers(), timeout=f.timeout(self.timeout)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        last_error = errors.problem_error(response)
                        wait = answer_wait(last_error, self.retry)
                    else:
                        for line in response.iter_lines():
                            event = f.feed(line)
                            if event is not None:
                                yield event
                            if f.done:
                                return
                            if f.reconnect_asked:
                                break  # the server is going away: reopen like a dropped connection
                        else:
                            clean = True
            except httpx.TransportError as exc:
                f.check_deadline()
                last_error = errors.connection_failed(self.base_url, exc)
            if f.ended(clean):
                return
            if f.give_up():
                raise last_error or stream_closing(f, self.base_url)
            if clean and not f.final_seen:
                f.final_seen = self.send(calls.execution_get(f.execution_id)).is_final
            time.sleep(max(wait, f.delay()))
