"""Execution commands: submit (and watch), list, show, history, events, cancel/pause/resume/retry."""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from agentexec_client import FINAL_STATES, AgentexecError, ErrorCode, ExecutionState, OnConflict
from rich.markup import escape
from rich.table import Table

from cli.agents import key_values, resolve_agent
from cli.context import client_of
from cli.render import (
    err,
    event_line,
    executions_table,
    out,
    print_json,
    short_time,
    show_execution,
    state_detail,
    state_text,
)
from cli.respond import watch_and_respond
from cli.watch import follow_lines, report_outcome, watch_execution

EVENTS_PAGE = 1000
EVENT_ID = re.compile(r"[0-9]{1,19}(\.[0-9]{1,19})?")
EVENT_PREFIX = "agent.execution."


def event_types(given: list[str] | None) -> list[str] | None:
    """`--types` as full event type names: comma-separated or repeated, `progress` or the full name."""
    if not given:
        return None
    names = [n.strip() for g in given for n in g.split(",") if n.strip()]
    return [n if n.startswith(EVENT_PREFIX) else EVENT_PREFIX + n for n in names] or None


IN_PROGRESS = frozenset({ExecutionState.CANCELLING, ExecutionState.PAUSING})


class TaskType(str, Enum):
    """The task types of an execution."""

    standard = "standard"
    pipeline = "pipeline"
    agent = "agent"


def _read_params(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--params") from None
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not JSON: {exc}", param_hint="--params") from None
    if not isinstance(params, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object", param_hint="--params")
    return params


def build_parameters(
    input_text: str | None,
    params_file: str | None,
    task_type: TaskType | None,
    steps: list[str],
    simulate: list[str],
) -> dict[str, Any]:
    """The `parameters` of the request, from --input or --params, --type, --step and --simulate."""
    if (input_text is None) == (params_file is None):
        raise typer.BadParameter("give exactly one of --input or --params", param_hint="--input/--params")
    params: dict[str, Any] = _read_params(params_file) if params_file is not None else {"input": input_text}
    if task_type is not None:
        params["type"] = task_type.value
    if steps:
        parsed = []
        for step in steps:
            name, sep, prompt = step.partition("=")
            if not sep or not name or not prompt:
                raise typer.BadParameter(f"expected NAME=PROMPT, got {step!r}", param_hint="--step")
            parsed.append({"name": name, "prompt": prompt})
        params.setdefault("type", TaskType.pipeline.value)
        params["steps"] = parsed
    if params.get("type") == TaskType.pipeline.value and not params.get("steps"):
        raise typer.BadParameter("a pipeline needs at least one --step NAME=PROMPT", param_hint="--step")
    if params.get("type", "standard") == TaskType.standard.value and params.get("steps"):
        raise typer.BadParameter("--step needs --type pipeline", param_hint="--step")
    if simulate:
        params["simulate"] = (params.get("simulate") or {}) | key_values(simulate, "--simulate")
    return params


def submit(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    input_text: Annotated[str | None, typer.Option("--input", "-i", help="The task input.")] = None,
    params_file: Annotated[
        str | None,
        typer.Option(
            "--params", "-p", metavar="FILE", help="JSON file with the parameters object ('-': stdin)."
        ),
    ] = None,
    task_type: Annotated[TaskType | None, typer.Option("--type", "-t", help="Task type.")] = None,
    step: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            "-s",
            metavar="NAME=PROMPT",
            help="A pipeline step; the prompt may use {input} and {steps.NAME}. Repeatable.",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", "-k", help="Idempotency-Key header.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow progress until it ends.")] = False,
    priority: Annotated[int | None, typer.Option("--priority", min=0, max=9, help="0-9, 9 first.")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="Celery queue.")] = None,
    timeout_seconds: Annotated[int | None, typer.Option("--timeout-seconds", min=1)] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries", min=0)] = None,
    task_id: Annotated[
        uuid.UUID | None,
        typer.Option("--task-id", metavar="UUID", help="Your id of the task (several runs may share it)."),
    ] = None,
    on_conflict: Annotated[
        OnConflict | None,
        typer.Option(
            "--on-conflict",
            case_sensitive=False,
            help="While another run of --task-id is active: run both (allow), refuse (reject), wait "
            "for it (enqueue) or cancel it (interrupt). Default: the agent's, else allow.",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Token budget of the whole execution.")
    ] = None,
    simulate: Annotated[
        list[str] | None,
        typer.Option(
            "--simulate",
            metavar="KEY=VALUE",
            help="Simulated-model knob: latency_ms, fail_times, fail_permanently, chunks. Repeatable.",
        ),
    ] = None,
    delay_seconds: Annotated[
        float | None,
        typer.Option(
            "--delay-seconds", min=0, help="Start it this many seconds from now (PENDING until then)."
        ),
    ] = None,
    start_at: Annotated[
        datetime | None,
        typer.Option(
            "--start-at",
            metavar="TIME",
            help="Start it at this time (ISO 8601, e.g. 2026-12-01T08:00:00; UTC unless an offset is given).",
        ),
    ] = None,
) -> None:
    """Submit an execution to an agent; with --watch, show its progress and then its result."""
    if delay_seconds is not None and start_at is not None:
        raise typer.BadParameter("give --delay-seconds or --start-at, not both", param_hint="--start-at")
    if start_at is not None and start_at.tzinfo is None:
        start_at = start_at.replace(tzinfo=UTC)
    parameters = build_parameters(input_text, params_file, task_type, step or [], simulate or [])
    client = client_of(ctx)
    found = resolve_agent(client, agent)
    execution = client.executions.create(
        found.id,
        parameters,
        idempotency_key=idempotency_key or None,
        priority=priority,
        queue=queue,
        timeout_seconds=timeout_seconds,
        max_retries=max_retries,
        task_id=task_id,
        on_conflict=on_conflict,
        max_tokens=max_tokens,
        delay_seconds=delay_seconds,
        start_at=start_at,
    )
    again = "" if execution.created else " (existing, same idempotency key)"
    shown = state_detail(execution.state, waiting_reason=execution.waiting_reason)
    err.print(f"submitted {execution.id} to {escape(found.name)}: {shown}{again}")
    if not watch:
        out.print(str(execution.id))
        return
    final, waiting = watch_and_respond(client, execution, watch_execution)
    raise typer.Exit(waiting if waiting is not None else report_outcome(final))


def list_executions(
    ctx: typer.Context,
    state: Annotated[
        list[ExecutionState] | None,
        typer.Option("--state", case_sensitive=False, help="Only these states; repeatable."),
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Agent id or name.")] = None,
    error_code: Annotated[
        list[ErrorCode] | None,
        typer.Option("--error-code", case_sensitive=False, help="Only those that ended so; repeatable."),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata", "-m", metavar="KEY=VALUE", help="Metadata holds KEY=VALUE; repeatable (all)."
        ),
    ] = None,
    page: Annotated[int, typer.Option("--page", min=1)] = 1,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=200)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON.")] = False,
) -> None:
    """List executions, newest first."""
    client = client_of(ctx)
    agent_id = resolve_agent(client, agent).id if agent else None
    pairs = [m.partition("=") for m in metadata or []]
    if any(not key or not sep for key, sep, _ in pairs):
        raise typer.BadParameter("give KEY=VALUE", param_hint="--metadata")
    found = client.executions.list_page(
        page,
        page_size,
        state=state,
        agent=agent_id,
        error_code=error_code,
        metadata={key: value for key, _, value in pairs} or None,
    )
    body = found.model_dump(mode="json")
    if as_json:
        print_json(body)
        return
    names = {str(a.id): a.name for a in client.agents.list()}
    out.print(executions_table(body["items"], names))
    about = "" if found.total_exact else "about "
    err.print(f"[dim]{len(found.items)} of {about}{found.total} (page {found.page})[/dim]")


def show(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="Execution id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the execution as JSON.")] = False,
) -> None:
    """Show one execution."""
    client = client_of(ctx)
    item = client.executions.get(execution_id)
    if as_json:
        print_json(item.model_dump(mode="json"))
        return
    try:
        name: str | None = client.agents.get(item.agent_id).name
    except AgentexecError:  # the agent's name is a nicety; the execution is what was asked for
        name = None
    show_execution(item.model_dump(mode="json"), name)


def history(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="Execution id.")],
    limit: Annotated[int, typer.Option("--limit", min=1, help="The last N transitions.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the transitions as a JSON array.")] = False,
) -> None:
    """Show the state history of an execution, oldest first."""
    items = client_of(ctx).executions.history(execution_id, limit=limit)
    if as_json:
        print_json([item.model_dump(mode="json") for item in items])
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("AT", "FROM", "TO", "REASON"):
        table.add_column(name, no_wrap=name != "REASON")
    for row in (item.model_dump(mode="json") for item in items):
        table.add_row(
            short_time(row.get("created_at")),
            row.get("from_state") or "-",
            state_text(row.get("to_state")),
            escape(str(row.get("reason") or "")),
        )
    out.print(table)


def events(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="Execution id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new events until the end.")] = False,
    after: Annotated[
        str | None,
        typer.Option("--after", help="Only events after this event id (E, or E.k for an output delta)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array; with --follow, one JSON object per line.")
    ] = False,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--types",
            help="Only these event types (repeat or comma-separate; the last part is enough: "
            "state_changed, progress, completed, output.delta). --follow shows output deltas "
            "unless --types leaves them out; without --follow they are shown only when named.",
        ),
    ] = None,
) -> None:
    """Show the events of an execution; with --follow, stream them (and the output) until it ends."""
    client = client_of(ctx)
    if after is not None and not EVENT_ID.fullmatch(after):
        raise typer.BadParameter(f"{after!r} is not an event id (E or E.k)", param_hint="--after")
    wanted = event_types(types)
    if not follow:
        found = client.executions.events(execution_id, after=after or 0, page_size=EVENTS_PAGE, types=wanted)
        if as_json:
            print_json([event.model_dump(mode="json") for event in found])
            return
        for event in found:
            out.print(event_line(event.model_dump(mode="json")))
        return
    final = follow_lines(client, execution_id, after, as_json=as_json, types=wanted)
    raise typer.Exit(0 if final in (None, "COMPLETED") else 1)


def _control(action: str) -> Any:
    def command(
        ctx: typer.Context,
        execution_id: Annotated[str, typer.Argument(metavar="ID", help="Execution id.")],
        reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why (kept in history).")] = None,
    ) -> None:
        item = getattr(client_of(ctx).executions, action)(execution_id, reason=reason or None)
        # CANCELLING and PAUSING (the API's 202) are the states a worker still has to finish.
        pending = " (in progress)" if item.state in IN_PROGRESS and item.state not in FINAL_STATES else ""
        out.print(f"{item.id}  {state_text(item.state)}{pending}")

    command.__doc__ = f"{action.capitalize()} an execution."
    return command


def register(app: typer.Typer) -> None:
    """Add the execution commands to the root app."""
    app.command("submit")(submit)
    app.command("list")(list_executions)
    app.command("show")(show)
    app.command("history")(history)
    app.command("events")(events)
    for action in ("cancel", "pause", "resume", "retry"):
        app.command(action)(_control(action))
