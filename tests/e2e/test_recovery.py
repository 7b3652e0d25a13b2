"""Worker loss, end to end: kill -9 mid-run, a frozen worker's executions recovered by the reaper,
and the frozen worker, woken as a zombie, writing nothing.

Two `celery -A workers worker --pool threads` processes and `celery -A workers beat`
(the reaper every second, lease 3 s) run on a private PostgreSQL cluster and redis-server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import Proc, Stack, audit, pipeline, summarize

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(new_database: Any, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    """Beat and two workers (16 threads each) on this module's own database and queue."""
    s = open_stack(new_database(), redis_server.url)
    s.start_beat()
    workers = [s.start_worker(name, concurrency=16, wait=False) for name in ("rec-a", "rec-b")]
    for w in workers:
        s.wait_worker_ready(w)
    s.workers = workers  # type: ignore[attr-defined]
    yield s
    close_stack(s)


def standard(latency_ms: int, chunks: int = 10) -> dict[str, Any]:
    return {
        "type": "standard",
        "input": f"e2e {uuid.uuid4().hex[:8]}",
        "simulate": {"latency_ms": latency_ms, "chunks": chunks},
    }


def task_lines(proc: Proc, task_id: str, *needles: str) -> list[str]:
    return [
        line
        for line in proc.log_text().splitlines()
        if f"[{task_id}]" in line and all(n in line for n in needles)
    ]


@pytest.mark.timeout(90)
def test_killing_a_worker_mid_run_loses_nothing_and_runs_nothing_twice(stack: Stack) -> None:
    svc = stack.service
    victim, survivor = stack.workers  # type: ignore[attr-defined]
    ids = [stack.submit(pipeline(3, 300)).id for _ in range(20)]

    def victim_mid_pipeline() -> list[Any]:
        # Exactly one step done: two more to go (~600 ms), so these cannot finish before the kill.
        return [
            r
            for r in stack.rows(ids).values()
            if r.worker == victim.hostname
            and r.state == "RUNNING"
            and len((r.context or {}).get("steps") or {}) == 1
        ]

    held = wait_for(
        victim_mid_pipeline,
        timeout=30,
        interval=0.01,
        what="the victim worker to be in the middle of a pipeline",
    )
    victim.kill9()

    rows = stack.wait_states(ids, timeout=60, what="all 20 executions to finish after the kill")
    audits = [audit(svc, eid) for eid in ids]
    recovered = [a for a in audits if any("worker lost" in (reason or "") for _, _, reason in a.history)]
    summarize(
        "worker kill -9 mid-run (20 x 3-step pipelines, 300 ms/step, 2 workers)",
        audits,
        recovered_by_reaper=len(recovered),
    )
    assert [a.state for a in audits] == ["COMPLETED"] * 20, {str(a.execution_id): a.history for a in audits}
    assert [a.problems for a in audits] == [[]] * 20
    assert all(len(rows[eid].result["steps"]) == 3 for eid in ids)
    # The executions the victim held mid-pipeline were re-queued by the reaper under a new attempt,
    # finished by the survivor, and kept the steps the victim had checkpointed.
    held_ids = {r.id for r in held}
    assert held_ids <= {a.execution_id for a in recovered}
    for a in audits:
        if a.execution_id in held_ids:
            assert a.attempt >= 2 and rows[a.execution_id].worker == survivor.hostname
            assert 1 in a.checkpoints.values(), a.checkpoints
            reused = [name for name, done_in in a.checkpoints.items() if done_in == 1]
            assert all(a.calls_of(f"Step {name}") == [1] for name in reused), a.calls


@pytest.mark.timeout(120)
def test_a_frozen_worker_loses_its_executions_to_the_reaper_and_writes_nothing_when_it_wakes(
    stack: Stack,
) -> None:
    """SIGSTOP a worker holding five executions; cancel one and pause another meanwhile.

    The reaper (lease 3 s) cancels the CANCELLING one, pauses the PAUSING one, times out
    the one past its deadline, fails the one with no retries left and re-queues the last,
    which another worker finishes from its checkpoint. SIGCONT then wakes the frozen worker
    as a zombie: it must not change any of them.
    """
    svc = stack.service
    survivor = stack.workers[1]  # type: ignore[attr-defined]
    victim_queue = f"victim-{uuid.uuid4().hex[:6]}"
    victim = stack.start_worker("rec-victim", queues=[victim_queue], concurrency=8)
    try:
        requeued = stack.submit(pipeline(3, 2000), queue=victim_queue, max_retries=3)
        cancelled = stack.submit(standard(60_000), queue=victim_queue)
        paused = stack.submit(pipeline(2, 60_000), queue=victim_queue)
        spent = stack.submit(standard(60_000), queue=victim_queue, max_retries=0)
        wait_for(
            lambda: (
                (r := svc.get_execution(requeued.id)).progress_message == "Step s2"
                and "s1" in r.context.get("steps", {})
            ),
            timeout=30,
            what="step s1 to finish",
        )
        deadline = stack.submit(standard(60_000), queue=victim_queue, timeout_seconds=2)
        ids = [requeued.id, cancelled.id, paused.id, spent.id, deadline.id]
        stack.wait_states(ids, {"RUNNING"}, timeout=10, what="the victim to hold all five")
        victim.freeze()

        assert svc.cancel_execution(cancelled.id, reason="e2e: cancel while frozen").state == "CANCELLING"
        assert svc.pause_execution(paused.id).state == "PAUSING"
        # The survivor also serves the victim's queue from now on, so the re-queued attempt runs.
        stack.celery.control.add_consumer(
            victim_queue, destination=[survivor.hostname], reply=True, timeout=5
        )

        final = {
            requeued.id: "COMPLETED",
            cancelled.id: "CANCELLED",
            paused.id: "PAUSED",
            spent.id: "FAILED",
            deadline.id: "TIMED_OUT",
        }
        wait_for(
            lambda: {eid: r.state for eid, r in stack.rows(ids).items()} == final,
            timeout=40,
            what="the reaper to recover all five",
        )
        reasons = {eid: svc.get_state_history(eid, 1)[0].reason for eid in ids if eid != requeued.id}
        assert reasons == {
            cancelled.id: "worker lost while cancelling",
            paused.id: "worker lost while pausing",
            spent.id: "worker lost",
            deadline.id: "deadline passed and worker lost",
        }
        assert "worker lost" in svc.get_execution(spent.id).error_message
        report = audit(svc, requeued.id)
        assert report.problems == [] and report.attempt == 2
        assert report.checkpoints["s1"] == 1 and report.calls_of("Step s1") == [1]
        assert any("worker lost" in (reason or "") and to == "QUEUED" for _, to, reason in report.history)

        def snapshot() -> dict[uuid.UUID, tuple[Any, ...]]:
            return {
                eid: (
                    r.state,
                    r.attempt,
                    r.updated_at,
                    r.heartbeat_at,
                    r.context,
                    r.result,
                    r.progress_percentage,
                    len(svc.get_events(eid, 0, 100_000)),
                )
                for eid, r in stack.rows(ids).items()
            }

        before = snapshot()
        victim.thaw()
        # The zombie notices it lost every lease and ends all five runs without a write.
        wait_for(
            lambda: all(task_lines(victim, f"{eid}-1", "succeeded") for eid in ids),
            timeout=20,
            what="the zombie to end its five runs",
        )
        assert snapshot() == before
    finally:
        victim.kill9()
