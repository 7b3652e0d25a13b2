"""Test fixtures: a fresh PostgreSQL database per run, the shared Redis, real Celery workers.

The environment is set before any `app` import, so every component (and every
subprocess a test starts) reads the test database and a queue of its own.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.config import Settings  # only its defaults: no settings are read before the environment is set

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
# The server DATABASE_URL names (under `make test`, the embedded one of var/services.env when
# scripts/services.sh had to start one), else the default's; the run's database is made there.
_SERVER = make_url(os.environ.get("DATABASE_URL") or str(Settings.model_fields["database_url"].default))
PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL",
    _SERVER.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False),
)
TEST_DB = f"agentexec_test_{RUN_ID}"
os.environ["DATABASE_URL"] = _SERVER.set(database=TEST_DB).render_as_string(hide_password=False)
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
os.environ["DEFAULT_QUEUE"] = f"test-executions-{RUN_ID}"
os.environ.setdefault("HEARTBEAT_INTERVAL", "0.5")
os.environ.setdefault("RETRY_BACKOFF_BASE", "0.05")
os.environ.setdefault("RETRY_BACKOFF_CAP", "0.2")
os.environ.setdefault("AUTH_ENABLED", "false")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Webhook tests call receivers on 127.0.0.1 (refused unless listed) and retry within a second.
os.environ.setdefault("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
os.environ.setdefault("WEBHOOK_RETRY_BASE", "0.2")
os.environ.setdefault("WEBHOOK_TIMEOUT_SECONDS", "2")
# http tool tests call local servers (refused unless listed) and retry quickly.
os.environ.setdefault("TOOL_ALLOWED_HOSTS", "127.0.0.1")
os.environ.setdefault("TOOL_RETRY_BASE", "0.05")
os.environ.setdefault("TOOL_TIMEOUT_SECONDS", "2")

import psycopg  # noqa: E402

from app.config import get_settings  # noqa: E402


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def migrate(database_url: str, revision: str = "head", direction: str = "upgrade") -> None:
    """Run alembic as a user would, in a subprocess."""
    subprocess.run(
        [sys.executable, "-m", "alembic", direction, revision],
        cwd=ROOT,
        env=os.environ | {"DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """Settings of this test run, its database created, migrated and finally dropped."""
    _admin(f'CREATE DATABASE "{TEST_DB}"')
    try:
        migrate(os.environ["DATABASE_URL"])
        yield get_settings()
    finally:
        from app.db import dispose_all

        dispose_all()
        _admin(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
def session_factory(settings: Settings):  # type: ignore[no-untyped-def]
    from app.db import get_engine, make_session_factory

    return make_session_factory(get_engine(settings.database_url))


@pytest.fixture
def clean_db(session_factory):  # type: ignore[no-untyped-def]
    """Empty tables before a test (tests never rely on rows another test left)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    # A run the previous test left on the worker may be writing right now; TRUNCATE takes its
    # tables one by one and can deadlock with that write (PostgreSQL then aborts one of the
    # two). Tables in the order a run's statements touch them, and another try when it happens.
    truncate = text(
        "TRUNCATE executions, execution_state_history, execution_events, agent_usage_daily, agents, "
        "api_keys, reaper_status, retention_status, periodic_status, tenant_limits, webhook_deliveries, "
        "webhooks, webhook_cursor, schedules, tool_secrets CASCADE"
    )
    for attempt in range(5):
        try:
            with session_factory() as s:
                s.execute(truncate)
                s.commit()
            break
        except OperationalError as exc:
            if "deadlock" not in str(exc) or attempt == 4:
                raise
    yield


class RecordingDispatcher:
    """Stands in for Celery where a test only needs to see what would be sent."""

    def __init__(self) -> None:
        self.started: list[tuple] = []
        self.cancelled: list[tuple] = []
        self.signals: list[tuple] = []

    def start_task(self, execution_id, attempt, *, queue, priority, countdown=0):  # type: ignore[no-untyped-def]
        self.started.append((execution_id, attempt, queue, priority, countdown))

    def cancel_task(self, execution_id, attempt=None):  # type: ignore[no-untyped-def]
        self.cancelled.append((execution_id, attempt))

    def signal_task(self, execution_id, command):  # type: ignore[no-untyped-def]
        self.signals.append((execution_id, command))

    def queue_depth(self, queue):  # type: ignore[no-untyped-def]
        return 0  # nothing is ever sent, so nothing waits


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def service(settings, session_factory, clean_db, dispatcher):  # type: ignore[no-untyped-def]
    """An ExecutionService on the real database and Redis, sending no Celery tasks."""
    from app.bootstrap import build_service

    svc = build_service(background_tasks=dispatcher, settings=settings, session_factory=session_factory)
    yield svc
    if svc.control_hub is not None:
        svc.control_hub.stop()


@pytest.fixture
def agent(service):  # type: ignore[no-untyped-def]
    from app.schemas import AgentCreate

    return service.create_agent(AgentCreate(name=f"agent-{secrets.token_hex(3)}", system_prompt="Be brief."))


@pytest.fixture(scope="session")
def celery_app(settings):  # type: ignore[no-untyped-def]
    """The real Celery app, pointed at the test database and a queue of this run."""
    from workers import celery_app as app

    return app


@pytest.fixture(scope="session")
def celery_worker(celery_app, settings):  # type: ignore[no-untyped-def]
    """A real Celery worker (threads pool) in this process, consuming this run's queue."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app,
        pool="threads",
        concurrency=8,
        perform_ping_check=False,
        shutdown_timeout=10,
        loglevel="WARNING",
        queues=[settings.default_queue, f"{settings.default_queue}.webhooks"],  # as -Q and the webhook queue
    ) as worker:
        yield worker


@pytest.fixture
def worker_service(celery_worker, clean_db):  # type: ignore[no-untyped-def]
    """The ExecutionService the worker uses (Celery-backed background tasks)."""
    from workers.tasks import get_service

    return get_service()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
