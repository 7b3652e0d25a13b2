"""Pure logic of the runner and providers: prompts, results, backoff, simulated model."""

from __future__ import annotations

import random

import pytest

from app.commands import CommandBus, ModelRequest, ModelRouter, SimulatedProvider
from app.errors import ExecutionInterrupted, ModelOrchestrationError
from app.execution.control import CANCEL, PAUSE, RunControl
from app.execution.task_runner import ExecutionTaskRunner, backoff_delay, render_prompt


def test_render_prompt_fills_input_and_earlier_step_outputs():
    text = render_prompt("Use {input} and {steps.first} but not {steps.later}", "X", {"first": "F"})
    assert text == "Use X and F but not {steps.later}"


def test_backoff_uses_full_jitter_under_an_exponential_capped_ceiling():
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 1.0 * 2 ** (attempt - 1))
        values = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(0 <= v <= ceiling for v in values)
        assert max(values) > ceiling * 0.8  # spread over the whole range, not a fixed delay


def _runner() -> ExecutionTaskRunner:
    return ExecutionTaskRunner.__new__(ExecutionTaskRunner)


def test_process_results_sums_usage_over_pipeline_steps():
    raw = {
        "steps": [
            (
                "a",
                {
                    "output": "A",
                    "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
                    "model": "m",
                    "finish_reason": "stop",
                },
            ),
            (
                "b",
                {
                    "output": "B",
                    "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
                    "model": "m",
                    "finish_reason": "length",
                },
            ),
        ],
        "responses": None,
    }
    result = _runner().process_results(raw)
    assert result == {
        "output": "B",
        "steps": {"a": "A", "b": "B"},
        "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10, "model_calls": 2},
        "model": "m",
        "finish_reason": "length",
    }


def test_process_results_of_a_standard_task_has_no_steps():
    raw = {
        "steps": None,
        "responses": [
            {
                "output": "O",
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                "model": "m",
                "finish_reason": "stop",
            }
        ],
    }
    result = _runner().process_results(raw)
    assert "steps" not in result
    assert result["usage"]["model_calls"] == 1


def test_the_simulated_model_is_deterministic_and_counts_words():
    provider = SimulatedProvider()
    first = provider.generate(ModelRequest(prompt="one two three", system_prompt="be brief"))
    again = provider.generate(ModelRequest(prompt="one two three", system_prompt="be brief"))
    other = provider.generate(ModelRequest(prompt="one two four", system_prompt="be brief"))
    assert first == again
    assert first["output"] != other["output"]
    assert first["usage"]["prompt_tokens"] == 5


def test_the_simulated_model_fails_the_first_attempts_then_succeeds():
    provider = SimulatedProvider()
    for attempt in (1, 2):
        with pytest.raises(ModelOrchestrationError) as info:
            provider.generate(ModelRequest(prompt="p", simulate={"fail_times": 2}, attempt=attempt))
        assert info.value.retryable
    assert provider.generate(ModelRequest(prompt="p", simulate={"fail_times": 2}, attempt=3))["output"]


def test_a_permanent_simulated_failure_is_not_retryable():
    with pytest.raises(ModelOrchestrationError) as info:
        SimulatedProvider().generate(ModelRequest(prompt="p", simulate={"fail_permanently": True}))
    assert not info.value.retryable


def test_a_cancel_interrupts_a_simulated_call_between_chunks():
    control = RunControl.__new__(RunControl)
    RunControl.__init__(control, execution_id=None, attempt=1, timeout_seconds=None)  # type: ignore[arg-type]
    calls = {"n": 0}

    def checkpoint() -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            control.request(CANCEL)
        control.check_urgent()

    request = ModelRequest(
        prompt="p",
        simulate={"latency_ms": 10_000, "chunks": 1000},
        checkpoint=checkpoint,
        sleep=control.sleep,
    )
    with pytest.raises(ExecutionInterrupted) as info:
        SimulatedProvider().generate(request)
    assert info.value.kind == CANCEL


def test_a_pause_waits_for_the_step_boundary_but_a_cancel_does_not():
    control = RunControl(None, 1, None)  # type: ignore[arg-type]
    control.request(PAUSE)
    control.check_urgent()  # a pause does not stop a model call
    with pytest.raises(ExecutionInterrupted):
        control.check()  # ...but it stops the run at the next step boundary
    control.request(CANCEL)
    with pytest.raises(ExecutionInterrupted) as info:
        control.check_urgent()
    assert info.value.kind == CANCEL


def test_the_deadline_interrupts_a_sleep_as_a_timeout():
    control = RunControl(None, 1, 0.05)  # type: ignore[arg-type]
    with pytest.raises(ExecutionInterrupted) as info:
        control.sleep(5)
    assert info.value.kind == "timeout"


def test_the_command_bus_routes_model_generate_to_the_named_provider():
    bus = CommandBus()
    bus.register("model.generate", ModelRouter({"simulated": SimulatedProvider()}, "simulated"))
    assert bus.dispatch("model.generate", ModelRequest(prompt="x"))["finish_reason"] == "stop"
    with pytest.raises(ModelOrchestrationError):
        bus.dispatch("model.generate", ModelRequest(prompt="x", provider="nope"))
    with pytest.raises(LookupError):
        bus.dispatch("nope", None)


def test_a_drain_hands_a_run_back_at_its_step_boundary_and_mid_call_only_after_the_grace():
    import threading
    import time

    from app.execution.control import HANDBACK, ControlHub

    hub = ControlHub.__new__(ControlHub)
    hub._runs, hub._lock, hub._draining = {}, threading.Lock(), threading.Event()
    run = RunControl(None, 1, None)  # type: ignore[arg-type]
    hub._runs["x"] = run  # type: ignore[index]
    hub.drain(grace=0.2)
    run.check_urgent()  # within the grace a model call goes on
    with pytest.raises(ExecutionInterrupted) as info:
        run.check()  # ...but the step boundary hands it back
    assert info.value.kind == HANDBACK
    deadline = time.monotonic() + 5
    while True:  # after the grace, the call itself is interrupted
        try:
            run.check_urgent()
        except ExecutionInterrupted as exc:
            assert exc.kind == HANDBACK
            break
        assert time.monotonic() < deadline, "the grace never ended"
        time.sleep(0.01)


def test_a_cancel_still_wins_over_a_hand_back():
    from app.execution.control import HANDBACK

    run = RunControl(None, 1, None)  # type: ignore[arg-type]
    run.request(HANDBACK)
    run.request(CANCEL)
    with pytest.raises(ExecutionInterrupted) as info:
        run.check_urgent()
    assert info.value.kind == CANCEL


def test_a_worker_that_is_shutting_down_gives_a_new_delivery_back_unclaimed(monkeypatch):
    """Found by CI: during a warm shutdown the worker received the hand-back message of one of its
    own runs, claimed it and handed it back again (attempt 3 instead of 2)."""
    import threading
    import uuid

    from celery.exceptions import Reject

    from app.execution.control import ControlHub
    from workers import tasks

    hub = ControlHub.__new__(ControlHub)
    hub._runs, hub._lock, hub._draining = {}, threading.Lock(), threading.Event()

    class Service:
        control_hub = hub

        def run_attempt(self, *args, **kwargs):
            return tasks.Outcome.SKIPPED

    monkeypatch.setattr(tasks, "get_service", Service)
    assert tasks.run_execution.run(str(uuid.uuid4()), 2) == tasks.Outcome.SKIPPED.value  # not draining: runs
    hub.drain(grace=60)
    with pytest.raises(Reject) as info:
        tasks.run_execution.run(str(uuid.uuid4()), 2)
    assert info.value.requeue
