"""`agentexec agents create|update|list|show|delete`, and resolving an agent given by id or name."""

from __future__ import annotations

import json
import uuid
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from agentexec_client import NOT_GIVEN, Agent, Client, NotFound, NotGiven, OnConflict

from cli.context import client_of
from cli.render import CliError, agents_table, err, out, print_json

app = typer.Typer(help="Create, update, list, show and delete agents.", no_args_is_help=True)


class OnConflictOrNone(str, Enum):
    """An agent's default collision policy, or `none` to remove it (then: allow)."""

    allow = "allow"
    reject = "reject"
    enqueue = "enqueue"
    interrupt = "interrupt"
    none = "none"


ON_CONFLICT_HELP = (
    "Default for its executions while another run of the same task_id is active: allow, reject, "
    "enqueue or interrupt."
)
SystemPrompt = Annotated[str | None, typer.Option("--system-prompt", "-s", help="System prompt.")]
SystemPromptFile = Annotated[
    Path | None,
    typer.Option(
        "--system-prompt-file", exists=True, dir_okay=False, help="Read the system prompt from a file."
    ),
]
Params = Annotated[
    list[str] | None,
    typer.Option("--param", help="Agent parameter KEY=VALUE (VALUE as JSON when it parses); repeatable."),
]
MaxConcurrency = Annotated[
    int | None,
    typer.Option("--max-concurrency", min=0, help="At most N of its executions running at once; 0: none."),
]
DailyTokenBudget = Annotated[
    int | None,
    typer.Option("--daily-token-budget", min=0, help="Tokens its executions may use per UTC day; 0: none."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the agent as JSON.")]


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


def _system_prompt(text: str | None, path: Path | None) -> str | None:
    if text is not None and path is not None:
        raise typer.BadParameter("give --system-prompt or --system-prompt-file, not both")
    return path.read_text() if path is not None else text


def _limit(value: int | None) -> int | None | NotGiven:
    """A limit option: not given (left alone), 0 (removed: None) or N."""
    return NOT_GIVEN if value is None else (value or None)


def _print_agent(agent: Agent, as_json: bool, done: str) -> None:
    if as_json:
        print_json(agent.model_dump(mode="json"))
    else:
        out.print(str(agent.id))
        err.print(f"{done} agent {agent.name!r}")


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique agent name.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    system_prompt: SystemPrompt = None,
    system_prompt_file: SystemPromptFile = None,
    param: Params = None,
    max_concurrency: MaxConcurrency = None,
    on_conflict: Annotated[
        OnConflict | None, typer.Option("--on-conflict", case_sensitive=False, help=ON_CONFLICT_HELP)
    ] = None,
    daily_token_budget: DailyTokenBudget = None,
    tool: Annotated[
        list[str] | None,
        typer.Option(
            "--tool",
            metavar="JSON",
            help='A tool its agent tasks may call, as JSON: {"name", "description", "parameters" '
            '(an object JSON Schema), "kind": "client" or "http", "url" (http only)}. Repeatable.',
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Create an agent."""
    agent = client_of(ctx).agents.create(
        name,
        model=model or None,
        system_prompt=_system_prompt(system_prompt, system_prompt_file),
        parameters=key_values(param, "--param") if param else None,
        max_concurrency=max_concurrency or None,
        on_conflict=on_conflict,
        daily_token_budget=daily_token_budget or None,
        tools=_tools(tool) if tool else None,
    )
    _print_agent(agent, as_json, "created")


def _tools(given: list[str]) -> list[dict[str, Any]]:
    tools = []
    for text in given:
        try:
            tool = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--tool") from None
        if not isinstance(tool, dict):
            raise typer.BadParameter("each --tool is a JSON object", param_hint="--tool")
        tools.append(tool)
    return tools


@app.command("update")
def update(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name.")] = None,
    system_prompt: SystemPrompt = None,
    system_prompt_file: SystemPromptFile = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Replace the parameters: KEY=VALUE (VALUE as JSON); repeatable."),
    ] = None,
    max_concurrency: MaxConcurrency = None,
    on_conflict: Annotated[
        OnConflictOrNone | None,
        typer.Option("--on-conflict", case_sensitive=False, help=ON_CONFLICT_HELP + " none: remove it."),
    ] = None,
    daily_token_budget: DailyTokenBudget = None,
    as_json: AsJson = False,
) -> None:
    """Change an agent: only the options given (0 or none removes a limit)."""
    limits = (max_concurrency, on_conflict, daily_token_budget)
    if all(v is None for v in (name, model, system_prompt, system_prompt_file, param, *limits)):
        raise typer.BadParameter("give at least one option to change")
    prompt = _system_prompt(system_prompt, system_prompt_file)
    client = client_of(ctx)
    found = resolve_agent(client, agent)
    policy: OnConflict | None | NotGiven = NOT_GIVEN
    if on_conflict is not None:
        policy = None if on_conflict is OnConflictOrNone.none else OnConflict(on_conflict.value)
    changed = client.agents.update(
        found.id,
        name=name,
        model=model,
        system_prompt=prompt,
        parameters=key_values(param, "--param") if param else None,
        max_concurrency=_limit(max_concurrency),
        on_conflict=policy,
        daily_token_budget=_limit(daily_token_budget),
    )
    _print_agent(changed, as_json, "updated")


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
