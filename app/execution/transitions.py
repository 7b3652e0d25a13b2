"""The transition table: which state may follow which. Data, read by the validator and the docs."""

from __future__ import annotations

from app.schemas import ExecutionState as S

TRANSITIONS: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset(
        {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.PAUSING, S.CANCELLING, S.QUEUED, S.REQUIRES_ACTION}
    ),
    S.PAUSING: frozenset({S.PAUSED, S.CANCELLING, S.COMPLETED, S.FAILED, S.TIMED_OUT, S.REQUIRES_ACTION}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.TIMED_OUT: frozenset({S.QUEUED}),
    # Waiting for tool outputs (holds no worker, no slot): input re-queues it; cancel; expiry.
    S.REQUIRES_ACTION: frozenset({S.QUEUED, S.CANCELLED, S.TIMED_OUT}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}


def validate_transition(current: S | str, target: S | str) -> bool:
    """True when `target` may follow `current`."""
    return S(target) in TRANSITIONS[S(current)]


def sources_of(target: S) -> frozenset[S]:
    """Every state from which `target` can be entered."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)


def as_table() -> dict[str, list[str]]:
    """The table as plain JSON, for the API docs."""
    return {src.value: sorted(t.value for t in targets) for src, targets in TRANSITIONS.items()}
