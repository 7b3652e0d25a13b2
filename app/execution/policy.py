"""How a run ends, as data: outcomes, stop reasons, the table of what to do when a write is
refused, the retry budget and the stored result. Pure: no database, no Celery.

A run ends with one write (COMPLETED, FAILED, a retry to QUEUED, CANCELLED, PAUSED,
TIMED_OUT). That write can be refused because someone else moved the execution first
(a cancel request, the reaper). `REFUSED` says what the run does then, from why it was
stopping and the state it found.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.schemas import ErrorCode, ExecutionState

S = ExecutionState


class Outcome(str, enum.Enum):
    """What one delivery of a run's task ended with (the Celery task's return value)."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"
    QUEUED = "QUEUED"  # handed back for another attempt (a retry)
    SKIPPED = "skipped"  # the claim was refused: a duplicate or stale delivery
    LOST = "lost"  # the run lost its lease (or PostgreSQL for too long) and wrote nothing
    ENDED_ELSEWHERE = "ended_elsewhere"  # someone else ended it (the reaper, a user) meanwhile
    DATABASE_UNAVAILABLE = "database_unavailable"  # the claim could not reach PostgreSQL: not run
    WAITING = "waiting"  # no concurrency slot: it waits, QUEUED, for the run that frees one
    REQUIRES_ACTION = "REQUIRES_ACTION"  # an agent waits for tool outputs; the worker is free

    @classmethod
    def of(cls, state: ExecutionState) -> Outcome:
        """The outcome of a run that left the execution in `state`."""
        try:
            return cls(state.value)
        except ValueError:
            return cls.ENDED_ELSEWHERE


class Stop(str, enum.Enum):
    """Why a run is writing its end."""

    FINISH = "finish"  # it has a result or a final error
    RETRY = "retry"  # a retryable model error within the retry budget
    CANCEL = "cancel"
    PAUSE = "pause"
    TIMEOUT = "timeout"
    HANDBACK = "handback"  # the worker is shutting down: back to QUEUED for another attempt
    LOST = "lost"  # another attempt holds it, or it is gone: write nothing


class Action(str, enum.Enum):
    """What to do when the end write was refused."""

    CANCEL = "cancel"  # a cancel is under way: end as CANCELLED instead
    FAIL = "fail"  # a retry is no longer possible: end as FAILED
    PAUSE = "pause"  # a pause is under way: end as PAUSED instead
    GIVE_UP = "give_up"  # someone else ended it: write nothing more


# (why the run stopped, the state it found) -> action; any pair not listed: GIVE_UP.
# Every end write is fenced by the run's attempt, so a refusal that finds a state the write
# accepts (a finish finding RUNNING or PAUSING) means another attempt holds it: give up.
REFUSED: dict[tuple[Stop, ExecutionState], Action] = {
    (Stop.FINISH, S.CANCELLING): Action.CANCEL,
    (Stop.RETRY, S.PAUSING): Action.FAIL,
    (Stop.RETRY, S.CANCELLING): Action.CANCEL,
    (Stop.PAUSE, S.CANCELLING): Action.CANCEL,
    (Stop.TIMEOUT, S.CANCELLING): Action.CANCEL,
    (Stop.HANDBACK, S.CANCELLING): Action.CANCEL,
    (Stop.HANDBACK, S.PAUSING): Action.PAUSE,
}


def when_refused(stop: Stop, found: ExecutionState) -> Action:
    """The action for a refused end write."""
    return REFUSED.get((stop, found), Action.GIVE_UP)


@dataclass(frozen=True)
class EndWrite:
    """The transition that ends a run for a stop reason: target, required state, reason text."""

    target: ExecutionState
    expected: ExecutionState | None  # None: whatever state the table allows into target
    reason: str


def end_write(stop: Stop, timeout_seconds: int | None = None) -> EndWrite:
    """The write that ends a run interrupted by cancel, pause or its deadline."""
    return {
        Stop.CANCEL: EndWrite(S.CANCELLED, S.CANCELLING, "cancelled while running"),
        Stop.PAUSE: EndWrite(S.PAUSED, S.PAUSING, "paused at a step boundary"),
        Stop.TIMEOUT: EndWrite(S.TIMED_OUT, None, f"timed out after {timeout_seconds} s"),
        Stop.HANDBACK: EndWrite(S.QUEUED, S.RUNNING, "handed back: the worker is shutting down"),
    }[stop]


# The state a run finds in PostgreSQL -> why it must stop (anything else: it lost the lease).
STOP_FOR_STATE: dict[ExecutionState, Stop] = {S.CANCELLING: Stop.CANCEL, S.PAUSING: Stop.PAUSE}


def stop_for_state(state: ExecutionState | None, same_attempt: bool) -> Stop:
    """Why a run must stop, from the state (and attempt) it finds."""
    if state is None or not same_attempt:
        return Stop.LOST
    return STOP_FOR_STATE.get(state, Stop.LOST)


# ------------------------------------------------------------------ retries


def may_retry(attempt: int, max_retries: int) -> bool:
    """The retry budget: attempt N is retry N-1, allowed while at most max_retries."""
    return attempt - 1 < max_retries


@dataclass
class TokenBudget:
    """What a run may still spend: the execution's max_tokens and the agent's daily budget.

    `used` is what the execution used before this attempt's calls plus what they used;
    `used_today` the agent's tokens of the UTC day when the run was claimed, plus this run's.
    """

    max_tokens: int | None = None
    used: int = 0
    daily: int | None = None
    used_today: int = 0

    def refusal(self, estimate: int) -> str | None:
        """Why a model call needing at least `estimate` tokens must not start (None: it may)."""
        if self.max_tokens is not None and (
            self.used >= self.max_tokens or self.used + estimate > self.max_tokens
        ):
            return (
                f"token budget exceeded: max_tokens is {self.max_tokens}, {self.used} used, "
                f"the next model call needs at least {estimate}"
            )
        if self.daily is not None and (
            self.used_today >= self.daily or self.used_today + estimate > self.daily
        ):
            return (
                f"the agent's daily token budget is spent: {self.used_today} of {self.daily} used today "
                f"(UTC), the next model call needs at least {estimate}"
            )
        return None

    def add(self, tokens: int) -> None:
        """Count a finished call's tokens."""
        self.used += tokens
        self.used_today += tokens


def _spent(used: int, estimate: int, budget: int) -> bool:
    return used >= budget or used + estimate > budget


def estimate_tokens(*texts: str) -> int:
    """The prompt tokens a call will use at least: its words (the simulated model's count and
    the fallback when a provider reports no usage)."""
    return sum(len(t.split()) for t in texts)


def seconds_to_utc_midnight(now: datetime | None = None) -> int:
    """Seconds until the next UTC day, when a daily budget renews (at least 1)."""
    now = now or datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


def model_error_code(retryable: bool, max_retries: int) -> ErrorCode:
    """The error_code of a model error that ends the run (it was not retried)."""
    if not retryable:
        return ErrorCode.MODEL_ERROR_PERMANENT
    return ErrorCode.RETRIES_EXHAUSTED if max_retries > 0 else ErrorCode.MODEL_ERROR


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0, ceiling)


# ------------------------------------------------------------------- results


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The stored result: output, per-step outputs, summed usage, model, finish_reason."""
    steps = result.get("steps") or None
    responses = [cp for _, cp in steps] if steps else result["responses"]
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in responses:
        for key in usage:
            usage[key] += int((r.get("usage") or {}).get(key, 0))
    last = responses[-1]
    processed: dict[str, Any] = {
        "output": last["output"],
        "usage": usage | {"model_calls": len(responses)},
        "model": last.get("model"),
        "finish_reason": last.get("finish_reason"),
    }
    if steps is not None:
        processed["steps"] = {name: cp["output"] for name, cp in steps}
    return processed
