"""/v1/executions/{id}/events: the event log as JSON, or live over Server-Sent Events."""

from __future__ import annotations

from flask import Response, request
from flask_openapi3 import APIBlueprint, Tag

from api import streams
from api.deps import answer, service, settings, tenant
from api.models import EventOut, EventsOut, EventsQuery, ExecutionPath, LastEventIdHeader
from api.openapi import problems
from api.security import SECURITY
from api.sse import EventStream

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
    `agent.execution.completed` event. Each frame has `id:` (the event id), `event:` (its type)
    and `data:` (the event as JSON); a comment line is sent as a heartbeat.
    Otherwise: JSON `{items}` with at most `limit` events after `?after=`.
    """
    svc = service()
    svc.get_execution(path.execution_id, tenant=tenant())
    after = header.last_event_id if header.last_event_id is not None else query.after
    if not wants_stream():
        rows = svc.get_events(path.execution_id, after=after, limit=query.limit)
        return answer(EventsOut(items=[EventOut.of(r) for r in rows]))
    stream = EventStream(svc, path.execution_id, after, heartbeat_seconds=settings().sse_heartbeat_seconds)
    return Response(
        streams.relay(iter(stream)),
        mimetype=SSE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
