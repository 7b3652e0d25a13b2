"""/v1/executions/{id}/events: the event log as JSON, or live over Server-Sent Events."""

from __future__ import annotations

import itertools

from flask import Response, request
from flask_openapi3 import APIBlueprint, Tag

from api import streams
from api.deps import answer, service, settings, tenant
from api.models import EventOut, EventsOut, EventsQuery, ExecutionPath, LastEventIdHeader
from api.openapi import problems
from api.replay import Replay
from api.security import SECURITY
from api.sse import EventStream
from app.deltas import Cursor
from app.events import EVENT_TYPES

bp = APIBlueprint(
    "events",
    __name__,
    url_prefix="/v1/executions",
    abp_security=SECURITY,
    abp_tags=[Tag(name="events", description="State changes, progress and completion")],
)
SSE = "text/event-stream"


def wants_stream() -> bool:
    """True when the client prefers text/event-stream over JSON."""
    return request.accept_mimetypes.best_match(["application/json", SSE]) == SSE


@bp.get(
    "/<execution_id>/events", operation_id="getExecutionEvents", responses={200: EventsOut, **problems(404)}
)
def get_events(path: ExecutionPath, query: EventsQuery, header: LastEventIdHeader) -> Response:
    """Events of an execution after an event id, as JSON or as a live SSE stream.

    With `Accept: text/event-stream`: replays the events after `Last-Event-ID` (or `?after=`),
    then sends new ones as they happen, and closes after the final
    `agent.execution.completed` event. Each frame has `id:` (the event id: `E` for a logged
    event, `E.k` for an output delta), `event:` (its type) and `data:` (the event as JSON);
    a comment line is sent as a heartbeat. Output deltas (`agent.execution.output.delta`)
    are sent unless `types` leaves them out.
    Otherwise: JSON `{items}` with at most `limit` events after `?after=`: the logged events,
    and the output deltas too when `types` names `agent.execution.output.delta`.
    """
    svc = service()
    svc.get_execution(path.execution_id, tenant=tenant())
    after = Cursor.parse(header.last_event_id if header.last_event_id is not None else query.after)
    assert after is not None  # the pattern of both parameters
    types = None if query.types is None else frozenset(query.types)
    if not wants_stream():
        replay = Replay(svc, path.execution_id, after, types or frozenset(EVENT_TYPES))
        items = list(itertools.islice(replay.read(), query.limit))
        return answer(EventsOut(items=[EventOut.model_validate(i.message) for i in items]))
    stream = EventStream(
        svc, path.execution_id, after, heartbeat_seconds=settings().sse_heartbeat_seconds, types=types
    )
    return Response(
        streams.relay(iter(stream)),
        mimetype=SSE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
