"""What the console says about an execution in plain words: ages, the time spent in each state,
and why it is not moving. Pure functions of rows and a clock, so they are tested without a server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.schemas import FINISHED_STATES, ExecutionState

S = ExecutionState
ALLOWED_ACTIONS: dict[str, frozenset[str]] = {
    "cancel": frozenset({"PENDING", "QUEUED", "RUNNING", "PAUSING", "PAUSED", "REQUIRES_ACTION"}),
    "pause": frozenset({"RUNNING"}),
    "resume": frozenset({"PAUSED"}),
    "retry": frozenset({"FAILED", "TIMED_OUT"}),
}


def seconds(delta_seconds: float) -> str:
    """A duration for people: 42 s, 3 min 5 s, 2 h 4 min, 3 d 1 h."""
    total = max(int(delta_seconds), 0)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def age(moment: datetime | None, now: datetime) -> str:
    """How long ago, or an em dash when unknown."""
    return "—" if moment is None else seconds((now - moment).total_seconds())


@dataclass(frozen=True)
class Stay:
    """One entry of the timeline: a state, when it was entered, how long it lasted (or lasts)."""

    state: str
    entered_at: datetime
    duration: str
    reason: str | None
    current: bool


def timeline(history: Sequence[Any], now: datetime) -> list[Stay]:
    """The state history (oldest first) as stays; the last one lasts until now unless final."""
    stays: list[Stay] = []
    for i, row in enumerate(history):
        last = i == len(history) - 1
        final = row.to_state in {s.value for s in FINISHED_STATES}
        end = now if last else history[i + 1].created_at
        duration = "final" if last and final else seconds((end - row.created_at).total_seconds())
        stays.append(Stay(row.to_state, row.created_at, duration, row.reason, last and not final))
    return stays


def clock(moment: datetime) -> str:
    """A moment of today for people: 14:03:07 UTC."""
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC")


def why_not_moving(
    execution: Any,
    now: datetime,
    *,
    lease_timeout: float,
    last_reason: str | None,
    ahead: int | None = None,
    heartbeat_interval: float = 5.0,
    reaper_interval: float = 5.0,
) -> str:
    """One sentence on what the execution waits for, in the words an operator would use;
    `ahead` is how many of the tenant's executions were queued before it. A RUNNING execution
    whose worker went silent is recovered by the reaper once its heartbeat is `lease_timeout`
    old, at the reaper's next sweep (every `reaper_interval`)."""
    state = ExecutionState(execution.state)
    since = execution.updated_at
    if state is S.PENDING:
        scheduled = getattr(execution, "scheduled_at", None)
        if scheduled is not None:
            when = f"in {age(now, scheduled)}" if scheduled > now else "now, at the scheduler's next pass"
            return f"Scheduled: it goes on the queue at {clock(scheduled)} ({when})."
        return f"Created {age(execution.created_at, now)} ago and not started: start it to queue it."
    if state is S.QUEUED:
        queued_at = execution.queued_at or since
        if queued_at is not None and queued_at > now:
            return f"Waiting to be retried: it goes back on the queue in {age(now, queued_at)}."
        waited = age(queued_at, now)
        if execution.waiting_reason == "concurrency_limit":
            return f"Waiting {waited} for a concurrency slot: its agent's or tenant's limit is reached."
        if execution.waiting_reason == "task_busy":
            return f"Waiting {waited} for an earlier execution of task {execution.task_id} to end."
        before = "" if ahead is None else f"; {ahead} of this tenant's executions were queued before it"
        where = f"queue {execution.queue!r} (priority {execution.priority})"
        return f"Waiting {waited} in {where} for a worker{before}."
    if state is S.RUNNING:
        if execution.heartbeat_at is None:
            return f"Claimed by {execution.worker or 'a worker'}; no heartbeat yet."
        silent = (now - execution.heartbeat_at).total_seconds()
        due = execution.heartbeat_at + timedelta(seconds=lease_timeout)
        latest = due + timedelta(seconds=reaper_interval)
        if now > latest:
            return (
                f"No heartbeat for {seconds(silent)} from {execution.worker}: the worker looks gone, and "
                f"the reaper should have recovered it by {clock(latest)}: check that the reaper runs."
            )
        if silent > lease_timeout:
            return (
                f"No heartbeat for {seconds(silent)} from {execution.worker}: the worker looks gone; "
                f"the reaper recovers it at its next sweep, by {clock(latest)}."
            )
        if silent > 2 * heartbeat_interval:
            return (
                f"No heartbeat for {seconds(silent)} from {execution.worker} (one is due every "
                f"{seconds(heartbeat_interval)}): if it stays silent, the reaper recovers it at "
                f"{clock(due)}."
            )
        return f"Running on {execution.worker}; last heartbeat {seconds(silent)} ago."
    if state is S.PAUSING:
        return f"Pausing for {age(since, now)}: the worker stops at the next step boundary."
    if state is S.PAUSED:
        because = f" ({last_reason})" if last_reason else ""
        return f"Paused{because} for {age(since, now)}: resume it to continue after its last step."
    if state is S.CANCELLING:
        return f"Cancelling for {age(since, now)}: waiting for {execution.worker or 'the worker'} to stop."
    if state is S.REQUIRES_ACTION:
        calls = len((execution.required_action or {}).get("tool_calls") or [])
        return (
            f"Waiting since {clock(since)} ({age(since, now)}) for the outputs of {calls} tool call(s), "
            "holding no worker: "
            "answer them below (or POST .../input) to let the agent go on."
        )
    ended = execution.completed_at or since
    return f"Finished: {state.value} {age(ended, now)} ago."


def output(deltas: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The streamed output so far, by step ("" for a standard task), from the output-delta
    messages in order: a delta with `reset` drops the text of its step (all text when its step
    is null), as a client of the stream does."""
    text: dict[str, str] = {}
    for message in deltas:
        payload = message.get("payload") or {}
        step = payload.get("step") or ""
        if payload.get("reset"):
            if step:
                text.pop(step, None)
            else:
                text.clear()
        text[step] = text.get(step, "") + str(payload.get("delta") or "")
    return text


def step_outputs(context: dict[str, Any] | None) -> dict[str, str]:
    """A pipeline's stored step outputs (its checkpoint), as text by step name."""
    steps = (context or {}).get("steps") or {}
    shown: dict[str, str] = {}
    for name, step in steps.items():
        value = step.get("output") if isinstance(step, dict) else step
        shown[str(name)] = value if isinstance(value, str) else json.dumps(value)
    return shown


def actions_for(state: str) -> list[str]:
    """The control actions that apply in `state`."""
    return [name for name, states in ALLOWED_ACTIONS.items() if state in states]
