"""`--watch`: follow an execution's event stream with a live progress bar until it ends."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cli.client import COMPLETED_EVENT, FINAL_STATES, ApiClient
from cli.render import err, event_line, out, result_text, state_text


def _progress_bar() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[state]}"),
        BarColumn(bar_width=30),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=False,
    )


def watch_execution(client: ApiClient, execution: dict[str, Any]) -> dict[str, Any]:
    """Show live progress from the SSE stream; returns the execution as it ended."""
    execution_id = str(execution["id"])
    state = str(execution.get("state", "QUEUED"))
    with _progress_bar() as bar:
        task = bar.add_task("", total=100, state=state_text(state))
        if state not in FINAL_STATES:
            for event in client.follow_events(execution_id):
                payload = event.payload
                if event.type.endswith("state_changed") and payload.get("new_state"):
                    state = str(payload["new_state"])
                    bar.update(task, state=state_text(state))
                elif event.type.endswith("progress"):
                    bar.update(
                        task,
                        completed=float(payload.get("percentage") or 0),
                        description=escape(str(payload.get("message") or "")),
                    )
                elif event.type == COMPLETED_EVENT:
                    state = str(payload.get("state") or state)
                    done = 100 if state == "COMPLETED" else bar.tasks[0].completed
                    bar.update(task, completed=done, state=state_text(state))
        final = client.get(f"/v1/executions/{execution_id}")
        if final.get("state") == "COMPLETED":
            bar.update(task, completed=100, state=state_text("COMPLETED"))
    return final


def report_outcome(final: dict[str, Any]) -> int:
    """Print the result (stdout) or the error (stderr); the exit code of the final state."""
    state = final.get("state")
    if state == "COMPLETED":
        out.print(escape(result_text(final.get("result"))))
        return 0
    message = final.get("error_message") or "no error message"
    err.print(f"[bold red]{state}[/bold red]: {escape(str(message))}")
    return 1


def follow_lines(client: ApiClient, execution_id: str, after: str | None) -> str | None:
    """Print each event as it arrives until the completed one; returns the final state."""
    final_state = None
    for event in client.follow_events(execution_id, after=after):
        data = event.data if isinstance(event.data, dict) else {"type": event.type, "id": event.id}
        out.print(event_line(data))
        if event.type == COMPLETED_EVENT:
            final_state = event.payload.get("state")
    return final_state
