"""`agentexec usage`: the tokens this tenant's agents used, by agent, UTC day or both (GET /v1/usage)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

import typer
from agentexec_client import UsageItem
from rich.markup import escape
from rich.table import Table

from cli.agents import resolve_agent
from cli.context import client_of
from cli.render import err, out, print_json

DAY = ["%Y-%m-%d"]


class GroupBy(str, Enum):
    """One row per agent, per UTC day, or per agent and day."""

    agent = "agent"
    day = "day"
    agent_day = "agent_day"


def usage_table(items: list[UsageItem], agent_names: dict[str, str], group_by: GroupBy) -> Table:
    """The usage rows: the agent (its name when known) and/or the day, then the counts."""
    by_agent, by_day = group_by != GroupBy.day, group_by != GroupBy.agent
    table = Table(box=None, header_style="bold", pad_edge=False)
    if by_agent:
        table.add_column("AGENT", overflow="fold")
    if by_day:
        table.add_column("DAY", no_wrap=True)
    for name in ("EXECUTIONS", "PROMPT", "COMPLETION", "TOTAL"):
        table.add_column(name, justify="right", no_wrap=True)
    for item in items:
        cells = []
        if by_agent:
            agent_id = str(item.agent_id)
            cells.append(escape(agent_names.get(agent_id, agent_id)))
        if by_day:
            cells.append(str(item.day or ""))
        counts = (item.executions, item.prompt_tokens, item.completion_tokens, item.total_tokens)
        table.add_row(*cells, *(f"{n:,}" for n in counts))
    return table


def usage(
    ctx: typer.Context,
    group_by: Annotated[
        GroupBy, typer.Option("--group-by", case_sensitive=False, help="One row per agent, day or both.")
    ] = GroupBy.agent,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent (id or name).")] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", formats=DAY, metavar="DATE", help="From this UTC day on.")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", formats=DAY, metavar="DATE", help="Up to this UTC day.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON.")] = False,
) -> None:
    """Tokens used by this tenant's agents (days are UTC; both bounds included)."""
    client = client_of(ctx)
    agent_id = resolve_agent(client, agent).id if agent else None
    items = client.usage(
        group_by=group_by.value,
        agent=agent_id,
        created_after=None if since is None else since.date(),
        created_before=None if until is None else until.date(),
    )
    if as_json:
        print_json({"items": [item.model_dump(mode="json") for item in items]})
        return
    if not items:
        err.print("[dim]no usage recorded[/dim]")
        return
    names = {str(a.id): a.name for a in client.agents.list()} if group_by != GroupBy.day else {}
    out.print(usage_table(items, names, group_by))
