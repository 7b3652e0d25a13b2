"""`agentexec agents create|list|show|delete`, and resolving an agent given by id or name."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import ApiClient, CliError
from cli.context import client_of
from cli.render import agents_table, err, out, print_json

app = typer.Typer(help="Create, list, show and delete agents.", no_args_is_help=True)

PAGE_SIZE = 200


def iter_agents(client: ApiClient) -> list[dict[str, Any]]:
    """Every agent, page by page."""
    agents: list[dict[str, Any]] = []
    page = 1
    while True:
        body = client.get("/v1/agents", page=page, page_size=PAGE_SIZE)
        items = body if isinstance(body, list) else body.get("items", [])
        agents.extend(items)
        total = None if isinstance(body, list) else body.get("total")
        if isinstance(body, list) or not items or total is None or len(agents) >= int(total):
            return agents
        page += 1


def resolve_agent(client: ApiClient, ref: str) -> dict[str, Any]:
    """The agent with this id or (else) this name; CliError when there is none."""
    try:
        agent_id = uuid.UUID(ref)
    except ValueError:
        agent_id = None
    if agent_id is not None:
        return client.get(f"/v1/agents/{agent_id}")
    for agent in iter_agents(client):
        if agent.get("name") == ref:
            return agent
    raise CliError(f"no agent named {ref!r} (see `agentexec agents list`)")


def key_values(pairs: list[str], option: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique agent name.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", "-s", help="System prompt.")] = None,
    system_prompt_file: Annotated[
        Path | None,
        typer.Option(
            "--system-prompt-file", exists=True, dir_okay=False, help="Read the system prompt from a file."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Agent parameter KEY=VALUE (VALUE as JSON when it parses); repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agent as JSON.")] = False,
) -> None:
    """Create an agent."""
    if system_prompt is not None and system_prompt_file is not None:
        raise typer.BadParameter("give --system-prompt or --system-prompt-file, not both")
    body: dict[str, Any] = {"name": name}
    if model:
        body["model"] = model
    if system_prompt_file is not None:
        body["system_prompt"] = system_prompt_file.read_text()
    elif system_prompt is not None:
        body["system_prompt"] = system_prompt
    if param:
        body["parameters"] = key_values(param, "--param")
    agent = client_of(ctx).post("/v1/agents", body).json()
    if as_json:
        print_json(agent)
    else:
        out.print(agent["id"])
        err.print(f"created agent {agent['name']!r}")


@app.command("list")
def list_agents(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agents as JSON.")] = False,
) -> None:
    """List agents."""
    agents = iter_agents(client_of(ctx))
    if as_json:
        print_json(agents)
    else:
        out.print(agents_table(agents))


@app.command("show")
def show(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
) -> None:
    """Show one agent as JSON."""
    print_json(resolve_agent(client_of(ctx), agent))


@app.command("delete")
def delete(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
) -> None:
    """Delete an agent."""
    client = client_of(ctx)
    found = resolve_agent(client, agent)
    client.delete(f"/v1/agents/{found['id']}")
    err.print(f"deleted agent {found.get('name')!r}")
