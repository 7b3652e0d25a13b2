"""/v1/usage: the tenant's token usage by agent and UTC day (from the daily rollup)."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from api.deps import answer, service, tenant
from api.models import UsageItem, UsageOut, UsageQuery
from api.openapi import problems
from api.security import SECURITY

bp = APIBlueprint(
    "usage",
    __name__,
    url_prefix="/v1/usage",
    abp_security=SECURITY,
    abp_tags=[Tag(name="usage", description="Tokens used, by agent and UTC day")],
)


@bp.get("", operation_id="getUsage", responses={200: UsageOut, **problems()})
def get_usage(query: UsageQuery) -> Response:
    """Token usage of this tenant's agents, one item per agent (`group_by=agent`), per UTC day
    (`day`) or per agent and day (`agent_day`), optionally for one agent and a range of days.

    A day counts the executions that ended on it and the tokens recorded on it (a pipeline
    step's when it finished, a run's at its end). At most 1,000 items.
    """
    rows = service().usage(
        tenant=tenant(),
        group_by=query.group_by,
        created_after=query.created_after,
        created_before=query.created_before,
        agent_id=query.agent_id,
    )
    return answer(UsageOut(items=[UsageItem(**row) for row in rows]))
