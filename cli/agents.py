"""`agentexec agents create|list|show|delete`, and resolving an agent given by id or name."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from agentexec_client import Agent, Client, NotFound

from cli.context import client_of
from cli.render import CliError, agents_table, err, out, print_json

app = typer.Typer(help="Create, list, show and delete agents.", no_args_is_help=True)


def resolve_agent(client: Client, ref: str) -> Agent:
    """The agent with this id or (else) this name; CliError when no agent has the name."""
    try:
        return client.agents.get(ref)
    except NotFound:
        if _is_id(ref):
            raise  # an id the API does not know: its own 404 line
        raise CliError(f"no agent named {ref!r} (see `agentexec agents list`)") from None


def _is_id(ref: str) -> bool:
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


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
    if system_prompt_file is not None:
        system_prompt = system_prompt_file.read_text()
    agent = client_of(ctx).agents.create(
        name,
        model=model or None,
        system_prompt=system_prompt,
        parameters=key_values(param, "--param") if param else None,
    )
    if as_json:
        print_json(agent.model_dump(mode="json"))
    else:
        out.print(str(agent.id))
        err.print(f"created agent {agent.name!r}")


@app.command("list")
def list_agents(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agents as JSON.")] = False,
) -> None:
    """List agents."""
    agents = [a.model_dump(mode="json") for a in client_of(ctx).agents.list()]
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
    print_json(resolve_agent(client_of(ctx), agent).model_dump(mode="json"))


@app.command("delete")
def delete(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
) -> None:
    """Delete an agent."""
    client = client_of(ctx)
    found = resolve_agent(client, agent)
    client.agents.delete(found.id)
    err.print(f"deleted agent {found.name!r}")
