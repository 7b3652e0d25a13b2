"""Redis is transport, PostgreSQL is the truth: queued executions survive an emptied Redis.

This module owns its redis-server (started on a free port, emptied with FLUSHALL and
restarted here); the database is a fresh one on the session's private cluster. The
reaper (beat every second, REDELIVER_AFTER 3 s) re-sends what no worker claimed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import Proc, RedisServer, Stack, audit, pipeline, summarize

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_redis(e2e_workdir: Path) -> Iterator[RedisServer]:
    """This module's redis-server: nothing else uses it, so it may be emptied and restarted."""
    server = RedisServer(e2e_workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(new_database: Any, own_redis: RedisServer, open_stack: Any) -> Iterator[Stack]:
    """Beat on the module's own Redis; the tests start workers when they need them."""
    s = open_stack(new_database(), own_redis.url)
    s.start_beat()
    yield s
    close_stack(s)


def queued_messages(server: RedisServer, queue: str) -> int:
    """How many agentexec.run_execution messages wait in the queue's Redis lists (all priorities)."""
    client = server.client()
    return sum(
        sum(1 for m in client.lrange(key, 0, -1) if b"agentexec.run_execution" in m)
        for key in client.keys(f"{queue}*")
        if client.type(key) == b"list"
    )


def redelivered(worker: Proc) -> int:
    """Executions the reaper re-sent, summed over the reap results in the worker's log."""
    return sum(int(n) for n in re.findall(r"'redelivered': (\d+)", worker.log_text()))


@pytest.mark.timeout(90)
def test_twenty_executions_queued_while_no_worker_runs_survive_a_flushall(
    stack: Stack, own_redis: RedisServer
) -> None:
    svc = stack.service
    ids = [stack.submit(pipeline(2, 200)).id for _ in range(20)]
    assert queued_messages(own_redis, stack.queue) == 20
    own_redis.flushall()
    assert queued_messages(own_redis, stack.queue) == 0

    worker = stack.start_worker("flush-w1", concurrency=16)
    try:
        stack.wait_states(ids, timeout=40, what="the reaper to re-send all 20 and the worker to run them")
        audits = [audit(svc, eid) for eid in ids]
        summarize("Redis FLUSHALL with 20 queued, worker stopped", audits, redelivered=redelivered(worker))
        assert [a.state for a in audits] == ["COMPLETED"] * 20
        assert [a.problems for a in audits] == [[]] * 20
        # Re-sending keeps the attempt: the lost message is replaced, not the attempt.
        assert {a.attempt for a in audits} == {1}
        assert all(
            [to for _, to, _ in a.history] == ["PENDING", "QUEUED", "RUNNING", "COMPLETED"] for a in audits
        )
        assert redelivered(worker) >= 20
    finally:
        worker.stop(grace=2)


@pytest.mark.timeout(90)
def test_executions_waiting_in_the_queue_survive_a_flushall_while_a_worker_runs(
    stack: Stack, own_redis: RedisServer
) -> None:
    svc = stack.service
    worker = stack.start_worker("flush-w2", concurrency=2)
    try:
        ids = [
            stack.submit(
                {"type": "standard", "input": f"q {uuid.uuid4().hex[:6]}", "simulate": {"latency_ms": 1000}}
            ).id
            for _ in range(12)
        ]
        wait_for(
            lambda: sum(r.state == "RUNNING" for r in stack.rows(ids).values()) == 2,
            timeout=20,
            what="the worker to hold two",
        )
        own_redis.flushall()
        stack.wait_states(ids, timeout=60, what="all 12 to finish after the flush")
        audits = [audit(svc, eid) for eid in ids]
        summarize("Redis FLUSHALL with 10 waiting, worker running", audits)
        assert [a.state for a in audits] == ["COMPLETED"] * 12
        assert [a.problems for a in audits] == [[]] * 12
    finally:
        worker.stop(grace=2)


@pytest.mark.timeout(90)
def test_a_worker_still_consumes_after_redis_restarted_empty_behind_its_back(
    stack: Stack, own_redis: RedisServer
) -> None:
    """The worker is frozen while Redis restarts, so Redis is back before it sees the old
    connections fail (the worst case of a fast restart). It must reconnect and carry on:
    this used to leave it blocked forever on its remote-control connection."""
    svc = stack.service
    worker = stack.start_worker("flush-w3", concurrency=4)
    try:
        ids = [stack.submit(pipeline(2, 500)).id for _ in range(12)]
        wait_for(
            lambda: sum(r.state == "RUNNING" for r in stack.rows(ids).values()) >= 2,
            timeout=20,
            what="the worker to start running",
        )
        worker.freeze()
        own_redis.stop()
        own_redis.start()  # the same port, no persistence: empty
        worker.thaw()
        stack.wait_states(ids, timeout=60, what="all 12 to finish after the restart")
        later = [stack.submit(pipeline(1, 0)).id for _ in range(4)]
        stack.wait_states(later, timeout=30, what="executions sent after the restart to finish")
        audits = [audit(svc, eid) for eid in ids + later]
        summarize("Redis restarted empty with 12 running/queued (+4 sent after)", audits)
        assert [a.state for a in audits] == ["COMPLETED"] * 16
        assert [a.problems for a in audits] == [[]] * 16
    finally:
        worker.stop(grace=2)
