"""PostgreSQL restarted while executions run: the API answers 503 problem+json meanwhile,
recovers by itself, and every execution still ends COMPLETED, none run twice.

This module owns its PostgreSQL cluster (initdb in a temp dir, stopped and started
here); workers, beat and gunicorn `api:create_app()` run as subprocesses against it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import RECOVERY_ENV, PostgresCluster, Stack, audit, migrate, pipeline, summarize

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_postgres(e2e_workdir: Path) -> Iterator[PostgresCluster]:
    """This module's PostgreSQL cluster: nothing else uses it, so it may be stopped."""
    cluster = PostgresCluster(e2e_workdir).init()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def stack(own_postgres: PostgresCluster, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    """Beat, two workers and the API on the module's own cluster."""
    url = own_postgres.create_database("agentexec")
    migrate(url)
    s = open_stack(url, redis_server.url)
    s.start_beat()
    workers = [s.start_worker(name, concurrency=16, wait=False) for name in ("pg-a", "pg-b")]
    s.web, s.base_url = s.start_api()  # type: ignore[attr-defined]
    for w in workers:
        s.wait_worker_ready(w)
    s.workers = workers  # type: ignore[attr-defined]
    yield s
    close_stack(s)


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


@pytest.mark.timeout(120)
def test_a_postgres_restart_mid_run_gives_503_then_recovers_and_every_execution_completes(
    stack: Stack, own_postgres: PostgresCluster
) -> None:
    svc = stack.service
    base = stack.base_url  # type: ignore[attr-defined]
    # No retries: a live run mistaken for a lost one after the restart would end FAILED.
    ids = [stack.submit(pipeline(3, 500), max_retries=0).id for _ in range(20)]
    one = f"{base}/v1/executions/{ids[0]}"
    assert get(one).status_code == 200
    wait_for(
        lambda: (
            sum(
                r.state == "RUNNING" and bool((r.context or {}).get("steps"))
                for r in stack.rows(ids).values()
            )
            >= 5
        ),
        timeout=30,
        interval=0.02,
        what="executions to be mid-pipeline",
    )

    own_postgres.stop("fast")
    # The outage outlasts the lease, so every heartbeat is stale when PostgreSQL comes back.
    back_after = time.monotonic() + float(RECOVERY_ENV["LEASE_TIMEOUT"]) + 1
    seen: set[tuple[str, int, str]] = set()

    def answers_503() -> bool:
        for path in ("/readyz", f"/v1/executions/{ids[0]}"):
            r = get(base + path)
            seen.add((path.split("/")[1], r.status_code, r.headers.get("content-type", "")))
        return all(status == 503 for _, status, _ in seen)

    wait_for(answers_503, timeout=15, what="the API to answer 503 for both routes")
    for _route, status, ctype in seen:
        assert status == 503 and ctype.startswith("application/problem+json"), seen
    body = get(one).json()
    assert body["status"] == 503 and body["title"]
    # Hold the outage until the workers have felt it (a failed heartbeat) and the lease has passed.
    wait_for(
        lambda: (
            all("heartbeat failed" in w.log_text() for w in stack.workers)  # type: ignore[attr-defined]
            and time.monotonic() >= back_after
        ),
        timeout=15,
        what="the outage to outlast the lease",
    )
    own_postgres.start()

    wait_for(lambda: get(f"{base}/readyz").status_code == 200, timeout=30, what="/readyz to recover")
    wait_for(lambda: get(one).status_code == 200, timeout=10, what="GET /v1/executions/{id} to recover")
    stack.wait_states(ids, timeout=60, what="all 20 to finish after the restart")
    audits = [audit(svc, eid) for eid in ids]
    summarize(
        "PostgreSQL down 4 s mid-run (20 x 3-step pipelines, 500 ms/step, max_retries 0)",
        audits,
        requeued=sum(a.attempt > 1 for a in audits),
    )
    assert [a.state for a in audits] == ["COMPLETED"] * 20, {str(a.execution_id): a.history for a in audits}
    assert [a.problems for a in audits] == [[]] * 20
    # The workers were alive all along: nothing was re-queued as "worker lost".
    assert {a.attempt for a in audits} == {1}
