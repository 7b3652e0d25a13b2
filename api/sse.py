"""The SSE stream of one execution's events: no gap, no duplicate, never hanging.

Order of work: subscribe to `agent.execution.events.<id>` FIRST, then replay the log
after the client's last event id from PostgreSQL, then follow live. A live message is
relayed only through the log: it wakes the stream, which reads every event after the
last id it sent (so ids already sent are dropped, and an event whose publish came late
or was lost is still sent in order). The log is also read every `resync_seconds`
without a wake-up, and every `poll_seconds` while Redis is down, so a stream never
waits on Redis. A comment line every `heartbeat_seconds` finds clients that left
(the write fails and the WSGI server closes the generator, which releases the
subscription). The stream ends after the final `agent.execution.completed` event, at
once after the replay when the execution had already finished.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
import structlog

from app.errors import AgentExecError, ExecutionNotFoundError
from app.events import COMPLETED, execution_channel
from app.execution.event_emitter import event_message
from app.execution.service import ExecutionService
from app.models import ExecutionEvent
from app.schemas import FINISHED_STATES, ExecutionState

log = structlog.get_logger(__name__)
PAGE = 500


def format_event(event: ExecutionEvent) -> str:
    """One SSE frame: id, event type and the JSON message."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event_message(event), default=str)}\n\n"


class EventStream:
    """Iterates the SSE frames of one execution, from `after` to its final event."""

    def __init__(
        self,
        service: ExecutionService,
        execution_id: uuid.UUID,
        after: int,
        *,
        heartbeat_seconds: float,
        resync_seconds: float = 5.0,
        poll_seconds: float = 0.5,
    ):
        self.service = service
        self.execution_id = execution_id
        self.last_id = after
        self.heartbeat_seconds = heartbeat_seconds
        self.resync_seconds = resync_seconds
        self.poll_seconds = poll_seconds
        self._pubsub: Any = None

    def __iter__(self) -> Iterator[str]:
        self._subscribe()
        try:
            yield "retry: 2000\n\n"
            yield from self._run()
        except AgentExecError as exc:  # the database went away: end; the client resumes by id
            log.warning("event stream ended early", execution_id=str(self.execution_id), error=str(exc))
        finally:
            self._unsubscribe()

    def _run(self) -> Iterator[str]:
        last_write = time.monotonic()
        # The state is read before the first log read: if it was final, that read holds every
        # event up to the completion, so the stream ends after the replay.
        finished = self._finished()
        while True:
            sent_final = False
            for event in self._read_log():
                yield format_event(event)
                last_write = time.monotonic()
                sent_final = event.type == COMPLETED
            if sent_final or finished is not False:
                return
            next_resync = time.monotonic() + self.resync_seconds
            while time.monotonic() < next_resync:
                if time.monotonic() - last_write >= self.heartbeat_seconds:
                    yield ": keepalive\n\n"
                    last_write = time.monotonic()
                wait = min(next_resync, last_write + self.heartbeat_seconds) - time.monotonic()
                if self._wait_for_message(max(wait, 0.0)):
                    break

    def _finished(self) -> bool | None:
        """Whether the execution is in a final state; None when it is gone."""
        try:
            return ExecutionState(self.service.get_execution(self.execution_id).state) in FINISHED_STATES
        except ExecutionNotFoundError:
            return None

    def _read_log(self) -> Iterator[ExecutionEvent]:
        while True:
            events = self.service.get_events(self.execution_id, after=self.last_id, limit=PAGE)
            for event in events:
                self.last_id = event.id
                yield event
            if len(events) < PAGE:
                return

    # ---------------------------------------------------------------- Redis

    def _subscribe(self) -> None:
        bus = self.service.event_bus
        if bus is None:
            return
        try:
            pubsub = bus.pubsub()
            pubsub.subscribe(execution_channel(self.execution_id))
            self._pubsub = pubsub
        except (redis.RedisError, OSError) as exc:
            log.warning("event stream polls the log: Redis unavailable", error=str(exc))
            self._pubsub = None

    def _unsubscribe(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (redis.RedisError, OSError):
                log.debug("closing an event subscription failed")
            self._pubsub = None

    def _wait_for_message(self, timeout: float) -> bool:
        """Block up to `timeout` for a live message (True) or poll interval while Redis is down."""
        if self._pubsub is None:
            time.sleep(min(timeout, self.poll_seconds))
            return True
        try:
            message = self._pubsub.get_message(timeout=timeout)
            if message is None:
                return False
            while self._pubsub.get_message(timeout=0) is not None:
                pass  # drain: one read of the log covers them all
            return True
        except (redis.RedisError, OSError) as exc:
            log.warning("event stream lost Redis; polling the log", error=str(exc))
            self._unsubscribe()
            return True
