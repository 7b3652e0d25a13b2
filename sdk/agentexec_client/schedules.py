"""`client.schedules` of both clients: cron schedules, each tick one execution of an agent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from agentexec_client import _calls as calls
from agentexec_client._calls import NOT_GIVEN, NotGiven, Pager
from agentexec_client._core import Call
from agentexec_client.models import ExecutionParameters, OnConflict, Schedule, SchedulePage

if TYPE_CHECKING:
    from agentexec_client.async_client import AsyncClient
    from agentexec_client.client import Client

ScheduleRef = str | uuid.UUID | Schedule
Parameters = ExecutionParameters | Mapping[str, Any] | None


def _create(
    agent_id: uuid.UUID, cron: str, parameters: Parameters, input: str | None, **fields: Any
) -> Call[Schedule]:
    return calls.schedule_create(agent_id, cron, calls.parameters_of(parameters, input), **fields)


def _update(
    schedule: ScheduleRef, parameters: Parameters, fields: dict[str, Any], clearable: dict[str, Any]
) -> Call[Schedule]:
    if parameters is not None:
        fields["parameters"] = calls.parameters_of(parameters, None)
    return calls.schedule_update(schedule, fields, clearable)


class Schedules:
    """`client.schedules`: recurring executions on a cron expression in a time zone."""

    def __init__(self, client: Client):
        self._c = client

    def create(
        self,
        agent: Any,
        cron: str,
        parameters: Parameters = None,
        *,
        input: str | None = None,
        timezone: str | None = None,
        task_id: uuid.UUID | str | None = None,
        on_conflict: OnConflict | str | None = None,
        enabled: bool | None = None,
    ) -> Schedule:
        """A schedule of an agent (id or name): `cron` (5 fields) read in `timezone` (IANA; UTC)."""
        fields = {"timezone": timezone, "task_id": task_id, "on_conflict": on_conflict, "enabled": enabled}
        return self._c.send(_create(self._c.agents.id_of(agent), cron, parameters, input, **fields))

    def get(self, schedule: ScheduleRef) -> Schedule:
        """One schedule, with its next tick and its last run."""
        return self._c.send(calls.schedule_get(schedule))

    def list_page(self, page: int = 1, page_size: int = 50) -> SchedulePage:
        """One page of schedules, oldest first."""
        return self._c.send(calls.schedule_page(page, page_size))

    def list(self, *, page_size: int = 200) -> Iterator[Schedule]:
        """Every schedule, oldest first."""
        pager: Pager[Schedule] = Pager(calls.schedule_page, page_size)
        while not pager.done:
            yield from pager.take(self._c.send(pager.call()))

    def update(
        self,
        schedule: ScheduleRef,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        parameters: Parameters = None,
        enabled: bool | None = None,
        task_id: uuid.UUID | str | None | NotGiven = NOT_GIVEN,
        on_conflict: OnConflict | str | None | NotGiven = NOT_GIVEN,
    ) -> Schedule:
        """Change the given fields (`task_id=None`, `on_conflict=None` clear them)."""
        fields = {"cron": cron, "timezone": timezone, "enabled": enabled}
        return self._c.send(
            _update(schedule, parameters, fields, {"task_id": task_id, "on_conflict": on_conflict})
        )

    def delete(self, schedule: ScheduleRef) -> None:
        """Delete a schedule (the executions it made stay)."""
        self._c.send(calls.schedule_delete(schedule))


class AsyncSchedules:
    """`client.schedules` of the AsyncClient."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(
        self,
        agent: Any,
        cron: str,
        parameters: Parameters = None,
        *,
        input: str | None = None,
        timezone: str | None = None,
        task_id: uuid.UUID | str | None = None,
        on_conflict: OnConflict | str | None = None,
        enabled: bool | None = None,
    ) -> Schedule:
        """A schedule of an agent (id or name): `cron` (5 fields) read in `timezone` (IANA; UTC)."""
        fields = {"timezone": timezone, "task_id": task_id, "on_conflict": on_conflict, "enabled": enabled}
        agent_id = await self._c.agents.id_of(agent)
        return await self._c.send(_create(agent_id, cron, parameters, input, **fields))

    async def get(self, schedule: ScheduleRef) -> Schedule:
        """One schedule."""
        return await self._c.send(calls.schedule_get(schedule))

    async def list_page(self, page: int = 1, page_size: int = 50) -> SchedulePage:
        """One page of schedules, oldest first."""
        return await self._c.send(calls.schedule_page(page, page_size))

    async def list(self, *, page_size: int = 200) -> AsyncIterator[Schedule]:
        """Every schedule, oldest first."""
        pager: Pager[Schedule] = Pager(calls.schedule_page, page_size)
        while not pager.done:
            for item in pager.take(await self._c.send(pager.call())):
                yield item

    async def update(
        self,
        schedule: ScheduleRef,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        parameters: Parameters = None,
        enabled: bool | None = None,
        task_id: uuid.UUID | str | None | NotGiven = NOT_GIVEN,
        on_conflict: OnConflict | str | None | NotGiven = NOT_GIVEN,
    ) -> Schedule:
        """Change the given fields (`task_id=None`, `on_conflict=None` clear them)."""
        fields = {"cron": cron, "timezone": timezone, "enabled": enabled}
        clearable = {"task_id": task_id, "on_conflict": on_conflict}
        return await self._c.send(_update(schedule, parameters, fields, clearable))

    async def delete(self, schedule: ScheduleRef) -> None:
        """Delete a schedule."""
        await self._c.send(calls.schedule_delete(schedule))
