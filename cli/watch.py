"""`--watch`: follow an execution's event stream with a live progress bar until it ends.

The model's output streams under the bar (its last lines, from the output deltas) while the
run goes on; once it has ended the result is printed as before, so stdout holds it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agentexec_client import (
    FINAL_STATES,
    Client,
    CompletedEvent,
    Event,
    EventType,
    Execution,
    ExecutionState,
    OutputDeltaEvent,
    OutputDeltaPayload,
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


class StreamedOutput:
    """The output as its deltas rebuild it: each step's text, in the order the steps began;
    a delta with `reset` (a retried attempt) drops the text its step had so far."""

    def __init__(self) -> None:
        self.steps: dict[str | None, str] = {}

    def add(self, payload: OutputDeltaPayload) -> None:
        """Take one delta."""
        held = "" if payload.reset else self.steps.get(payload.step, "")
        self.steps[payload.step] = held + payload.delta

    def text(self) -> str:
        """Everything so far, one paragraph per step."""
        return "\n\n".join(self.steps.values())

    def tail(self, lines: int) -> str:
        """The last `lines` lines."""
        return "\n".join(self.text().splitlines()[-lines:])


class OutputProgress(Progress):
    """A progress bar with the last lines of the streaming output under it."""

    TAIL_LINES = 6

    def __init__(self, *columns: Any, **kwargs: Any):
        self.output = StreamedOutput()  # before Progress renders for the first time
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        tail = self.output.tail(self.TAIL_LINES)
        if tail:
            yield Text(tail, style="dim")


def _progress_bar() -> OutputProgress:
    return OutputProgress(
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
                    elif isinstance(event, OutputDeltaEvent):
                        bar.output.add(event.payload)
                        bar.refresh()
            final = client.executions.get(execution.id)
            bar.output.steps.clear()  # the result is printed whole next
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


def follow_lines(
    client: Client,
    execution_id: str,
    after: int | str | None,
    as_json: bool = False,
    types: list[str] | None = None,
) -> str | None:
    """Print each event as it arrives (a line, or a JSON object per line) until the completed one;
    output deltas included unless `types` leaves them out.

    Returns the final state.
    """
    final_state = None
    for event in client.executions.stream(execution_id, last_event_id=after, types=types):
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
