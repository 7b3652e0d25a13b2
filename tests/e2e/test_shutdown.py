"""A warm shutdown (SIGTERM) hands running executions back at once: no lease wait, no reaper.

No beat runs in this module, so nothing but the stopping worker itself can move its
executions on: whatever is QUEUED again after the SIGTERM was handed back by the worker.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import Stack, pipeline

GRACE = 2.0


@pytest.fixture(scope="module")
def stack(new_database: Any, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    s = open_stack(new_database(), redis_server.url, extra_env={"WORKER_SHUTDOWN_GRACE": str(GRACE)})
    yield s
    close_stack(s)


def _history(stack: Stack, execution_id: Any) -> list[tuple[str | None, str, str | None]]:
    return [(h.from_state, h.to_state, h.reason) for h in stack.service.get_state_history(execution_id, 50)]


@pytest.mark.timeout(120)
def test_sigterm_hands_running_executions_back_within_the_grace_and_another_worker_finishes_them(
    stack: Stack,
) -> None:
    leaving = stack.start_worker("leaving", concurrency=4)
    # Short steps reach a step boundary within the grace; 10-minute steps never do.
    short = stack.submit(pipeline(3, 600, chunks=6))
    long = stack.submit(pipeline(2, 600_000, chunks=1000))
    stack.wait_states([short.id, long.id], {"RUNNING"}, what="both to run")
    wait_for(
        lambda: "s1" in (stack.rows([short.id])[short.id].context or {}).get("steps", {}),
        what="the short pipeline's first step",
    )

    started = time.monotonic()
    leaving.signal(signal.SIGTERM)
    wait_for(lambda: not leaving.alive(), timeout=GRACE + 15, interval=0.1, what="the worker to exit")
    exited_after = time.monotonic() - started
    rows = stack.wait_states([short.id, long.id], {"QUEUED"}, timeout=5, what="both to be handed back")

    assert exited_after < GRACE + 10, exited_after  # not the 10-minute step, not the lease
    for row in rows.values():
        assert row.attempt == 2
    for execution_id in (short.id, long.id):
        last = _history(stack, execution_id)[-1]
        assert last[:2] == ("RUNNING", "QUEUED") and "handed back" in (last[2] or "")

    staying = stack.start_worker("staying", concurrency=4)
    done = stack.wait_states([short.id], timeout=30, what="the short pipeline to finish elsewhere")[short.id]
    assert done.state == "COMPLETED" and done.attempt == 2
    steps = done.context["steps"]
    assert steps["s1"]["attempt"] == 1  # finished before the shutdown: not run again
    assert steps["s3"]["attempt"] == 2
    stack.service.cancel_execution(long.id)
    stack.wait_states([long.id], {"CANCELLED"}, timeout=15, what="the long one to be cancelled")
    staying.stop()
