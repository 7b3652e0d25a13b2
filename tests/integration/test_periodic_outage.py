"""Beat's periodic tasks while PostgreSQL is unreachable: each pass is skipped with one warning line.

Before, each pass raised DatabaseUnavailableError and Celery logged it with a traceback. A
worker of the PostgreSQL-restart e2e test (4 s outage, a pass a second of the reaper, the
schedule tick and the webhook dispatcher) spent seconds rendering those tracebacks with every
thread waiting on the logging lock, missed its heartbeats after PostgreSQL came back, and the
reaper failed 4 of its live runs as "worker lost". Beat sends the next pass anyway, so a
skipped pass loses nothing.

The outage is real: the service's DATABASE_URL names a port nothing listens on.
"""

from __future__ import annotations

import io
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workers.tasks as tasks
import workers.webhooks as webhook_tasks
from app.bootstrap import build_service
from app.config import Settings
from app.logging import configure_logging


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The tasks' service points at a closed port; yields the log they write."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/agentexec"
    broken = settings.model_copy(update={"database_url": url, "retention_days": 30})
    service = build_service(settings=broken)
    monkeypatch.setattr(tasks, "get_service", lambda: service)
    monkeypatch.setattr(webhook_tasks, "get_service", lambda: service)
    stream = io.StringIO()
    handler = configure_logging(Settings(log_format="console"), level="INFO", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


PASSES: dict[str, Callable[[], Any]] = {
    "reap": lambda: tasks.reap.run(),
    "purge": lambda: tasks.purge.run(),
    "schedule_tick": lambda: tasks.tick_schedules.run(),
    "webhook_dispatch": lambda: webhook_tasks.dispatch.run(),
    "webhooks.send": lambda: webhook_tasks.send.run(str(uuid.uuid4()), str(uuid.uuid4())),
}


@pytest.mark.parametrize("name", list(PASSES))
def test_a_periodic_pass_is_skipped_with_one_line_while_postgres_is_unreachable(
    name: str, unreachable: io.StringIO
) -> None:
    assert PASSES[name]() is None  # no exception for Celery to log with a traceback
    lines = unreachable.getvalue().splitlines()
    skipped = [line for line in lines if "skipped: database unavailable" in line]
    assert len(skipped) == 1 and f"task={name}" in skipped[0], lines
    assert "Traceback" not in unreachable.getvalue()
