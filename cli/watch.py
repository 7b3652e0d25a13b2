"""`--watch`: follow an execution's event stream with a live progress bar until it ends."""

from __future__ import annotations

from agentexec_client import (
    FINAL_STATES,
    Client,
    CompletedEvent,
    Event,
    EventType,
    Execution,
    ExecutionState,
    ProgressEvent,
    StateChangedEvent,
)
from rich.console import RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from cli.render import (
    err,
    event_line,
    out,
    print_json_line,
    result_text,
    state_detail,
    state_glyph,
    state_reason,
    state_text,
)


class OutcomeColumn(SpinnerColumn):
    """A spinner while the execution runs; once it has ended, a still glyph of how it ended."""

    def render(self, task: Task) -> RenderableType:
        outcome = task.fields.get("outcome")
        return super().render(task) if outcome is None else Text.from_markup(outcome)


def _progress_bar() -> Progress:
    return Progress(
        OutcomeColumn(),
        TextColumn("{task.fields[state]}"),
        BarColumn(bar_width=30),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=False,
    )


def watch_execution(client: Client, execution: Execution) -> Execution:
    """Show live progress from the SSE stream; returns the execution as it ended."""
    state = execution.state
    with _progress_bar() as bar:
        shown = state_detail(state, waiting_reason=execution.waiting_reason)
        task = bar.add_task("", total=100, state=shown, outcome=None)
        try:
            if state not in FINAL_STATES:
                for event in client.executions.stream(execution.id):
                    if isinstance(event, StateChangedEvent):
                        state = event.payload.new_state
                        bar.update(task, state=state_text(state))
                        if state == ExecutionState.REQUIRES_ACTION and waits_now(client, execution):
                            break  # an agent waits for tool outputs: cli/respond.py takes over
                    elif isinstance(event, ProgressEvent):
                        bar.update(
                            task,
                            completed=event.payload.percentage,
                            description=escape(event.payload.message or ""),
                        )
                    elif isinstance(event, CompletedEvent):
                        state = event.payload.state
                        bar.update(task, state=state_text(state))
            final = client.executions.get(execution.id)
            done = 100 if final.state == ExecutionState.COMPLETED else bar.tasks[0].completed
            shown = state_detail(final.state, final.error_code, final.waiting_reason)
            bar.update(task, completed=done, state=shown, outcome=state_glyph(final.state))
        finally:
            # Ended, interrupted or cut off: the last frame left on screen must not spin.
            if bar.tasks[0].fields.get("outcome") is None:
                bar.update(task, outcome=" ")
            bar.stop_task(task)
    return final


def report_outcome(final: Execution) -> int:
    """Print the result (stdout) or the error (stderr); the exit code of the final state."""
    if final.state == ExecutionState.COMPLETED:
        out.print(escape(result_text(final.result)))
        return 0
    message = final.error_message or "no error message"
    reason = state_reason(final.state, final.error_code)
    code = f" ({escape(reason)})" if reason else ""
    err.print(f"[bold red]{final.state}[/bold red]{code}: {escape(message)}")
    return 1


def follow_lines(client: Client, execution_id: str, after: int | None, as_json: bool = False) -> str | None:
    """Print each event as it arrives (a line, or a JSON object per line) until the completed one.

    Returns the final state.
    """
    final_state = None
    for event in client.executions.stream(execution_id, last_event_id=after):
        if as_json:
            print_json_line(event.model_dump(mode="json"))
        else:
            out.print(event_line(event.model_dump(mode="json")))
        if isinstance(event, CompletedEvent):
            final_state = event.payload.state.value
        elif isinstance(event, Event) and event.type == EventType.COMPLETED:  # one the SDK could not type
            final_state = str(event.payload.get("state"))
    return final_state


def waits_now(client: Client, execution: Execution) -> bool:
    """True when the execution waits for tool outputs now (not a wait replayed from the past)."""
    return client.executions.get(execution.id).state == ExecutionState.REQUIRES_ACTION
