"""Fixtures of the end-to-end tests: a private PostgreSQL cluster and redis-server per session,
a migrated template database, and per-module stacks (own database, queue and processes).

Tests that restart or empty a service start a private one of their own on top of this
(see test_postgres_restart.py, test_redis_flush.py). Set E2E_KEEP=1 to keep the logs.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import PostgresCluster, RedisServer, Stack, make_workdir, migrate

TEMPLATE_DB = "agentexec_e2e_template"
_open_stacks: list[Stack] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Remember each phase's report on the item, so fixtures can see a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(autouse=True)
def _show_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """When an e2e test fails, print the tail of every process log of the open stacks."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for stack in _open_stacks:
            print(stack.logs(60))


@pytest.fixture(scope="session")
def e2e_workdir() -> Iterator[Path]:
    """Logs, sockets and cluster files of this session."""
    path = make_workdir("session")
    yield path
    if not os.environ.get("E2E_KEEP"):
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"e2e logs kept in {path}")


@pytest.fixture(scope="session")
def pg_cluster(e2e_workdir: Path) -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster with a migrated template database."""
    cluster = PostgresCluster(e2e_workdir).init()
    try:
        migrate(cluster.create_database(TEMPLATE_DB))
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def redis_server(e2e_workdir: Path) -> Iterator[RedisServer]:
    """A private redis-server for the non-destructive e2e modules."""
    server = RedisServer(e2e_workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def new_database(pg_cluster: PostgresCluster) -> Callable[[], str]:
    """Make a fresh migrated database (a copy of the template); returns its URL."""
    return lambda: pg_cluster.create_database(f"e2e_{secrets.token_hex(4)}", template=TEMPLATE_DB)


@pytest.fixture(scope="session")
def open_stack(e2e_workdir: Path) -> Callable[..., Stack]:
    """Make a Stack that is closed at the end of the session at the latest."""

    def make(database_url: str, redis_url: str, **kw: Any) -> Stack:
        workdir = e2e_workdir / f"stack-{secrets.token_hex(3)}"
        workdir.mkdir()
        stack = Stack(database_url=database_url, redis_url=redis_url, workdir=workdir, **kw)
        _open_stacks.append(stack)
        return stack

    yield make  # type: ignore[misc]
    while _open_stacks:
        _open_stacks.pop().close()


def close_stack(stack: Stack) -> None:
    """Stop a stack's processes and forget it."""
    stack.close()
    if stack in _open_stacks:
        _open_stacks.remove(stack)
