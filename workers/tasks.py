"""Celery tasks: run one attempt of an execution; reap stale ones. Both tiny, like web views.

Each worker process builds its ExecutionService once, through the composition root, when
it starts: `worker_process_init` in a prefork child, `worker_init` for the threads and
solo pools (one process). A process that runs a task without either signal (a test's
in-process worker started before the service was needed) builds it on first use, under a
lock, so two threads never build two services.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import structlog
from celery import signals
from celery.exceptions import Ignore, Reject

from app.bootstrap import build_service
from app.errors import DatabaseError, DatabaseUnavailableError
from app.execution.control import ControlHub
from app.execution.dispatch import (
    PURGE,
    REAP,
    RUN_EXECUTION,
    SCHEDULE_TICK,
    SCHEDULE_TICK_RECORD,
    reaper_queue,
)
from app.execution.policy import Outcome
from app.execution.service import ExecutionService
from workers.background import BackgroundTaskManager
from workers.celery_app import celery_app

log = structlog.get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def skipped_while_database_down(
    name: str, *, record: bool = False
) -> Callable[[Callable[P, T]], Callable[P, T | None]]:
    """A periodic pass that PostgreSQL cannot serve is skipped with one warning line (None).

    Beat sends the next pass anyway, so nothing is lost; raising instead made Celery log a
    traceback per pass, and a worker rendering them during an outage stalled long enough to
    miss its own heartbeats once PostgreSQL was back (tests/integration/test_periodic_outage.py).
    With `record`, a pass that ran is noted in periodic_status under `name` (its liveness:
    /metrics, /readyz, `agentexec status`); the reaper and retention keep records of their own.
    """

    def decorate(body: Callable[P, T]) -> Callable[P, T | None]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> T | None:
            try:
                done = body(*args, **kwargs)
                if record:
                    get_service().repository.record_periodic_run(name)
                return done
            except DatabaseUnavailableError:
                log.warning("periodic task skipped: database unavailable", task=name)
                return None

        return run

    return decorate


class _ProcessService:
    """The ExecutionService of this worker process (rebuilt in a forked child)."""

    def __init__(self) -> None:
        self._service: ExecutionService | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> ExecutionService:
        service = self._service
        if service is None or self._pid != os.getpid():
            with self._lock:
                if self._service is None or self._pid != os.getpid():
                    self._service = build_service(background_tasks=_dispatcher)
                    self._pid = os.getpid()
                service = self._service
        return service

    def built(self) -> ExecutionService | None:
        """The service if this process built it already (never builds)."""
        return self._service if self._pid == os.getpid() else None

    def reset(self) -> None:
        with self._lock:
            self._service = None


class _ConsumerGate:
    """Stops this worker taking messages from a queue while it cannot reach PostgreSQL.

    A claim that cannot reach the database gives its message back; the worker then cancels
    its consumer of that queue (Celery remote control, addressed to itself: the broker still
    answers) and a thread pings PostgreSQL until it answers, then adds the consumer back.
    Meanwhile the queue's messages go to workers that can run them.
    """

    def __init__(self, poll_seconds: float = 1.0) -> None:
        self.poll_seconds = poll_seconds
        self._paused: set[str] = set()
        self._lock = threading.Lock()

    def pause(self, queue: str, hostname: str, service: ExecutionService) -> None:
        with self._lock:
            if queue in self._paused:
                return
            self._paused.add(queue)
        log.warning("PostgreSQL unreachable: this worker stops taking messages", queue=queue)
        celery_app.control.cancel_consumer(queue, destination=[hostname])
        threading.Thread(
            target=self._resume_when_reachable,
            args=(queue, hostname, service),
            name="agentexec-db-gate",
            daemon=True,
        ).start()

    def _resume_when_reachable(self, queue: str, hostname: str, service: ExecutionService) -> None:
        while True:
            time.sleep(self.poll_seconds)
            try:
                service.repository.ping()
                break
            except DatabaseError:
                continue
        celery_app.control.add_consumer(queue, destination=[hostname])
        with self._lock:
            self._paused.discard(queue)
        log.info("PostgreSQL reachable again: this worker takes messages again", queue=queue)


_gate = _ConsumerGate()


def _dispatcher(control_hub: ControlHub) -> BackgroundTaskManager:
    return BackgroundTaskManager(celery_app, control_hub)


_process = _ProcessService()


def get_service() -> ExecutionService:
    """This worker process's ExecutionService."""
    return _process.get()


@signals.worker_process_init.connect
def _build_in_child(**_: Any) -> None:
    _process.reset()
    _process.get()


@signals.worker_init.connect
def _build_in_worker(**_: Any) -> None:
    _process.get()


@signals.worker_shutting_down.connect
def _hand_back_on_warm_shutdown(how: str | None = None, **_: Any) -> None:
    """SIGTERM: running executions go back to QUEUED (new attempt) at their next step boundary,
    or mid-call after WORKER_SHUTDOWN_GRACE, so the warm shutdown ends within the grace instead
    of waiting for every run to finish. Runs in Celery's signal handler: it only sets flags.
    (The threads and solo pools run tasks in this process; prefork children are not reached.)"""
    service = _process.built()
    if how == "Warm" and service is not None and service.control_hub is not None:
        service.control_hub.drain(service.settings.worker_shutdown_grace)


@signals.celeryd_after_setup.connect
def _consume_the_reaper_queue(instance: Any = None, **_: Any) -> None:
    """Every worker also takes the reaper's task from its own queue, whatever -Q says."""
    if instance is not None:
        queue = reaper_queue(instance.app.conf.task_default_queue)
        instance.app.amqp.queues.select_add(queue)


@signals.beat_init.connect
def _beat_sends_no_sent_events(sender: Any = None, **_: Any) -> None:
    """Beat only sends the reaper's task: no `task-sent` event for it either (see `reap`)."""
    if sender is not None:
        sender.app.conf.task_send_sent_event = False


class ExecutionFailed(Exception):
    """The attempt ended the execution FAILED or TIMED_OUT: the Celery task fails with its error.

    Expected (the task's `throws`): the worker logs one line, no traceback, and Flower shows
    the task as FAILURE with this message.
    """

    def __init__(self, execution_id: str, state: str, error: str | None, error_code: str | None) -> None:
        self.execution_id, self.state, self.error, self.error_code = execution_id, state, error, error_code
        code = f" [error_code={error_code}]" if error_code else ""
        super().__init__(f"execution {execution_id} {state}{code}: {error or 'no error recorded'}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.state, self.error, self.error_code))


def _report_to_celery(task: Any, service: ExecutionService, execution_id: str, outcome: Outcome) -> None:
    """Make the Celery task end as Flower should show it: FAILURE for FAILED and TIMED_OUT,
    REVOKED for CANCELLED (an event, then the task is acknowledged without a success event)."""
    if outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
        try:
            row = service.get_execution(uuid.UUID(execution_id))
            error, code = row.error_message, row.error_code
        except DatabaseError:
            error, code = None, None
        raise ExecutionFailed(execution_id, outcome.value, error, code)
    if outcome is Outcome.CANCELLED:
        task.send_event("task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore("execution cancelled")


@celery_app.task(name=RUN_EXECUTION, bind=True, ignore_result=True, throws=(ExecutionFailed,))
def run_execution(self, execution_id: str, attempt: int) -> str:  # type: ignore[no-untyped-def]
    """Claim the attempt and run it; a duplicate or stale delivery claims nothing and exits.

    The task succeeds with the outcome (COMPLETED, PAUSED, a retry's QUEUED, skipped...),
    fails for FAILED and TIMED_OUT, and is reported revoked for CANCELLED.
    """
    with structlog.contextvars.bound_contextvars(execution_id=execution_id, attempt=attempt):
        service = get_service()
        if service.control_hub is not None and service.control_hub.draining():
            # A message that reaches a worker already shutting down (often the hand-back of one
            # of its own runs) is given back unclaimed: claiming it would only hand it back
            # again and spend an attempt for nothing.
            raise Reject("this worker is shutting down; the message goes back to the queue", requeue=True)
        outcome = service.run_attempt(
            uuid.UUID(execution_id), int(attempt), worker=self.request.hostname or "worker"
        )
        log.info("run finished", outcome=outcome.value)
        if outcome is Outcome.DATABASE_UNAVAILABLE:
            hostname = self.request.hostname or "worker"
            queue = (self.request.delivery_info or {}).get("routing_key") or service.settings.default_queue
            _gate.pause(queue, hostname, service)
            raise Reject("PostgreSQL unreachable; the message goes back to the queue", requeue=True)
        _report_to_celery(self, service, execution_id, outcome)
        return outcome.value


@celery_app.task(name=REAP, ignore_result=True, send_events=False)
@skipped_while_database_down("reap")
def reap() -> dict[str, int]:
    """Recover stale executions (one reaper at a time across the cluster).

    Sends no task events: a pass every few seconds would bury the executions in Flower.
    Its liveness is the reaper_status row (`agentexec status`, /readyz, /metrics)."""
    return get_service().reap()


@celery_app.task(name=PURGE, ignore_result=True, send_events=False)
@skipped_while_database_down("purge")
def purge() -> int:
    """Retention: delete finished executions older than RETENTION_DAYS (no task events, like the
    reaper; its record is the retention_status row: /metrics)."""
    return get_service().purge()


@celery_app.task(name=SCHEDULE_TICK, ignore_result=True, send_events=False)
@skipped_while_database_down(SCHEDULE_TICK_RECORD, record=True)
def tick_schedules() -> dict[str, int]:
    """Queue the delayed starts that are due and create the runs of due cron schedules (beat
    sends it every SCHEDULE_TICK_INTERVAL; no task events, like the reaper). Two at once
    share the work: rows are claimed with SKIP LOCKED and a tick's run has a unique key."""
    return get_service().tick_schedules()
