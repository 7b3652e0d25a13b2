"""`client.agents` and `client.executions` of `AsyncClient`: the methods of `resources.py`, awaited."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agentexec_client import _calls as calls
from agentexec_client import errors
from agentexec_client._calls import NOT_GIVEN, ErrorCodeFilter, NotGiven, StateFilter
from agentexec_client._core import Follow, as_uuid
from agentexec_client.events import AnyEvent, EventType
from agentexec_client.models import (
    Agent,
    AgentPage,
    BulkResult,
    Execution,
    ExecutionPage,
    ExecutionParameters,
    HistoryItem,
    OnConflict,
)

if TYPE_CHECKING:
    from agentexec_client.async_client import AsyncClient

AgentRef = str | uuid.UUID | Agent
ExecutionRef = str | uuid.UUID | Execution


class AsyncAgents:
    """`client.agents`: named model configurations."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(
        self,
        name: str,
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_concurrency: int | None = None,
        on_conflict: OnConflict | str | None = None,
        daily_token_budget: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Agent:
        """Create an agent (Conflict when the name is taken); None leaves a limit unset."""
        call = calls.agent_create(
            name,
            model=model,
            system_prompt=system_prompt,
            parameters=parameters,
            max_concurrency=max_concurrency,
            on_conflict=on_conflict,
            daily_token_budget=daily_token_budget,
            tools=None if tools is None else [dict(t) for t in tools],
        )
        return await self._c.send(call)

    async def get(self, agent: AgentRef) -> Agent:
        """The agent with this id, or else this name (NotFound when there is none)."""
        agent_id = as_uuid(agent)
        if agent_id is not None:
            return await self._c.send(calls.agent_get(agent_id))
        async for found in self.list():
            if found.name == agent:
                return found
        raise errors.NotFound(404, "Not Found", f"no agent named {agent!r}")

    async def list(self, *, page_size: int = 200) -> AsyncIterator[Agent]:
        """Every agent, by name (fetched a page at a time)."""
        pager: calls.Pager[Agent] = calls.Pager(calls.agent_page, page_size)
        while not pager.done:
            for agent in pager.take(await self._c.send(pager.call())):
                yield agent

    async def list_page(self, page: int = 1, page_size: int = 50) -> AgentPage:
        """One page of agents, with the total."""
        return await self._c.send(calls.agent_page(page, page_size))

    async def update(
        self,
        agent: AgentRef,
        *,
        name: str | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        max_concurrency: int | None | NotGiven = NOT_GIVEN,
        on_conflict: OnConflict | str | None | NotGiven = NOT_GIVEN,
        daily_token_budget: int | None | NotGiven = NOT_GIVEN,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Agent:
        """Change the fields given: None leaves name, model, system_prompt and parameters as they
        are, but removes a limit (max_concurrency, on_conflict, daily_token_budget)."""
        fields: dict[str, Any] = {
            "name": name,
            "model": model,
            "system_prompt": system_prompt,
            "parameters": parameters,
        }
        fields["tools"] = None if tools is None else [dict(t) for t in tools]  # [] removes every tool
        limits = {
            "max_concurrency": max_concurrency,
            "on_conflict": on_conflict,
            "daily_token_budget": daily_token_budget,
        }
        return await self._c.send(calls.agent_update(await self.id_of(agent), fields, limits))

    async def delete(self, agent: AgentRef) -> None:
        """Delete an agent and its finished executions (Conflict while one is active)."""
        await self._c.send(calls.agent_delete(await self.id_of(agent)))

    async def id_of(self, agent: AgentRef) -> uuid.UUID:
        """The id of an agent given by id, model or name (a name costs a walk through the agents)."""
        found = as_uuid(agent)
        return found if found is not None else (await self.get(agent)).id


class AsyncExecutions:
    """`client.executions`: runs of an agent on a task."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(
        self,
        agent: AgentRef,
        parameters: ExecutionParameters | Mapping[str, Any] | None = None,
        *,
        input: str | None = None,
        idempotency_key: str | None = None,
        start: bool | None = None,
        task_id: uuid.UUID | str | None = None,
        on_conflict: OnConflict | str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        timeout_seconds: int | None = None,
        max_retries: int | None = None,
        max_tokens: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_at: datetime | None = None,
        delay_seconds: float | None = None,
    ) -> Execution:
        """Submit an execution to an agent (id or name); see `Client.executions.create`."""
        call = calls.execution_create(
            await self._c.agents.id_of(agent),
            calls.parameters_of(parameters, input),
            idempotency_key,
            start=start,
            task_id=task_id,
            on_conflict=on_conflict,
            queue=queue,
            priority=priority,
            timeout_seconds=timeout_seconds,
            max_retries=max_retries,
            max_tokens=max_tokens,
            metadata=metadata,
            start_at=start_at,
            delay_seconds=delay_seconds,
        )
        return await self._c.send(call)

    async def get(self, execution: ExecutionRef) -> Execution:
        """One execution."""
        return await self._c.send(calls.execution_get(execution))

    async def list(
        self,
        *,
        state: StateFilter = None,
        agent: AgentRef | None = None,
        task_id: uuid.UUID | str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        error_code: ErrorCodeFilter = None,
        metadata: Mapping[str, Any] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Execution]:
        """Every matching execution, newest first (a page at a time; each one once).

        `state` and `error_code` take one value or several (any of them matches).
        """
        filters = await self._filters(
            state, agent, task_id, created_after, created_before, error_code, metadata
        )
        pager = calls.ExecutionPager(filters, page_size)
        while not pager.done:
            for execution in pager.take(await self._c.send(pager.call())):
                yield execution

    async def list_page(
        self,
        page: int = 1,
        page_size: int = 50,
        *,
        state: StateFilter = None,
        agent: AgentRef | None = None,
        task_id: uuid.UUID | str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        error_code: ErrorCodeFilter = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ExecutionPage:
        """One page of executions, newest first, with the total."""
        filters = await self._filters(
            state, agent, task_id, created_after, created_before, error_code, metadata
        )
        return await self._c.send(calls.execution_page(page, page_size, filters))

    async def delete(self, execution: ExecutionRef) -> None:
        """Delete a finished execution (Conflict while it is active)."""
        await self._c.send(calls.execution_delete(execution))

    async def start(self, execution: ExecutionRef, *, reason: str | None = None) -> Execution:
        """Queue a PENDING execution."""
        return await self._c.send(calls.control("start", execution, reason))

    async def cancel(self, execution: ExecutionRef, *, reason: str | None = None) -> Execution:
        """Cancel: CANCELLED at once when not running, else CANCELLING while a worker stops it."""
        return await self._c.send(calls.control("cancel", execution, reason))

    async def pause(self, execution: ExecutionRef, *, reason: str | None = None) -> Execution:
        """Pause a RUNNING execution (PAUSING; it stops at the next step boundary)."""
        return await self._c.send(calls.control("pause", execution, reason))

    async def resume(self, execution: ExecutionRef, *, reason: str | None = None) -> Execution:
        """Queue a PAUSED execution again."""
        return await self._c.send(calls.control("resume", execution, reason))

    async def retry(self, execution: ExecutionRef, *, reason: str | None = None) -> Execution:
        """Queue a FAILED or TIMED_OUT execution again, with a new attempt."""
        return await self._c.send(calls.control("retry", execution, reason))

    async def bulk_cancel(
        self,
        *,
        ids: Iterable[ExecutionRef] | None = None,
        filters: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        limit: int = 1000,
        reason: str | None = None,
    ) -> BulkResult:
        """Cancel many executions: `ids`, or the newest `limit` matching `filters` (state,
        agent_id, task_id, created_after, created_before, error_code, metadata)."""
        return await self._c.send(calls.bulk("cancel", calls.bulk_body(ids, filters, dry_run, limit, reason)))

    async def bulk_retry(
        self,
        *,
        ids: Iterable[ExecutionRef] | None = None,
        filters: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        limit: int = 1000,
        reason: str | None = None,
    ) -> BulkResult:
        """Retry many FAILED or TIMED_OUT executions, chosen like `bulk_cancel`."""
        return await self._c.send(calls.bulk("retry", calls.bulk_body(ids, filters, dry_run, limit, reason)))

    async def history(self, execution: ExecutionRef, *, limit: int = 100) -> builtins.list[HistoryItem]:
        """The last `limit` state transitions, oldest first."""
        return await self._c.send(calls.history(execution, limit))

    async def events(
        self,
        execution: ExecutionRef,
        *,
        after: int | str = 0,
        page_size: int = 1000,
        types: Iterable[str | EventType] | None = None,
    ) -> AsyncIterator[AnyEvent]:
        """The events logged so far (after event id `after`), without waiting for new ones;
        output deltas too when `types` names EventType.OUTPUT_DELTA."""
        while True:
            page = await self._c.send(calls.events_page(execution, after, page_size, types))
            for event in page:
                yield event
            if len(page) < page_size:
                return
            after = page[-1].id

    def stream(
        self,
        execution: ExecutionRef,
        last_event_id: int | str | None = None,
        types: Iterable[str | EventType] | None = None,
    ) -> AsyncIterator[AnyEvent]:
        """The events after `last_event_id`, then live ones, until the completed event (resumed on drops)."""
        return self._c.follow(self._follow(execution, last_event_id, types, None))

    async def wait(self, execution: ExecutionRef, timeout: float | None = None) -> Execution:
        """The execution once it has ended; WaitTimeout after `timeout` seconds (None: no limit)."""
        follow = self._follow(execution, None, [EventType.COMPLETED], timeout)
        current = await self.get(execution)
        # A completed event replayed from an earlier attempt (before a retry or a resume) ends
        # a follow while the current attempt still runs: follow on from it, same deadline.
        while not current.is_final:
            follow.done = False
            async for _ in self._c.follow(follow):
                pass
            current = await self.get(execution)
        return current

    def _follow(
        self, execution: Any, last_event_id: int | str | None, types: Any, timeout: float | None
    ) -> Follow:
        return Follow(
            str(getattr(execution, "id", execution)),
            last_event_id,
            types,
            reconnects=self._c.stream_reconnects,
            read_timeout=self._c.stream_read_timeout,
            wait_timeout=timeout,
        )

    async def _filters(
        self,
        state: StateFilter,
        agent: AgentRef | None,
        task_id: Any,
        created_after: datetime | None,
        created_before: datetime | None,
        error_code: ErrorCodeFilter,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        agent_id = None if agent is None else await self._c.agents.id_of(agent)
        return calls.filters_of(state, agent_id, task_id, created_after, created_before, error_code, metadata)
