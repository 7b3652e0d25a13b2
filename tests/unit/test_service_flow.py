"""The service flow on fakes: create, claim, run, retry, fail, skip, pause and cancel, with the real
state manager, progress tracker and runner over the in-memory repository and the simulated model."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from app import events
from app.commands import ModelRequest, SimulatedProvider, build_command_bus
from app.config import Settings
from app.errors import BudgetExceededError, TaskBusyError
from app.execution.dispatch import celery_task_id
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.policy import Outcome
from app.execution.progress_tracker import ExecutionProgressTracker
from app.execution.service import ExecutionService
from app.execution.state_manager import ExecutionStateManager
from app.execution.task_runner import ExecutionTaskRunner
from app.models import Agent, Execution
from app.schemas import ExecutionCreate
from app.schemas import ExecutionState as S
from tests.unit.fakes import FakeEventBus, FakeRepository, RecordingDispatcher

SC, PROGRESS, COMPLETED = events.STATE_CHANGED, events.PROGRESS, events.COMPLETED
QUEUE = "unit"
PIPELINE = {
    "type": "pipeline",
    "input": "plan a trip",
    "steps": [
        {"name": "a", "prompt": "{input} first"},
        {"name": "b", "prompt": "{steps.a} second"},
        {"name": "c", "prompt": "{steps.b} third"},
    ],
}


@dataclass
class HookedProvider:
    """The simulated model, calling `on_call` first: something that happens during a model call."""

    on_call: Callable[[ModelRequest], None] = lambda request: None
    calls: list[str] = field(default_factory=list)

    def generate(self, request: ModelRequest) -> dict[str, Any]:
        self.calls.append(request.prompt)
        self.on_call(request)
        return SimulatedProvider().generate(request)


@dataclass
class Flow:
    """The real state manager and runner on fakes, and what a test reads back from them."""

    repo: FakeRepository
    bus: FakeEventBus
    dispatcher: RecordingDispatcher
    hook: HookedProvider
    state_manager: ExecutionStateManager
    runner: ExecutionTaskRunner
    service: ExecutionService
    agent: Agent
    hooked_agent: Agent

    def create(self, parameters: dict[str, Any], *, hooked: bool = False, **body: Any) -> Execution:
        agent = self.hooked_agent if hooked else self.agent
        request = ExecutionCreate(agent_id=agent.id, parameters=parameters, **body)  # type: ignore[arg-type]
        created, _ = self.service.create_execution(request)
        return created

    def row(self, execution_id: uuid.UUID) -> Execution:
        row = self.repo.get_by_id(execution_id)
        assert row is not None
        return row

    def states(self, execution_id: uuid.UUID) -> list[str]:
        return [to for _, to, _ in self.repo.history_of(execution_id)]

    def types(self, execution_id: uuid.UUID) -> list[str]:
        return [e.type for e in self.repo.events_of(execution_id)]

    def everything(self) -> tuple[Any, ...]:
        """A copy of every row, log and call the flow has written or made so far."""
        repo = self.repo
        return copy.deepcopy(
            (
                repo.rows,
                len(repo.history),
                len(repo.events),
                self.bus.published,
                self.dispatcher.started,
                self.dispatcher.cancelled,
                self.dispatcher.signals,
            )
        )

    def payloads(self, execution_id: uuid.UUID, event_type: str) -> list[dict[str, Any]]:
        return [e.payload for e in self.repo.events_of(execution_id) if e.type == event_type]


@pytest.fixture
def flow() -> Flow:
    settings = Settings(retry_backoff_base=0.01, retry_backoff_cap=0.02, default_queue=QUEUE)
    repo, bus, dispatcher, hook = FakeRepository(), FakeEventBus(), RecordingDispatcher(), HookedProvider()
    emitter = ExecutionEventEmitter(bus)  # type: ignore[arg-type]
    state_manager = ExecutionStateManager(repo, emitter, dispatcher)  # type: ignore[arg-type]
    tracker = ExecutionProgressTracker(repo, emitter)  # type: ignore[arg-type]
    command_bus = build_command_bus(settings, providers={"hooked": hook})
    runner = ExecutionTaskRunner(repo, state_manager, tracker, command_bus, settings, control_hub=None)  # type: ignore[arg-type]
    service = ExecutionService(repo, state_manager, tracker, emitter, runner, dispatcher, settings)  # type: ignore[arg-type]
    return Flow(
        repo,
        bus,
        dispatcher,
        hook,
        state_manager,
        runner,
        service,
        repo.add_agent(name="plain", system_prompt="Be brief."),
        repo.add_agent(name="hooked", parameters={"provider": "hooked"}),
    )


def test_a_created_execution_is_claimed_run_and_completed_with_its_history_and_events_in_order(flow):
    ex = flow.create({"input": "hello world"})
    assert (ex.state, ex.attempt, ex.celery_task_id) == ("QUEUED", 1, celery_task_id(ex.id, 1))
    assert flow.dispatcher.started == [(ex.id, 1, QUEUE, 5, 0)]

    assert flow.runner.run(ex.id, 1, "w") is Outcome.COMPLETED

    row = flow.row(ex.id)
    assert (row.state, row.worker) == ("COMPLETED", "w")
    assert (row.progress_percentage, row.progress_message) == (100.0, "Finalize")
    assert row.completed_at is not None and row.started_at is not None and row.error_message is None
    assert row.result["usage"]["model_calls"] == 1 and row.result["output"].startswith("[simulated-1] hello")
    assert flow.repo.history_of(ex.id) == [
        (None, "PENDING", "created"),
        ("PENDING", "QUEUED", "submitted"),
        ("QUEUED", "RUNNING", "claimed by w"),
        ("RUNNING", "COMPLETED", "completed"),
    ]
    assert flow.types(ex.id) == [SC, SC, SC, PROGRESS, PROGRESS, PROGRESS, SC, COMPLETED]
    assert [p["new_state"] for p in flow.payloads(ex.id, SC)] == ["PENDING", "QUEUED", "RUNNING", "COMPLETED"]
    assert [p["previous_state"] for p in flow.payloads(ex.id, SC)] == [None, "PENDING", "QUEUED", "RUNNING"]
    assert [p["percentage"] for p in flow.payloads(ex.id, PROGRESS)] == [33.33, 66.67, 100.0]
    [done] = flow.payloads(ex.id, COMPLETED)
    assert (done["state"], done["result"], done["execution_id"]) == ("COMPLETED", row.result, str(ex.id))
    logged = flow.repo.events_of(ex.id)
    assert [(t, m["id"]) for t, m in flow.bus.published] == [(e.type, e.id) for e in logged]
    assert [e.id for e in logged] == sorted(e.id for e in logged)


def test_a_pipeline_of_three_steps_checkpoints_each_step_and_ends_with_their_outputs(flow):
    ex = flow.create(PIPELINE)
    assert flow.runner.run(ex.id, 1, "w") is Outcome.COMPLETED

    row = flow.row(ex.id)
    steps = row.context["steps"]
    assert list(steps) == ["a", "b", "c"] and {cp["attempt"] for cp in steps.values()} == {1}
    assert row.result["steps"] == {name: cp["output"] for name, cp in steps.items()}
    assert steps["a"]["output"] in steps["b"]["output"]  # {steps.a} reached the second prompt
    assert row.result["output"] == steps["c"]["output"] and row.result["usage"]["model_calls"] == 3
    assert [p["percentage"] for p in flow.payloads(ex.id, PROGRESS)] == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert [p["message"] for p in flow.payloads(ex.id, PROGRESS)] == [
        "Prepare input",
        "Step a",
        "Step b",
        "Step c",
        "Finalize",
    ]


def test_a_retryable_failure_requeues_the_next_attempt_through_the_dispatcher_and_it_completes(flow):
    ex = flow.create({"input": "x", "simulate": {"fail_times": 1}})

    assert flow.runner.run(ex.id, 1, "w") is Outcome.QUEUED
    row = flow.row(ex.id)
    assert (row.state, row.attempt, row.celery_task_id) == ("QUEUED", 2, celery_task_id(ex.id, 2))
    assert (row.progress_percentage, row.progress_message) == (66.67, "Queued")  # kept: never back
    assert row.worker is None and row.result is None and row.error_code is None
    [_, (ex_id, attempt, queue, priority, countdown)] = flow.dispatcher.started
    assert (ex_id, attempt, queue, priority) == (ex.id, 2, QUEUE, 5) and 0 <= countdown <= 0.01
    assert 0 <= (row.queued_at - row.updated_at).total_seconds() <= 0.01
    _, to_state, reason = flow.repo.history_of(ex.id)[-1]
    assert to_state == "QUEUED" and reason.startswith("retry 1 of 3 in ")
    assert COMPLETED not in flow.types(ex.id)

    assert flow.runner.run(ex.id, 2, "w") is Outcome.COMPLETED
    assert flow.states(ex.id) == ["PENDING", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "COMPLETED"]
    assert flow.row(ex.id).attempt == 2


def test_a_permanent_failure_ends_failed_with_the_error_and_is_not_retried(flow):
    ex = flow.create({"input": "x", "simulate": {"fail_permanently": True}})
    assert flow.runner.run(ex.id, 1, "w") is Outcome.FAILED
    row = flow.row(ex.id)
    assert (row.state, row.result) == ("FAILED", None)
    assert "simulated permanent model failure" in row.error_message
    assert flow.repo.history_of(ex.id)[-1] == ("RUNNING", "FAILED", "model call failed")
    [done] = flow.payloads(ex.id, COMPLETED)
    assert (done["state"], done["error_message"]) == ("FAILED", row.error_message)
    assert row.error_code == done["error_code"] == "model_error_permanent"
    assert len(flow.dispatcher.started) == 1


def test_a_retryable_failure_beyond_the_retry_budget_ends_failed(flow):
    ex = flow.create({"input": "x", "simulate": {"fail_times": 1}}, max_retries=0)
    assert flow.runner.run(ex.id, 1, "w") is Outcome.FAILED
    assert flow.row(ex.id).state == "FAILED" and len(flow.dispatcher.started) == 1
    assert flow.row(ex.id).error_code == "model_error"  # no retry was allowed at all

    spent = flow.create({"input": "x", "simulate": {"fail_times": 2}}, max_retries=1)
    assert flow.runner.run(spent.id, 1, "w") is Outcome.QUEUED
    assert flow.runner.run(spent.id, 2, "w") is Outcome.FAILED
    assert flow.row(spent.id).error_code == "retries_exhausted"
    assert flow.payloads(spent.id, COMPLETED)[-1]["error_code"] == "retries_exhausted"


def test_a_stale_delivery_is_skipped_and_writes_and_sends_nothing(flow):
    ex = flow.create({"input": "x"})
    before = flow.everything()

    assert flow.runner.run(ex.id, 2, "w") is Outcome.SKIPPED

    assert flow.everything() == before


def test_a_duplicate_delivery_of_a_finished_attempt_is_skipped(flow):
    ex = flow.create({"input": "x"})
    assert flow.runner.run(ex.id, 1, "w") is Outcome.COMPLETED
    events_before = len(flow.repo.events)
    assert flow.runner.run(ex.id, 1, "w2") is Outcome.SKIPPED
    assert len(flow.repo.events) == events_before and flow.row(ex.id).worker == "w"


def test_a_cancel_during_the_model_call_turns_the_refused_finish_into_cancelled(flow):
    ex = flow.create({"input": "x"}, hooked=True)
    flow.hook.on_call = lambda request: flow.state_manager.change_state(ex.id, S.CANCELLING, "user cancel")

    assert flow.runner.run(ex.id, 1, "w") is Outcome.CANCELLED

    row = flow.row(ex.id)
    assert (row.state, row.result) == ("CANCELLED", None) and row.completed_at is not None
    assert flow.states(ex.id)[-3:] == ["RUNNING", "CANCELLING", "CANCELLED"]
    assert flow.repo.history_of(ex.id)[-1] == ("CANCELLING", "CANCELLED", "cancelled while running")
    # The refused finish logged nothing: no progress to 100, no COMPLETED.
    assert [p["percentage"] for p in flow.payloads(ex.id, PROGRESS)] == [33.33, 66.67]
    assert [(p["state"], p["error_code"]) for p in flow.payloads(ex.id, COMPLETED)] == [
        ("CANCELLED", "cancelled")
    ]
    assert flow.dispatcher.cancelled == [(ex.id, 1)]


def test_a_cancel_during_a_pipeline_step_keeps_the_step_and_stops_at_the_next_progress_report(flow):
    ex = flow.create(PIPELINE, hooked=True)
    flow.hook.on_call = lambda request: flow.state_manager.change_state(ex.id, S.CANCELLING, "user cancel")

    assert flow.runner.run(ex.id, 1, "w") is Outcome.CANCELLED

    row = flow.row(ex.id)
    assert row.state == "CANCELLED" and list(row.context["steps"]) == ["a"] and len(flow.hook.calls) == 1


def test_a_paused_pipeline_resumes_as_the_next_attempt_without_repeating_finished_steps(flow):
    ex = flow.create(PIPELINE, hooked=True)
    flow.hook.on_call = lambda request: flow.state_manager.change_state(ex.id, S.PAUSING, "user pause")

    assert flow.runner.run(ex.id, 1, "w") is Outcome.PAUSED
    assert flow.row(ex.id).state == "PAUSED" and flow.dispatcher.signals == [(ex.id, "pause")]

    flow.hook.on_call = lambda request: None
    flow.state_manager.change_state(ex.id, S.QUEUED, "resumed", expected_state=S.PAUSED)
    assert flow.dispatcher.started[-1][:2] == (ex.id, 2)
    assert flow.runner.run(ex.id, 2, "w") is Outcome.COMPLETED

    row = flow.row(ex.id)
    assert row.error_code is None
    assert {name: cp["attempt"] for name, cp in row.context["steps"].items()} == {"a": 1, "b": 2, "c": 2}
    assert len(flow.hook.calls) == 3 and list(row.result["steps"]) == ["a", "b", "c"]
    assert flow.states(ex.id) == [
        "PENDING",
        "QUEUED",
        "RUNNING",
        "PAUSING",
        "PAUSED",
        "QUEUED",
        "RUNNING",
        "COMPLETED",
    ]


def test_a_run_past_its_deadline_ends_timed_out(flow):
    ex = flow.create({"input": "x"})
    flow.repo.rows[ex.id]["timeout_seconds"] = 0  # the deadline has passed by the first step boundary

    assert flow.runner.run(ex.id, 1, "w") is Outcome.TIMED_OUT

    row = flow.row(ex.id)
    assert (row.state, row.error_message, row.result) == ("TIMED_OUT", "timed out", None)
    assert flow.repo.history_of(ex.id)[-1] == ("RUNNING", "TIMED_OUT", "timed out after 0 s")
    assert [p["state"] for p in flow.payloads(ex.id, COMPLETED)] == ["TIMED_OUT"]
    assert row.error_code == "timeout"


def test_a_run_that_lost_its_lease_during_the_model_call_writes_nothing(flow):
    ex = flow.create({"input": "x"}, hooked=True)

    def reaper_requeues(request: ModelRequest) -> None:
        flow.state_manager.change_state(
            ex.id, S.QUEUED, "lease expired", expected_state=S.RUNNING, expected_attempt=1
        )

    flow.hook.on_call = reaper_requeues
    outcome = flow.runner.run(ex.id, 1, "w")

    assert outcome is not Outcome.COMPLETED
    row = flow.row(ex.id)
    assert (row.state, row.attempt, row.result) == ("QUEUED", 2, None)
    assert flow.states(ex.id)[-1] == "QUEUED" and COMPLETED not in flow.types(ex.id)


def test_an_execution_created_without_start_is_queued_later_as_attempt_one(flow):
    ex = flow.create({"input": "x"}, start=False)
    assert (ex.state, ex.attempt, flow.dispatcher.started) == ("PENDING", 0, [])
    assert [m["payload"]["new_state"] for _, m in flow.bus.published] == ["PENDING"]

    queued = flow.state_manager.change_state(ex.id, S.QUEUED, "started", expected_state=S.PENDING)

    assert (queued.attempt, queued.celery_task_id) == (1, celery_task_id(ex.id, 1))
    assert flow.dispatcher.started == [(ex.id, 1, QUEUE, 5, 0)]
    assert flow.runner.run(ex.id, 1, "w") is Outcome.COMPLETED


def test_a_claim_without_a_free_slot_waits_and_the_run_that_frees_it_wakes_the_next(flow):
    flow.hooked_agent.max_concurrency = 1
    first = flow.create({"input": "x"}, hooked=True)
    second = flow.create({"input": "y"}, hooked=True)
    seen: list[Any] = []

    def second_claims_while_the_first_runs(request: ModelRequest) -> None:
        flow.hook.on_call = lambda request: None
        seen.append(flow.runner.run(second.id, 1, "w2"))
        seen.append(flow.row(second.id).waiting_reason)

    flow.hook.on_call = second_claims_while_the_first_runs
    assert flow.runner.run(first.id, 1, "w1") is Outcome.COMPLETED
    assert seen == [Outcome.WAITING, "concurrency_limit"]
    # The first run's end gave the slot back and sent the waiter again (same attempt).
    assert flow.dispatcher.started[-1][:2] == (second.id, 1)
    assert flow.row(second.id).waiting_reason is None and flow.row(second.id).state == "QUEUED"
    assert flow.runner.run(second.id, 1, "w2") is Outcome.COMPLETED


def test_a_tenant_limit_caps_running_executions_across_agents(flow):
    flow.repo.tenant_limits[flow.agent.tenant] = 1
    first = flow.create({"input": "x"}, hooked=True)
    other = flow.create({"input": "y"})  # another agent of the same tenant
    outcomes: list[Outcome] = []
    flow.hook.on_call = lambda request: outcomes.append(flow.runner.run(other.id, 1, "w2"))
    assert flow.runner.run(first.id, 1, "w1") is Outcome.COMPLETED
    assert outcomes == [Outcome.WAITING]
    assert flow.dispatcher.started[-1][:2] == (other.id, 1)
    assert flow.runner.run(other.id, 1, "w2") is Outcome.COMPLETED


def test_without_limits_no_claim_waits_and_no_end_wakes_anyone(flow):
    first = flow.create({"input": "x"}, hooked=True)
    second = flow.create({"input": "y"}, hooked=True)
    outcomes: list[Outcome] = []

    def claim_second(request: ModelRequest) -> None:
        flow.hook.on_call = lambda request: None
        outcomes.append(flow.runner.run(second.id, 1, "w2"))

    flow.hook.on_call = claim_second
    assert flow.runner.run(first.id, 1, "w1") is Outcome.COMPLETED
    assert outcomes == [Outcome.COMPLETED] and len(flow.dispatcher.started) == 2


TASK = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_reject_refuses_a_second_active_execution_of_the_task_and_names_the_first(flow):
    first = flow.create({"input": "x"}, task_id=TASK)
    with pytest.raises(TaskBusyError) as refused:
        flow.create({"input": "y"}, task_id=TASK, on_conflict="reject")
    assert refused.value.active_execution_id == first.id and str(first.id) in str(refused.value)
    assert [r["id"] for r in flow.repo.rows.values()] == [first.id]
    assert flow.runner.run(first.id, 1, "w") is Outcome.COMPLETED
    later = flow.create({"input": "z"}, task_id=TASK, on_conflict="reject")  # the task is idle again
    assert later.state == "QUEUED"


def test_an_agent_default_policy_applies_when_the_create_names_none(flow):
    flow.agent.on_conflict = "reject"
    flow.create({"input": "x"}, task_id=TASK)
    with pytest.raises(TaskBusyError):
        flow.create({"input": "y"}, task_id=TASK)
    flow.create({"input": "y"}, task_id=TASK, on_conflict="allow")  # the request wins


def test_enqueue_waits_for_the_active_execution_then_starts(flow):
    first = flow.create({"input": "x"}, task_id=TASK)
    second = flow.create({"input": "y"}, task_id=TASK, on_conflict="enqueue")
    assert (second.state, second.waiting_reason) == ("QUEUED", "task_busy")
    assert [started[0] for started in flow.dispatcher.started] == [first.id]  # no message for it yet
    assert flow.runner.run(first.id, 1, "w") is Outcome.COMPLETED
    assert [started[0] for started in flow.dispatcher.started] == [first.id, second.id]
    assert flow.row(second.id).waiting_reason is None
    assert flow.runner.run(second.id, 1, "w") is Outcome.COMPLETED


def test_interrupt_cancels_a_queued_execution_at_once_and_starts(flow):
    first = flow.create({"input": "x"}, task_id=TASK)
    second = flow.create({"input": "y"}, task_id=TASK, on_conflict="interrupt")
    old = flow.row(first.id)
    assert (old.state, old.error_code) == ("CANCELLED", "interrupted")
    assert flow.repo.history_of(first.id)[-1] == ("QUEUED", "CANCELLED", f"interrupted by {second.id}")
    assert flow.payloads(first.id, COMPLETED)[-1]["error_code"] == "interrupted"
    assert flow.dispatcher.started[-1][0] == second.id and flow.row(second.id).waiting_reason is None


def test_interrupt_of_a_running_execution_waits_for_its_cancel_to_end(flow):
    first = flow.create({"input": "x"}, task_id=TASK, hooked=True)
    created: list[Execution] = []

    def interrupt_during_the_call(request: ModelRequest) -> None:
        flow.hook.on_call = lambda request: None
        created.append(flow.create({"input": "y"}, task_id=TASK, on_conflict="interrupt"))
        assert flow.row(first.id).state == "CANCELLING"
        assert flow.row(created[0].id).waiting_reason == "task_busy"

    flow.hook.on_call = interrupt_during_the_call
    assert flow.runner.run(first.id, 1, "w") is Outcome.CANCELLED
    assert flow.row(first.id).error_code == "interrupted"  # kept from CANCELLING
    [second] = created
    assert flow.dispatcher.started[-1][0] == second.id
    assert flow.runner.run(second.id, 1, "w") is Outcome.COMPLETED


def test_the_reaper_hands_an_idle_task_to_its_oldest_waiter(flow):
    first = flow.create({"input": "x"}, task_id=TASK)
    second = flow.create({"input": "y"}, task_id=TASK, on_conflict="enqueue")
    flow.repo.rows[first.id]["state"] = "COMPLETED"  # as if its end's hand-over was lost
    [idle] = flow.repo.idle_task_waiters(10)
    assert flow.state_manager.wake_task_waiter(idle.tenant, idle.task_id)
    assert flow.dispatcher.started[-1][0] == second.id


def test_max_tokens_stops_a_pipeline_before_the_step_it_cannot_pay_for(flow):
    # Each simulated step uses its prompt's words plus ~3 for the output; three steps need ~30.
    ex = flow.create(PIPELINE, max_tokens=16)
    assert flow.runner.run(ex.id, 1, "w") is Outcome.FAILED
    row = flow.row(ex.id)
    assert (row.error_code, row.state) == ("budget_exceeded", "FAILED")
    assert "max_tokens is 16" in row.error_message
    assert list(row.context["steps"]) == ["a"]  # step b was not called
    step_a = row.context["steps"]["a"]["usage"]
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
        step_a["prompt_tokens"],
        step_a["completion_tokens"],
        step_a["total_tokens"],
    )


def test_usage_is_counted_on_the_execution_and_the_agents_day(flow):
    ex = flow.create(PIPELINE)
    assert flow.runner.run(ex.id, 1, "w") is Outcome.COMPLETED
    row = flow.row(ex.id)
    assert row.total_tokens == row.result["usage"]["total_tokens"] > 0
    assert row.prompt_tokens + row.completion_tokens == row.total_tokens
    assert flow.repo.usage_today[flow.agent.id] == {"executions": 1, "total_tokens": row.total_tokens}


def test_a_spent_daily_budget_fails_the_next_claim_and_refuses_creates(flow):
    flow.agent.daily_token_budget = 10
    first = flow.create({"input": "one two three four five six seven eight"})
    queued = flow.create({"input": "x"})  # created while the budget still had room
    assert flow.runner.run(first.id, 1, "w") is Outcome.COMPLETED  # it used more than 10
    assert flow.runner.run(queued.id, 1, "w") is Outcome.FAILED
    assert flow.row(queued.id).error_code == "budget_exceeded"
    with pytest.raises(BudgetExceededError) as refused:
        flow.create({"input": "y"})
    assert 0 < refused.value.retry_after <= 86400 and "daily token budget" in str(refused.value)


def test_an_interrupt_cancels_every_earlier_execution_and_hands_the_task_to_itself_only(flow):
    first = flow.create({"input": "x"}, task_id=TASK, hooked=True)
    waiting = flow.create({"input": "y"}, task_id=TASK, on_conflict="enqueue")
    created: list[Execution] = []

    def interrupt_during_the_call(request: ModelRequest) -> None:
        flow.hook.on_call = lambda request: None
        created.append(flow.create({"input": "z"}, task_id=TASK, on_conflict="interrupt"))

    flow.hook.on_call = interrupt_during_the_call
    assert flow.runner.run(first.id, 1, "w") is Outcome.CANCELLED
    [newest] = created
    assert (flow.row(waiting.id).state, flow.row(waiting.id).error_code) == ("CANCELLED", "interrupted")
    started = [s[0] for s in flow.dispatcher.started]
    assert waiting.id not in started and started[-1] == newest.id


def test_the_hand_over_skips_waiters_a_newer_interrupter_is_about_to_cancel(flow):
    first = flow.create({"input": "x"}, task_id=TASK)
    older = flow.create({"input": "y"}, task_id=TASK, on_conflict="enqueue")
    flow.repo.rows[first.id]["state"] = "RUNNING"
    newest = flow.create({"input": "z"}, task_id=TASK, on_conflict="allow")  # not a waiter
    flow.repo.rows[newest.id] |= {"on_conflict": "interrupt", "waiting_reason": "task_busy"}
    flow.repo.rows[first.id]["state"] = "COMPLETED"  # as if the interrupt had not reached `older` yet
    woken = flow.repo.take_task_waiter(first.tenant, TASK)
    assert woken is not None and woken.id == newest.id
    assert flow.row(older.id).waiting_reason == "task_busy"
