"""The events of one execution after a cursor: its logged events merged with its output deltas.

Logged events (PostgreSQL, id `E`) and deltas (Redis, id `E.k`, see app/deltas.py) are
read in one order, `E` before `E.0` before `E.1` before the next logged event. A read
takes the logged events after the cursor first, then the deltas with the fence raised to
the newest of those events, and yields only what sorts at or below what both reads
covered; a delta placed after an event the log read has not seen yet (committed in
between) makes it read the log again. So every reader, live or replaying, sees the same
sequence.

`types` filters what is yielded; the cursor still moves over what is skipped, so a
stream that wants no `agent.execution.completed` still knows when the run ended. When
no delta is wanted Redis is not read at all. When Redis does not answer, the logged
events are yielded alone (`deltas_down`): deltas missed then are not sent later, since
the output is stored whole in `result` (and per step in `context`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from api.fanout import shared_read
from app.deltas import Cursor, DeltaLog, DeltasUnavailable
from app.events import COMPLETED, EVENT_TYPES, OUTPUT_DELTA
from app.execution.event_emitter import event_message
from app.execution.service import ExecutionService

PAGE = 500
DELTA_PAGE = 1000
_TOP = 2**63


def known_types() -> tuple[str, ...]:
    """Every event type a client can ask for with `types=`."""
    return (*EVENT_TYPES, OUTPUT_DELTA)


@dataclass(frozen=True)
class Item:
    """One event to send: where it sorts, its type and its JSON message."""

    cursor: Cursor
    type: str
    message: dict[str, Any]

    @property
    def id(self) -> str:
        """Its SSE id: `E` for a logged event, `E.k` for a delta."""
        return str(self.cursor)


class Replay:
    """Reads one execution's events after `after`, in id order, as often as asked."""

    def __init__(
        self,
        service: ExecutionService,
        execution_id: uuid.UUID,
        after: Cursor,
        types: frozenset[str] | None = None,
    ):
        self.service = service
        self.execution_id = execution_id
        self.cursor = after
        self.types = types
        wants_deltas = types is None or OUTPUT_DELTA in types
        self.deltas: DeltaLog | None = getattr(service.task_runner, "deltas", None) if wants_deltas else None
        self.deltas_down = False
        self.ended = False  # an `agent.execution.completed` passed the cursor (sent or not)

    def wanted(self, item: Item) -> bool:
        """True when `types` lets the item through."""
        return self.types is None or item.type in self.types

    def read(self) -> Iterator[Item]:
        """Every event after the cursor that can be placed now, in order; the cursor follows
        each one yielded or skipped by `types`."""
        rereads = 0
        while True:
            after = self.cursor.event
            events = shared_read(
                ("events", self.execution_id, after),
                partial(self.service.get_events, self.execution_id, after=after, limit=PAGE),
            )
            newest = events[-1].id if events else self.cursor.event
            bound = Cursor(newest, _TOP)  # every delta placed after `newest` may follow
            more = len(events) == PAGE
            deltas = []
            if self.deltas is not None:
                try:
                    deltas = shared_read(
                        ("deltas", self.execution_id, self.cursor, newest),
                        partial(self.deltas.read, self.execution_id, self.cursor, newest, DELTA_PAGE),
                    )
                    self.deltas_down = False
                except DeltasUnavailable:
                    self.deltas_down = True
                if len(deltas) == DELTA_PAGE:
                    bound, more = min(bound, deltas[-1].cursor), True
            items = [Item(Cursor(e.id), e.type, event_message(e)) for e in events]
            items += [Item(d.cursor, d.message["type"], d.message) for d in deltas]
            # A delta placed after an event committed since the log was read: read the log again
            # now rather than at the next wake-up (a few times at most).
            held = any(d.cursor.event > newest for d in deltas) and rereads < 3
            rereads += held
            moved = False
            for item in sorted(items, key=lambda i: i.cursor):
                if item.cursor > bound:
                    break
                if item.cursor <= self.cursor:
                    continue
                self.cursor, moved = item.cursor, True
                self.ended = self.ended or item.type == COMPLETED
                if self.wanted(item):
                    yield item
            if not held and (not more or not moved):
                return
