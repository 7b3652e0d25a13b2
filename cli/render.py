"""How the CLI shows things: tables of executions and agents, one execution, events, results, errors."""

from __future__ import annotations

import json
from typing import Any

from agentexec_client import AgentexecError, ConnectionFailed, ExecutionState
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_STYLES: dict[str, str] = {
    ExecutionState.COMPLETED: "green",
    ExecutionState.FAILED: "red",
    ExecutionState.TIMED_OUT: "red",
    ExecutionState.CANCELLED: "yellow",
    ExecutionState.CANCELLING: "yellow",
    ExecutionState.PAUSING: "cyan",
    ExecutionState.PAUSED: "cyan",
    ExecutionState.RUNNING: "blue",
    ExecutionState.QUEUED: "magenta",
    ExecutionState.PENDING: "dim",
}
STATE_GLYPHS: dict[str, str] = {
    ExecutionState.COMPLETED: "[green]✓[/green]",
    ExecutionState.FAILED: "[red]✗[/red]",
    ExecutionState.TIMED_OUT: "[red]✗[/red]",
    ExecutionState.CANCELLED: "[yellow]✗[/yellow]",
}
UNREACHABLE_HINT = " (is it running? set --api-url or AGENTEXEC_API_URL)"
# An error code that only repeats its state is not shown next to it.
SAID_BY_STATE = {"cancelled": ExecutionState.CANCELLED, "timeout": ExecutionState.TIMED_OUT}


class CliError(Exception):
    """A failure of the CLI itself to report as one line (exit code 1)."""


def error_line(exc: CliError | AgentexecError) -> str:
    """The one line an error is reported as; an API that was never reached gets a hint."""
    text = str(exc)
    if isinstance(exc, ConnectionFailed) and not exc.connected:
        text += UNREACHABLE_HINT
    return text


def state_text(state: str | None) -> str:
    """The state, coloured by its meaning."""
    state = str(state or "?")
    style = STATE_STYLES.get(state, "")
    return f"[{style}]{state}[/{style}]" if style else state


def state_reason(state: Any, error_code: Any = None, waiting_reason: Any = None) -> str | None:
    """Why an execution ended (its error_code) or why a QUEUED one waits; None when nothing to add."""
    if error_code and SAID_BY_STATE.get(str(error_code)) != str(state):
        return str(error_code)
    if waiting_reason and str(state) == ExecutionState.QUEUED:
        return f"waiting: {waiting_reason}"
    return None


def state_detail(state: Any, error_code: Any = None, waiting_reason: Any = None) -> str:
    """The state, coloured, followed by `state_reason` in parentheses when there is one."""
    reason = state_reason(state, error_code, waiting_reason)
    return state_text(state) + (f" [dim]({escape(reason)})[/dim]" if reason else "")


def state_of(item: dict[str, Any]) -> str:
    """`state_detail` of an execution as JSON."""
    return state_detail(item.get("state"), item.get("error_code"), item.get("waiting_reason"))


def state_glyph(state: str | None) -> str:
    """How an execution ended, as one coloured character (blank while it has not ended)."""
    return STATE_GLYPHS.get(str(state or ""), " ")


def short_time(value: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' (empty for none)."""
    if not value:
        return ""
    return value.replace("T", " ")[:19]


def print_json(data: Any) -> None:
    """Plain JSON on stdout, for scripts: never coloured, even on a terminal or with FORCE_COLOR."""
    out.file.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    out.file.flush()


def print_json_line(data: Any) -> None:
    """One JSON object on one line of stdout (JSON Lines), for a stream a script reads as it comes."""
    out.file.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    out.file.flush()


def executions_table(items: list[dict[str, Any]], agent_names: dict[str, str]) -> Table:
    """The executions list: id, agent, state, progress, attempt, created."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("AGENT", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("ATTEMPT", justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    for item in items:
        progress = item.get("progress") or {}
        pct = progress.get("percentage")
        agent_id = str(item.get("agent_id"))
        table.add_row(
            str(item.get("id")),
            escape(agent_names.get(agent_id, agent_id)),
            state_of(item),
            "" if pct is None else f"{float(pct):.0f}%",
            str(item.get("attempt", "")),
            short_time(item.get("created_at")),
        )
    return table


def agents_table(items: list[dict[str, Any]]) -> Table:
    """The agents list: id, name, model, created."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("ID", "NAME", "MODEL", "CREATED"):
        table.add_column(name, no_wrap=True)
    for item in items:
        table.add_row(
            str(item.get("id")),
            escape(str(item.get("name"))),
            escape(str(item.get("model", ""))),
            short_time(item.get("created_at")),
        )
    return table


def result_text(result: Any) -> str:
    """The readable part of a result: its `output` when it has one, else the JSON."""
    if isinstance(result, dict) and isinstance(result.get("output"), str):
        return result["output"]
    if isinstance(result, str):
        return result
    return json.dumps(result, indent=2, default=str)


def show_execution(item: dict[str, Any], agent_name: str | None = None) -> None:
    """One execution as aligned fields, then its result or error."""
    progress = item.get("progress") or {}
    params = item.get("parameters") or {}
    rows = [
        ("id", item.get("id")),
        ("agent", f"{agent_name} ({item.get('agent_id')})" if agent_name else item.get("agent_id")),
        ("type", params.get("type", "standard")),
        ("state", state_of(item)),
        (
            "progress",
            f"{float(progress.get('percentage') or 0):.0f}%"
            + (f"  {escape(str(progress['message']))}" if progress.get("message") else ""),
        ),
        ("attempt", f"{item.get('attempt')} (max retries {item.get('max_retries')})"),
        ("queue", f"{item.get('queue')}  priority {item.get('priority')}"),
        ("timeout", f"{item.get('timeout_seconds')} s"),
        ("tokens", _tokens(item)),
        ("created", short_time(item.get("created_at"))),
        ("scheduled", short_time(item.get("scheduled_at"))),
        ("started", short_time(item.get("started_at"))),
        ("completed", short_time(item.get("completed_at"))),
    ]
    if item.get("task_id"):
        rows.insert(2, ("task", item.get("task_id")))
    for key, value in rows:
        if value not in (None, "", "None s"):
            text = str(value) if key in ("state", "progress") else escape(str(value))
            out.print(f"[bold]{key:<10}[/bold] {text}")
    if item.get("error_message"):
        out.print(f"[bold red]error[/bold red]  {escape(str(item['error_message']))}")
    if item.get("result") is not None:
        out.print("[bold]result[/bold]")
        out.print(escape(result_text(item["result"])))


def _tokens(item: dict[str, Any]) -> str:
    """'120 (prompt 100, completion 20) of at most 5000', or empty before any was used or allowed."""
    usage, cap = item.get("usage") or {}, item.get("max_tokens")
    total = usage.get("total_tokens") or 0
    if not total and cap is None:
        return ""
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    text = f"{total} (prompt {prompt}, completion {completion})"
    return text + (f" of at most {cap}" if cap is not None else "")


def event_line(event: dict[str, Any]) -> str:
    """One event as a line: id, time, type and what it says."""
    payload = event.get("payload") or {}
    kind = str(event.get("type", ""))
    if kind.endswith("state_changed"):
        what = f"{payload.get('previous_state') or '-'} -> {state_text(payload.get('new_state'))}"
        if payload.get("reason"):
            what += f"  ({escape(str(payload['reason']))})"
    elif kind.endswith("progress"):
        what = f"{float(payload.get('percentage') or 0):5.1f}%  {escape(str(payload.get('message') or ''))}"
    elif kind.endswith("output.delta"):
        step = f"{payload['step']}: " if payload.get("step") else ""
        reset = "(reset) " if payload.get("reset") else ""
        what = f"{escape(step)}{reset}{escape(json.dumps(payload.get('delta', ''), ensure_ascii=False))}"
    elif kind.endswith("completed"):
        what = state_detail(payload.get("state"), payload.get("error_code"))
        if payload.get("error_message"):
            what += f"  {escape(str(payload['error_message']))}"
    else:
        what = escape(json.dumps(payload, default=str))
    short = kind.rsplit(".", 1)[-1]
    return f"{event.get('id', ''):>6}  {short_time(event.get('created_at'))}  {short:<13}  {what}"
