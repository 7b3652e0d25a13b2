"""The transition table, in full, as a (from, to) matrix."""

from __future__ import annotations

import itertools

import pytest

from app.execution.transitions import TRANSITIONS, as_table, sources_of, validate_transition
from app.schemas import ExecutionState as S

ALLOWED = {
    (S.PENDING, S.QUEUED),
    (S.PENDING, S.CANCELLED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.QUEUED, S.FAILED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.PAUSING),
    (S.RUNNING, S.CANCELLING),
    (S.RUNNING, S.QUEUED),
    (S.PAUSING, S.PAUSED),
    (S.PAUSING, S.CANCELLING),
    (S.PAUSING, S.COMPLETED),
    (S.PAUSING, S.FAILED),
    (S.PAUSING, S.TIMED_OUT),
    (S.PAUSED, S.QUEUED),
    (S.PAUSED, S.CANCELLED),
    (S.CANCELLING, S.CANCELLED),
    (S.CANCELLING, S.FAILED),
    (S.FAILED, S.QUEUED),
    (S.TIMED_OUT, S.QUEUED),
    (S.RUNNING, S.REQUIRES_ACTION),
    (S.PAUSING, S.REQUIRES_ACTION),
    (S.REQUIRES_ACTION, S.QUEUED),
    (S.REQUIRES_ACTION, S.CANCELLED),
    (S.REQUIRES_ACTION, S.TIMED_OUT),
}
ALL_PAIRS = list(itertools.product(S, S))


def test_the_table_covers_all_eleven_states():
    assert len(S) == 11
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_a_transition_is_valid_exactly_when_design_md_lists_it(current, target):
    assert validate_transition(current, target) == ((current, target) in ALLOWED)


def test_completed_and_cancelled_are_final():
    assert TRANSITIONS[S.COMPLETED] == frozenset()
    assert TRANSITIONS[S.CANCELLED] == frozenset()


def test_sources_of_queued_are_the_states_that_can_requeue():
    assert sources_of(S.QUEUED) == {S.PENDING, S.RUNNING, S.PAUSED, S.FAILED, S.TIMED_OUT, S.REQUIRES_ACTION}


def test_the_exported_table_is_plain_json_with_every_state():
    table = as_table()
    assert table["RUNNING"] == sorted(
        ["COMPLETED", "FAILED", "TIMED_OUT", "PAUSING", "CANCELLING", "QUEUED", "REQUIRES_ACTION"]
    )
    assert table["REQUIRES_ACTION"] == ["CANCELLED", "QUEUED", "TIMED_OUT"]
    assert set(table) == {s.value for s in S}
