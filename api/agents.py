"""/v1/agents: create, list, read, change and delete agents."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from api.deps import answer, service, tenant
from api.models import AgentCreateBody, AgentOut, AgentPage, AgentPath, AgentUpdateBody, PageQuery
from api.openapi import BODY_ERRORS, problems
from api.security import SECURITY
from app.schemas import Pagination

bp = APIBlueprint(
    "agents",
    __name__,
    url_prefix="/v1/agents",
    abp_security=SECURITY,
    abp_tags=[Tag(name="agents", description="Named model configurations")],
)


@bp.post("", operation_id="createAgent", responses={201: AgentOut, **problems(409, *BODY_ERRORS)})
def create_agent(body: AgentCreateBody) -> Response:
    """Create an agent (409 when the name is taken)."""
    return answer(AgentOut.of(service().create_agent(body, tenant=tenant())), 201)


@bp.get("", operation_id="listAgents", responses={200: AgentPage, **problems()})
def list_agents(query: PageQuery) -> Response:
    """A page of agents, by name."""
    rows, total = service().list_agents(
        Pagination(page=query.page, page_size=query.page_size), tenant=tenant()
    )
    return answer(
        AgentPage(
            items=[AgentOut.of(r) for r in rows], total=total, page=query.page, page_size=query.page_size
        )
    )


@bp.get("/<agent_id>", operation_id="getAgent", responses={200: AgentOut, **problems(404)})
def get_agent(path: AgentPath) -> Response:
    """One agent."""
    return answer(AgentOut.of(service().get_agent(path.agent_id, tenant=tenant())))


@bp.patch(
    "/<agent_id>", operation_id="updateAgent", responses={200: AgentOut, **problems(404, 409, *BODY_ERRORS)}
)
def update_agent(path: AgentPath, body: AgentUpdateBody) -> Response:
    """Change some fields of an agent (409 when the new name is taken)."""
    return answer(AgentOut.of(service().update_agent(path.agent_id, body, tenant=tenant())))


@bp.delete("/<agent_id>", operation_id="deleteAgent", responses={204: None, **problems(404, 409)})
def delete_agent(path: AgentPath) -> Response:
    """Delete an agent and its finished executions (409 while any execution is active)."""
    service().delete_agent(path.agent_id, tenant=tenant())
    return Response(status=204)
