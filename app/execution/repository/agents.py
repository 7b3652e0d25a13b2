"""Agents and API keys: the rows that executions and callers belong to."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from app.errors import ConflictError
from app.execution.repository.base import RepositoryBase, unique_violation
from app.models import Agent, ApiKey, Execution
from app.schemas import FINISHED_STATES, Pagination


@contextmanager
def _name_taken(name: Any) -> Iterator[None]:
    """A unique violation inside the block is a taken agent name: ConflictError."""
    try:
        yield
    except IntegrityError as exc:
        if unique_violation(exc):
            raise ConflictError(f"an agent named {name!r} already exists") from exc
        raise


class AgentRows(RepositoryBase):
    """Handles all database operations for agents and API keys."""

    def create_agent(self, agent: Agent) -> Agent:
        """Insert an agent; ConflictError when its name is taken in its tenant."""
        with self._work(None, "create_agent", autocommit=False) as work:
            work.session.add(agent)
            with _name_taken(agent.name):
                work.session.flush()
            return agent

    def tokens_today(self, agent_id: uuid.UUID) -> int:
        """The tokens the agent's executions used on the current UTC day."""
        sql = (
            "SELECT sum(total_tokens) FROM agent_usage_daily"
            " WHERE agent_id = %(a)s AND day = (now() AT TIME ZONE 'UTC')::date"
        )
        with self._work(None, "tokens_today") as work:
            return int(work.connection.exec_driver_sql(sql, {"a": agent_id}).scalar() or 0)

    def get_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> Agent | None:
        """The agent, or None."""
        stmt = select(Agent).where(Agent.id == agent_id)
        if tenant is not None:
            stmt = stmt.where(Agent.tenant == tenant)
        with self._work(None, "get_agent") as work:
            return work.session.scalars(stmt).one_or_none()

    def list_agents(
        self, pagination: Pagination | dict[str, int], *, tenant: str | None = None
    ) -> tuple[list[Agent], int]:
        """A page of agents by name, and their total."""
        p = pagination if isinstance(pagination, Pagination) else Pagination(**pagination)
        where = [] if tenant is None else [Agent.tenant == tenant]
        with self._work(None, "list_agents") as work:
            total = work.session.scalar(select(func.count()).select_from(Agent).where(*where)) or 0
            items = list(
                work.session.scalars(
                    select(Agent)
                    .where(*where)
                    .order_by(Agent.name, Agent.id)
                    .offset((p.page - 1) * p.page_size)
                    .limit(p.page_size)
                )
            )
            return items, int(total)

    def update_agent(
        self, agent_id: uuid.UUID, changes: dict[str, Any], *, tenant: str | None = None
    ) -> Agent | None:
        """Apply `changes` to the agent; None when not found; ConflictError on a taken name."""
        stmt = update(Agent).where(Agent.id == agent_id)
        if tenant is not None:
            stmt = stmt.where(Agent.tenant == tenant)
        stmt = stmt.values(**changes, updated_at=func.now()).returning(Agent)
        with self._work(None, "update_agent") as work, _name_taken(changes.get("name")):
            return work.session.scalars(stmt).one_or_none()

    def delete_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> bool:
        """Delete an agent and its finished executions in ONE transaction; False when not found.

        The agent row is locked first (FOR UPDATE), so an execution being created for it
        (whose insert takes FOR KEY SHARE on the agent) either commits before the check
        below sees it, or finds no agent once this commits. ConflictError while any
        execution of the agent is not finished; then nothing is deleted.
        """
        found = select(Agent.id).where(Agent.id == agent_id).with_for_update()
        if tenant is not None:
            found = found.where(Agent.tenant == tenant)
        active = (
            select(Execution.id)
            .where(Execution.agent_id == agent_id, Execution.state.notin_([s.value for s in FINISHED_STATES]))
            .limit(1)
        )
        with self._work(None, "delete_agent", autocommit=False) as work:
            if work.session.scalar(found) is None:
                return False
            if work.session.scalar(active) is not None:
                raise ConflictError(f"agent {agent_id} has executions that are not finished")
            work.session.execute(delete(Execution).where(Execution.agent_id == agent_id))
            work.session.execute(delete(Agent).where(Agent.id == agent_id))
            return True

    # ------------------------------------------------------------------ API keys

    def create_api_key(self, row: ApiKey) -> ApiKey:
        """Insert an API key row."""
        with self._work(None, "create_api_key", autocommit=False) as work:
            work.session.add(row)
            work.session.flush()
            return row

    def find_api_key(self, key_hash: str) -> tuple[uuid.UUID, str] | None:
        """(id, tenant) of the unrevoked key with this hash, or None."""
        stmt = select(ApiKey.id, ApiKey.tenant).where(
            ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
        )
        with self._work(None, "find_api_key") as work:
            row = work.session.execute(stmt).one_or_none()
        return None if row is None else (row.id, row.tenant)

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (or a tenant's), newest first."""
        stmt = select(ApiKey).order_by(ApiKey.created_at.desc())
        if tenant is not None:
            stmt = stmt.where(ApiKey.tenant == tenant)
        with self._work(None, "list_api_keys") as work:
            return list(work.session.scalars(stmt))

    def revoke_api_key(self, key_id: uuid.UUID) -> str | None:
        """Revoke a key; its hash, or None when unknown or already revoked."""
        stmt = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiKey.key_hash)
        )
        with self._work(None, "revoke_api_key") as work:
            return work.session.scalar(stmt)
