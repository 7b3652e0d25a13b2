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

The reconnection delay (`retry:`) rides on the first event block: a block holding only
`retry:` is dispatched by some clients (httpx-sse) as an empty event. When no event is
ready at once, a heartbeat comment is sent instead so the client gets its headers; a
heartbeat is one comment line with no blank line after it, for the same reason.

When the web server shuts down gracefully (`begin_shutdown()`, called by the gunicorn
worker in `api/server.py`), every open stream notices within `SHUTDOWN_CHECK_SECONDS`,
sends a final `event: reconnect` block (with the last event id and a retry hint) and
ends, so its client reconnects with Last-Event-ID to a server that is still up instead
of being cut at the graceful timeout.

Output deltas ride in the same stream (api/replay.py merges them with the log): a
delta's id is `E.k`, a logged event's `E`, and `Last-Event-ID` (or `?after=`) takes
either, so a reconnect resumes between two deltas as exactly as between two events.
`types` limits the frames sent; the stream still ends at the execution's end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
import structlog

from api import fanout, streams
from api.replay import Item, Replay
from app.deltas import Cursor
from app.errors import AgentExecError, ExecutionNotFoundError
from app.events import execution_channel
from app.execution.event_emitter import event_message
from app.execution.service import ExecutionService
from app.models import ExecutionEvent
from app.schemas import FINISHED_STATES, ExecutionState

log = structlog.get_logger(__name__)
PAGE = 500
RETRY_MS = 2000
RECONNECT = "reconnect"
# A comment line without the blank line that ends a block: a blank line after a comment makes
# httpx-sse (0.4.3, its issue #35) dispatch an empty event once any event had an id, since it
# keeps the last id sticky and counts it as content. Comments are ignored line by line anyway.
HEARTBEAT = ": keepalive\n"
# A backstop only: begin_shutdown() wakes every waiting stream at once (api/fanout.py). With
# 10,000 streams a process, every timed wake-up is 10,000 more a period: sse_watchers bench.
SHUTDOWN_CHECK_SECONDS = 15.0

_shutdown = threading.Event()
_open_streams = 0
_streams_changed = threading.Condition()


def begin_shutdown() -> None:
    """The server is going away: every open stream of this process sends `reconnect` and ends."""
    _shutdown.set()
    fanout.wake_all()


def shutting_down() -> bool:
    """True once `begin_shutdown()` was called in this process."""
    return _shutdown.is_set()


def wait_for_streams_to_end(timeout: float) -> bool:
    """Block until no stream of this process is open (True) or `timeout` passed (False)."""
    deadline = time.monotonic() + timeout
    with _streams_changed:
        while _open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _streams_changed.wait(left)
    return True


def _count_stream(delta: int) -> None:
    global _open_streams
    with _streams_changed:
        _open_streams += delta
        _streams_changed.notify_all()


def format_event(event: ExecutionEvent, retry_ms: int | None = None) -> str:
    """One SSE frame: id, event type and the JSON message (and `retry:` when given)."""
    retry = "" if retry_ms is None else f"retry: {retry_ms}\n"
    data = json.dumps(event_message(event), default=str)
    return f"{retry}id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


def format_item(item: Item, retry_ms: int | None = None) -> str:
    """One SSE frame of a logged event or a delta (`id: E` or `id: E.k`)."""
    retry = "" if retry_ms is None else f"retry: {retry_ms}\n"
    data = json.dumps(item.message, default=str)
    return f"{retry}id: {item.id}\nevent: {item.type}\ndata: {data}\n\n"


def format_reconnect(last_event_id: int | str, retry_ms: int = RETRY_MS) -> str:
    """The last frame of a stream cut by a server shutdown: reconnect with Last-Event-ID."""
    data = json.dumps(
        {"reason": "server_shutdown", "last_event_id": last_event_id, "retry_ms": retry_ms},
        separators=(",", ":"),
    )
    return f"retry: {retry_ms}\nevent: {RECONNECT}\ndata: {data}\n\n"


class EventStream:
    """Iterates the SSE frames of one execution, from `after` to its final event.

    `after` is a logged event id or a Cursor (from `E.k`); `types` keeps only those types.
    """

    def __init__(
        self,
        service: ExecutionService,
        execution_id: uuid.UUID,
        after: int | Cursor,
        *,
        heartbeat_seconds: float,
        resync_seconds: float = 300.0,  # a lost publish only; a Redis reconnect wakes every stream
        poll_seconds: float = 0.5,
        types: frozenset[str] | None = None,
    ):
        self.service = service
        self.execution_id = execution_id
        cursor = after if isinstance(after, Cursor) else Cursor(after)
        self.replay = Replay(service, execution_id, cursor, types)
        self.heartbeat_seconds = heartbeat_seconds
        self.resync_seconds = resync_seconds
        self.poll_seconds = poll_seconds
        self._pubsub: Any = None
        self._retry_sent = False

    def __iter__(self) -> Iterator[str]:
        _count_stream(+1)
        self._subscribe()
        try:
            yield from self._run()
        except streams.StreamEnded as exc:  # its key was revoked or its client left: nothing failed
            log.debug("event stream ended", execution_id=str(self.execution_id), reason=str(exc))
        except AgentExecError as exc:  # the database went away: end; the client resumes by id
            log.warning("event stream ended early", execution_id=str(self.execution_id), error=str(exc))
        finally:
            self._unsubscribe()
            _count_stream(-1)

    @property
    def last_id(self) -> int | str:
        """Where the stream is: a logged event id (int) or a delta's `E.k`."""
        cursor = self.replay.cursor
        return cursor.event if cursor.seq < 0 else str(cursor)

    def _frame(self, item: Item) -> str:
        """An event frame; the first one of the stream carries `retry:`."""
        retry = None if self._retry_sent else RETRY_MS
        self._retry_sent = True
        return format_item(item, retry)

    def _run(self) -> Iterator[str]:
        # The state is read before the first log read: if it was final, that read holds every
        # event up to the completion, so the stream ends after the replay.
        finished = self._finished()
        first, last_write = True, time.monotonic()
        while True:
            sent_any = False
            self.replay.ended = False
            for item in self.replay.read():
                yield self._frame(item)
                last_write = time.monotonic()
                sent_any = True
            if self.replay.ended or finished is not False:
                return
            if first and not sent_any:
                yield HEARTBEAT  # nothing to replay: the client gets its headers now
                last_write = time.monotonic()
            first = False
            next_resync = time.monotonic() + self.resync_seconds
            while time.monotonic() < next_resync:
                if shutting_down():
                    yield format_reconnect(self.last_id)
                    return
                if time.monotonic() - last_write >= self.heartbeat_seconds:
                    yield HEARTBEAT
                    last_write = time.monotonic()
                now = time.monotonic()
                wait = min(next_resync, last_write + self.heartbeat_seconds, now + SHUTDOWN_CHECK_SECONDS)
                if self._wait_for_message(max(wait - now, 0.0)):
                    break

    def _finished(self) -> bool | None:
        """Whether the execution is in a final state; None when it is gone."""
        try:
            return ExecutionState(self.service.get_execution(self.execution_id).state) in FINISHED_STATES
        except ExecutionNotFoundError:
            return None

    # ---------------------------------------------------------------- Redis

    def _subscribe(self) -> None:
        """Register with this process's fan-out hub (one Redis subscription per process)."""
        client = getattr(self.service.event_bus, "client", None)
        if not isinstance(client, redis.Redis):
            return  # no Redis (a test's fake bus): poll the log
        fanout.reading_after_wake(None)  # this stream's first reads are its own
        self._pubsub = fanout.hub_for(client).register(execution_channel(self.execution_id))
        lease = streams.current_lease()
        if lease is not None:
            lease.waiter = self._pubsub
            if lease.ended is not None:
                self._pubsub.end(lease.ended)

    def _unsubscribe(self) -> None:
        waiter, self._pubsub = self._pubsub, None
        if waiter is not None:
            waiter.hub.unregister(waiter)

    def _wait_for_message(self, timeout: float) -> bool:
        """Block up to `timeout` for a wake-up from the hub (True); while the hub has no live
        subscription (Redis down), wait at most `poll_seconds` and read the log anyway."""
        waiter: fanout.Waiter | None = self._pubsub
        if waiter is None:
            _shutdown.wait(min(timeout, self.poll_seconds))
            return True
        live = waiter.hub.live(waiter)
        woke = waiter.wait(timeout if live else min(timeout, waiter.hub.poll_seconds(self.poll_seconds)))
        if waiter.ended is not None:
            raise streams.StreamEnded(waiter.ended)
        fanout.reading_after_wake(waiter.woken_at if woke else None)
        return woke or not live
