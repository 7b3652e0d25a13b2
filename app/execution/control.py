"""Reaching a running execution: stop requests, deadlines and heartbeats.

Each worker process has one ControlHub. It holds a RunControl per execution it runs,
listens on the Redis control channel (so a cancel reaches a worker within a second,
even in the middle of a model call) and refreshes `heartbeat_at` of everything it
holds in ONE statement per interval. The heartbeat also reads the states back, so a
lost control message delays a stop by one interval at most.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import redis
import structlog

from app.errors import ExecutionInterrupted
from app.events import EventBus
from app.execution.repository import ExecutionRepository
from app.schemas import HELD_BY_WORKER, ExecutionState

log = structlog.get_logger(__name__)
CONTROL_CHANNEL = "agentexec.control"
CANCEL, PAUSE, TIMEOUT, LOST = "cancel", "pause", "timeout", "lost"
HANDBACK = "handback"  # the worker is shutting down: give the execution back for another attempt
_PRIORITY = {HANDBACK: 0, PAUSE: 1, TIMEOUT: 2, CANCEL: 3, LOST: 4}
_HELD = frozenset(s.value for s in HELD_BY_WORKER)


class RunControl:
    """The stop flag and deadline of one running attempt."""

    def __init__(self, execution_id: uuid.UUID, attempt: int, timeout_seconds: float | None):
        self.execution_id = execution_id
        self.attempt = attempt
        self.deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        self.reason: str | None = None
        self._event = threading.Event()
        self._urgent = threading.Event()

    def request(self, kind: str, *, urgent: bool | None = None) -> None:
        """Ask the run to stop; a stronger reason (cancel over pause) wins. An urgent request
        stops a model call in the middle; others wait for the step boundary (a pause always)."""
        if self.reason is None or _PRIORITY[kind] > _PRIORITY[self.reason]:
            self.reason = kind
        self._event.set()
        if urgent if urgent is not None else kind not in (PAUSE, HANDBACK):
            self._urgent.set()

    def check(self) -> None:
        """Raise ExecutionInterrupted when the run must stop now (step boundaries)."""
        self._check_deadline()
        if self._event.is_set() and self.reason is not None:
            raise ExecutionInterrupted(self.reason)

    def check_urgent(self) -> None:
        """Raise for a cancel or the deadline; a pause waits for the step boundary."""
        self._check_deadline()
        if self._urgent.is_set() and self.reason is not None:
            raise ExecutionInterrupted(self.reason)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking at once for a cancel or the deadline."""
        end = time.monotonic() + seconds
        while True:
            self.check_urgent()
            left = end - time.monotonic()
            if left <= 0:
                return
            if self.deadline is not None:
                left = min(left, max(self.deadline - time.monotonic(), 0.0) + 0.001)
            self._urgent.wait(left)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.request(TIMEOUT)


class ControlHub:
    """Per-process registry of running executions, control listener and heartbeat."""

    def __init__(self, repository: ExecutionRepository, event_bus: EventBus, heartbeat_interval: float):
        self.repository = repository
        self.event_bus = event_bus
        self.heartbeat_interval = heartbeat_interval
        self._runs: dict[uuid.UUID, RunControl] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._draining = threading.Event()

    # --------------------------------------------------------------- registry

    def register(self, run: RunControl) -> None:
        """Hold `run` until `unregister`; starts the background threads on first use."""
        self.start()
        with self._lock:
            self._runs[run.execution_id] = run
        if self._draining.is_set():  # claimed while the worker shuts down: give it back at once
            run.request(HANDBACK)

    def draining(self) -> bool:
        """True once the worker shuts down: it must claim nothing new."""
        return self._draining.is_set()

    def unregister(self, run: RunControl) -> None:
        """Forget the run (only if it is still the registered one)."""
        with self._lock:
            if self._runs.get(run.execution_id) is run:
                del self._runs[run.execution_id]

    def held(self) -> dict[uuid.UUID, int]:
        """Execution id -> attempt of every run this process holds."""
        with self._lock:
            return {eid: run.attempt for eid, run in self._runs.items()}

    def deliver(self, execution_id: uuid.UUID, command: str) -> bool:
        """Hand a stop request to the local run, if this process holds it."""
        with self._lock:
            run = self._runs.get(execution_id)
        if run is None:
            return False
        run.request(command)
        return True

    def drain(self, grace: float) -> None:
        """The worker is shutting down: hand every held run back for another attempt, each at
        its next step boundary, or in the middle of its model call once `grace` s have passed.
        Safe to call from a signal handler (sets flags and starts a timer)."""
        self._draining.set()
        for run in self._snapshot():
            run.request(HANDBACK)
        timer = threading.Timer(grace, self._hand_back_now)
        timer.daemon = True
        timer.start()

    def _hand_back_now(self) -> None:
        runs = self._snapshot()
        if runs:
            log.warning("shutdown grace over; handing back runs mid-call", runs=len(runs))
        for run in runs:
            run.request(HANDBACK, urgent=True)

    def _snapshot(self) -> list[RunControl]:
        with self._lock:
            return list(self._runs.values())

    # --------------------------------------------------------------- sending

    def send(self, execution_id: uuid.UUID, command: str) -> None:
        """Broadcast a control command to every worker (the holder acts on it)."""
        self.event_bus.client.publish(
            CONTROL_CHANNEL, json.dumps({"execution_id": str(execution_id), "command": command})
        )

    # --------------------------------------------------------------- threads

    def start(self) -> None:
        """Start the listener and heartbeat threads once per process."""
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._listen, name="agentexec-control", daemon=True).start()
        threading.Thread(target=self._beat, name="agentexec-heartbeat", daemon=True).start()
        self._subscribed.wait(2.0)

    def stop(self) -> None:
        """Stop the background threads (tests and shutdown)."""
        self._stopping.set()

    def _listen(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            pubsub = None
            try:
                pubsub = self.event_bus.pubsub()
                pubsub.subscribe(CONTROL_CHANNEL)
                self._subscribed.set()
                delay = 0.2
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._on_message(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.warning("control channel lost; retrying", error=str(exc))
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # closing a broken connection may fail too
                        log.debug("closing control pubsub failed")

    def _on_message(self, data: Any) -> None:
        try:
            msg = json.loads(data)
            self.deliver(uuid.UUID(msg["execution_id"]), msg["command"])
        except (ValueError, KeyError, TypeError):
            log.warning("malformed control message ignored")

    def _beat(self) -> None:
        while not self._stopping.wait(self.heartbeat_interval):
            self.beat_once()

    def beat_once(self) -> None:
        """Refresh heartbeats of held runs and act on states seen in PostgreSQL."""
        held = self.held()
        if not held:
            return
        try:
            states = self.repository.heartbeat(held)
        except Exception as exc:  # PostgreSQL down: the lease covers a few missed beats
            log.warning("heartbeat failed", error=str(exc), held=len(held))
            return
        for eid in held:
            state = states.get(eid)
            if state not in _HELD:
                # Another attempt took over, or the reaper or a user moved it on (PAUSED, FAILED,
                # TIMED_OUT...) while this process was stalled: stop now, writing nothing.
                self.deliver(eid, LOST)
            elif state == ExecutionState.CANCELLING.value:
                self.deliver(eid, CANCEL)
            elif state == ExecutionState.PAUSING.value:
                self.deliver(eid, PAUSE)
