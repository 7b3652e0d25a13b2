"""The run's end policy as data: the REFUSED table as a full matrix, stop reasons, the retry budget,
the end writes and the stored result."""

from __future__ import annotations

import itertools

import pytest

from app.execution.policy import (
    REFUSED,
    Action,
    Outcome,
    Stop,
    TokenBudget,
    end_write,
    estimate_tokens,
    may_retry,
    model_error_code,
    seconds_to_utc_midnight,
    stop_for_state,
    summarize,
    when_refused,
)
from app.execution.transitions import sources_of, validate_transition
from app.schemas import ErrorCode
from app.schemas import ExecutionState as S

# (why the run stopped, the state its refused write found) -> what it does; every other pair: GIVE_UP.
EXPECTED = {
    (Stop.FINISH, S.CANCELLING): Action.CANCEL,
    (Stop.RETRY, S.PAUSING): Action.FAIL,
    (Stop.RETRY, S.CANCELLING): Action.CANCEL,
    (Stop.PAUSE, S.CANCELLING): Action.CANCEL,
    (Stop.TIMEOUT, S.CANCELLING): Action.CANCEL,
    (Stop.HANDBACK, S.CANCELLING): Action.CANCEL,
    (Stop.HANDBACK, S.PAUSING): Action.PAUSE,
}


@pytest.mark.parametrize(("stop", "found"), list(itertools.product(Stop, S)), ids=lambda v: v.value)
def test_a_refused_end_write_does_what_the_table_says_for_every_stop_and_state(stop, found):
    assert when_refused(stop, found) is EXPECTED.get((stop, found), Action.GIVE_UP)


def test_a_refused_finish_that_finds_cancelling_ends_cancelled():
    assert when_refused(Stop.FINISH, S.CANCELLING) is Action.CANCEL
    assert end_write(Stop.CANCEL).target is S.CANCELLED


def test_the_table_lists_only_pairs_that_change_the_default():
    assert all(action is not Action.GIVE_UP for action in REFUSED.values())


def test_a_refused_finish_that_finds_a_state_its_write_accepts_gives_up_another_attempt_holds_it():
    for found in sources_of(S.COMPLETED) & sources_of(S.FAILED):
        assert when_refused(Stop.FINISH, found) is Action.GIVE_UP


def test_a_refused_write_turns_into_a_cancel_only_when_a_cancel_is_under_way():
    assert {found for (_, found), action in REFUSED.items() if action is Action.CANCEL} == {S.CANCELLING}
    assert validate_transition(S.CANCELLING, S.CANCELLED)


def test_a_retry_that_finds_pausing_fails_instead_and_failed_may_follow_pausing():
    assert when_refused(Stop.RETRY, S.PAUSING) is Action.FAIL
    assert validate_transition(S.PAUSING, S.FAILED)


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
def test_a_run_stops_for_cancelling_or_pausing_of_its_own_attempt_and_is_lost_otherwise(state):
    expected = {S.CANCELLING: Stop.CANCEL, S.PAUSING: Stop.PAUSE}.get(state, Stop.LOST)
    assert stop_for_state(state, same_attempt=True) is expected
    assert stop_for_state(state, same_attempt=False) is Stop.LOST


def test_a_run_whose_execution_is_gone_is_lost():
    assert stop_for_state(None, same_attempt=True) is Stop.LOST


@pytest.mark.parametrize(
    ("attempt", "max_retries", "allowed"),
    [(1, 0, False), (1, 1, True), (2, 1, False), (3, 3, True), (4, 3, False), (5, 3, False)],
)
def test_a_failed_attempt_n_is_retried_only_while_the_nth_retry_is_within_the_budget(
    attempt, max_retries, allowed
):
    assert may_retry(attempt, max_retries) is allowed


def test_max_retries_allows_that_many_retries_after_the_first_attempt():
    assert [n for n in range(1, 10) if may_retry(n, 3)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("stop", "target", "expected"),
    [
        (Stop.CANCEL, S.CANCELLED, S.CANCELLING),
        (Stop.PAUSE, S.PAUSED, S.PAUSING),
        (Stop.TIMEOUT, S.TIMED_OUT, None),
    ],
    ids=lambda v: getattr(v, "value", str(v)),
)
def test_an_interrupted_run_ends_in_the_target_its_stop_names(stop, target, expected):
    write = end_write(stop, timeout_seconds=30)
    assert (write.target, write.expected) == (target, expected)
    if expected is None:
        assert sources_of(target)
    else:
        assert validate_transition(expected, target)


def test_a_timeout_says_how_long_the_run_had():
    assert end_write(Stop.TIMEOUT, 30).reason == "timed out after 30 s"


@pytest.mark.parametrize("stop", [Stop.FINISH, Stop.RETRY, Stop.LOST], ids=lambda s: s.value)
def test_only_interruptions_have_a_fixed_end_write(stop):
    with pytest.raises(KeyError):
        end_write(stop)


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
def test_the_outcome_of_a_state_is_its_name_or_ended_elsewhere(state):
    named = {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED, S.PAUSED, S.QUEUED, S.REQUIRES_ACTION}
    assert Outcome.of(state) is (Outcome(state.value) if state in named else Outcome.ENDED_ELSEWHERE)


def _response(output: str, usage: dict | None = None, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"output": output, "usage": usage, "model": "m", "finish_reason": "stop"} | extra


def test_a_response_without_usage_counts_no_tokens_but_one_model_call():
    result = summarize({"steps": None, "responses": [_response("O", None)]})
    assert result["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "model_calls": 1,
    }
    assert result["output"] == "O"


def test_an_empty_step_list_is_summarized_as_a_standard_result():
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    result = summarize({"steps": [], "responses": [_response("O", usage)]})
    assert "steps" not in result
    assert result["usage"]["total_tokens"] == 3


def test_a_pipeline_result_keeps_step_order_and_takes_model_and_finish_reason_from_the_last_step():
    steps = [
        ("first", _response("A", {"total_tokens": 4}, model="small")),
        ("second", _response("B", {"total_tokens": "6"}, model="large", finish_reason="length")),
    ]
    result = summarize({"steps": steps, "responses": None})
    assert list(result["steps"].items()) == [("first", "A"), ("second", "B")]
    assert (result["output"], result["model"], result["finish_reason"]) == ("B", "large", "length")
    assert result["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 10,
        "model_calls": 2,
    }


def test_a_handed_back_run_goes_from_running_to_queued():
    write = end_write(Stop.HANDBACK)
    assert (write.expected, write.target) == (S.RUNNING, S.QUEUED)
    assert validate_transition(write.expected, write.target)


@pytest.mark.parametrize(
    ("retryable", "max_retries", "code"),
    [
        (False, 3, ErrorCode.MODEL_ERROR_PERMANENT),
        (False, 0, ErrorCode.MODEL_ERROR_PERMANENT),
        (True, 3, ErrorCode.RETRIES_EXHAUSTED),
        (True, 0, ErrorCode.MODEL_ERROR),
    ],
)
def test_a_model_error_ending_the_run_is_permanent_spent_retries_or_unretried(retryable, max_retries, code):
    assert model_error_code(retryable, max_retries) is code


def test_a_token_budget_refuses_a_call_it_cannot_pay_for_and_any_once_spent():
    budget = TokenBudget(max_tokens=100, used=90)
    assert budget.refusal(10) is None
    assert "max_tokens is 100" in (budget.refusal(11) or "")
    budget.add(10)
    assert budget.refusal(0) is not None  # spent: not even a call estimated at nothing
    daily = TokenBudget(daily=50, used_today=49)
    assert daily.refusal(1) is None and "daily token budget" in (daily.refusal(2) or "")
    assert TokenBudget().refusal(10**9) is None  # no budget at all


def test_the_daily_budget_renews_at_the_next_utc_midnight():
    from datetime import UTC, datetime

    assert seconds_to_utc_midnight(datetime(2026, 11, 26, 23, 59, 30, tzinfo=UTC)) == 30
    assert seconds_to_utc_midnight(datetime(2026, 11, 26, 0, 0, 0, tzinfo=UTC)) == 86400
    assert estimate_tokens("be brief", "plan a trip") == 5
