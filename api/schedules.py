"""/v1/schedules: recurring runs of an agent on a cron expression in an IANA time zone."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from api.deps import answer, service, tenant
from api.models import (
    PageQuery,
    ScheduleCreateBody,
    ScheduleOut,
    SchedulePage,
    SchedulePath,
    ScheduleUpdateBody,
)
from api.openapi import BODY_ERRORS, problems
from api.security import SECURITY
from app.schemas import Pagination

bp = APIBlueprint(
    "schedules",
    __name__,
    url_prefix="/v1/schedules",
    abp_security=SECURITY,
    abp_tags=[Tag(name="schedules", description="Recurring executions on a cron expression")],
)


@bp.post("", operation_id="createSchedule", responses={201: ScheduleOut, **problems(409, *BODY_ERRORS)})
def create_schedule(body: ScheduleCreateBody) -> Response:
    """Create a schedule: each tick of `cron` (5 fields, read in `timezone`) creates one
    execution of the agent with `parameters` (and `task_id`, `on_conflict`).

    The execution's metadata holds `schedule_id` and `schedule_tick`, so
    `GET /v1/executions?metadata.schedule_id=<id>` lists a schedule's runs. Ticks missed
    while the service was down are not made up: only the latest one runs. An unknown agent,
    a bad cron expression or time zone is 422; past SCHEDULES_MAX_PER_TENANT schedules, 409.
    """
    row = service().create_schedule(body, tenant=tenant())
    return answer(ScheduleOut.of(row), 201, headers={"Location": f"/v1/schedules/{row.id}"})


@bp.get("", operation_id="listSchedules", responses={200: SchedulePage, **problems()})
def list_schedules(query: PageQuery) -> Response:
    """A page of this tenant's schedules, oldest first."""
    rows, total = service().list_schedules(
        Pagination(page=query.page, page_size=query.page_size), tenant=tenant()
    )
    return answer(
        SchedulePage(
            items=[ScheduleOut.of(r) for r in rows], total=total, page=query.page, page_size=query.page_size
        )
    )


@bp.get("/<schedule_id>", operation_id="getSchedule", responses={200: ScheduleOut, **problems(404)})
def get_schedule(path: SchedulePath) -> Response:
    """One schedule, with its next tick and its last run."""
    return answer(ScheduleOut.of(service().get_schedule(path.schedule_id, tenant=tenant())))


@bp.patch(
    "/<schedule_id>",
    operation_id="updateSchedule",
    responses={200: ScheduleOut, **problems(404, *BODY_ERRORS)},
)
def update_schedule(path: SchedulePath, body: ScheduleUpdateBody) -> Response:
    """Change any of the fields; `enabled: false` pauses it (no next tick), and a new cron,
    time zone or re-enabling computes the next tick from now."""
    return answer(ScheduleOut.of(service().update_schedule(path.schedule_id, body, tenant=tenant())))


@bp.delete("/<schedule_id>", operation_id="deleteSchedule", responses={204: None, **problems(404)})
def delete_schedule(path: SchedulePath) -> Response:
    """Delete a schedule; the executions it created stay."""
    service().delete_schedule(path.schedule_id, tenant=tenant())
    return Response(status=204)
