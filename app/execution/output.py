"""OutputStream: the output deltas of one attempt, from the provider's chunks to the delta log.

The runner opens one per attempt and one `Coalescer` per model call (`call(step)`), hands
its `write` to the provider as `ModelRequest.on_delta`, and flushes it when the call
returns or fails, before the step's output is stored. So the deltas of a call, joined,
are the output the call returned (a provider that does not stream gets its whole output
sent as one delta). The first delta of an attempt after the first carries `reset`: the
client drops the partial text of the step that the failed attempt left behind.
"""

from __future__ import annotations

from collections.abc import Callable

from app.deltas import Appended, Coalescer, DeltaLog
from app.execution.event_emitter import output_delta_message
from app.models import Execution


class OutputStream:
    """Sends the deltas of one attempt of `execution` to `log` (None: they go nowhere)."""

    def __init__(self, log: DeltaLog | None, execution: Execution, newest_event: Callable[[int], int]):
        self.log = log
        self.execution = execution
        self.newest_event = newest_event  # (a known event id) -> the newest logged event id
        self.floor = 0
        self.step: str | None = None
        self.reset = execution.attempt > 1
        self.appended = 0
        self.last: Appended | None = None  # the last delta appended: a lost stream goes on after it
        self.bus = getattr(log, "bus", None)
        if self.bus is not None:
            self.bus.watch(execution.id)  # this run's own events, published by this process

    def call(self, step: str | None) -> Coalescer:
        """The coalescer of one model call of `step` (None for a standard task)."""
        self.step = step
        if self.log is not None:
            published = self.bus.newest_published(self.execution.id) if self.bus is not None else 0
            # The run's own progress event for this call was published here just before: no
            # read of the log needed. Otherwise (none seen yet) read the newest from the log.
            self.floor = max(self.floor, published) if published else self.newest_event(self.floor)
        return Coalescer(self._emit)

    def _emit(self, text: str) -> None:
        if self.log is None:
            return
        message = output_delta_message(self.execution, self.step, text, self.reset)
        went = self.log.append(self.execution.id, self.execution.attempt, self.floor, message, self.last)
        if went is not None:
            self.reset = False  # a dropped first delta: the next one carries `reset`
            self.appended += 1
            self.last = went

    def close(self) -> None:
        """The attempt ended: the deltas stay replayable for the retention from now."""
        # An end published here (the run's own `completed` event) already restarted the clock
        # in its publish script: a second EXPIRE round trip would change nothing.
        ended_here = self.bus is not None and self.bus.retention_restarted(self.execution.id)
        if self.bus is not None:
            self.bus.unwatch(self.execution.id)
        if self.log is not None and self.appended and not ended_here:
            self.log.keep(self.execution.id)
