"""The console's pages: sign-in, executions (list, page, live events, control) and agents.

Views parse the request, call ExecutionService with the session's tenant and render a
template; another tenant's execution or agent is a 404, exactly as under /v1.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from api.console import present
from api.console.session import (
    COOKIE,
    ConsoleSessionInterface,
    authenticate,
    check_csrf,
    csrf_token,
    sign_in,
    sign_out,
    while_key_lives,
)
from api.deps import service, settings, tenant
from api.replay import Replay
from api.sse import EventStream
from app.config import Settings
from app.deltas import Cursor
from app.errors import AgentNotFoundError, ExecutionNotFoundError, InvalidExecutionStateError
from app.events import OUTPUT_DELTA
from app.schemas import ErrorCode, ExecutionFilters, ExecutionState, Pagination

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
OPEN_ENDPOINTS = frozenset({"console.signin", "console.static"})
PAGE_SIZE = 25
# Events and output deltas an execution page reads when it loads; a longer log streams in after.
PAGE_ITEMS = 2000
Page = str | Response | WerkzeugResponse | tuple[str, int]


def init_console(app: Flask, conf: Settings) -> None:
    """Mount the console: its cookie settings, its session interface and the blueprint."""
    app.config.update(COOKIE)
    app.session_interface = ConsoleSessionInterface(conf)
    app.register_blueprint(bp)


@bp.before_request
def require_session() -> Page | None:
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if not authenticate(settings().auth_enabled):
        if request.accept_mimetypes.best == "text/html" or request.method == "GET":
            return redirect(url_for("console.signin", next=request.path), code=303)
        return Response("sign in first", status=401)
    if request.method == "POST":
        check_csrf()
    return None


@bp.after_request
def console_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP  # the API's own policy stays on /v1
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def template_globals() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "auth_enabled": settings().auth_enabled,
        "signed_in": "tenant" in g and g.get("tenant") is not None and request.endpoint not in OPEN_ENDPOINTS,
        "tenant": g.get("tenant"),
    }


@bp.errorhandler(ExecutionNotFoundError)
@bp.errorhandler(AgentNotFoundError)
def not_found(exc: Exception) -> tuple[str, int]:
    return render_template("error.html", title="Not found", detail=str(exc)), 404


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[str, int]:
    return render_template("error.html", title=exc.name, detail=exc.description), exc.code or 500


# ----------------------------------------------------------------- session


@bp.route("/sign-in", methods=["GET", "POST"], endpoint="signin")
def signin() -> Page:
    target = request.args.get("next", "")
    if not target.startswith("/console/") or "//" in target:  # no open redirect
        target = url_for("console.executions")
    error = None
    if request.method == "POST":
        check_csrf()
        if sign_in(request.form.get("api_key", "")):
            return redirect(target, code=303)
        error = "That key is unknown or revoked."
    status = 401 if error else 200
    return render_template("signin.html", error=error, next=target), status


@bp.post("/sign-out")
def signout() -> Page:
    sign_out()
    return redirect(url_for("console.signin"), code=303)


@bp.get("/")
def home() -> Page:
    return redirect(url_for("console.executions"), code=303)


# ----------------------------------------------------------------- executions


def _filters() -> tuple[ExecutionFilters, dict[str, str]]:
    args = request.args
    chosen = {k: args.get(k, "").strip() for k in ("state", "agent_id", "error_code", "created_within")}
    try:
        within = int(chosen["created_within"] or 0)
        return (
            ExecutionFilters(
                state=[ExecutionState(chosen["state"])] if chosen["state"] else None,
                agent_id=uuid.UUID(chosen["agent_id"]) if chosen["agent_id"] else None,
                error_code=[ErrorCode(chosen["error_code"])] if chosen["error_code"] else None,
                created_after=datetime.now(UTC) - timedelta(minutes=within) if within > 0 else None,
            ),
            chosen,
        )
    except ValueError as exc:
        raise BadRequest(f"a filter is not valid: {exc}") from exc


def _counts() -> dict[str, int]:
    """Executions of this tenant by state (each an exact count or the planner's estimate)."""
    svc, counts = service(), {}
    for state in ExecutionState:
        _, total, _ = svc.list_executions_page(
            ExecutionFilters(state=[state]), Pagination(page=1, page_size=1), tenant=tenant()
        )
        counts[state.value] = total
    return counts


def _page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 1_000_000))
    except ValueError:
        return 1


@bp.get("/executions")
def executions() -> Page:
    filters, chosen = _filters()
    page = _page_number()
    rows, total, exact = service().list_executions_page(
        filters, Pagination(page=page, page_size=PAGE_SIZE), tenant=tenant()
    )
    agents, _ = service().list_agents(Pagination(page=1, page_size=200), tenant=tenant())
    names = {a.id: a.name for a in agents}
    query = {k: v for k, v in chosen.items() if v}
    return render_template(
        "executions.html",
        rows=rows,
        names=names,
        agents=agents,
        total=total,
        exact=exact,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        query=query,
        chosen=chosen,
        counts=_counts(),
        states=[s.value for s in ExecutionState],
        error_codes=[c.value for c in ErrorCode],
        now=datetime.now(UTC),
        age=present.age,
    )


@bp.get("/executions/counts")
def counts() -> Response:
    return jsonify(_counts())


@bp.get("/executions/<uuid:execution_id>")
def execution(execution_id: uuid.UUID) -> Page:
    svc, now = service(), datetime.now(UTC)
    svc.get_execution(execution_id, tenant=tenant())  # another tenant's: 404 before any read
    # The events and output deltas first, then the row: the page's stream resumes after the last
    # one read (`E` or `E.k`), so a change made between the two reads is replayed, not lost.
    # At most PAGE_ITEMS of them: the page's stream sends the rest, from where this read stopped.
    items = list(islice(Replay(svc, execution_id, Cursor()).read(), PAGE_ITEMS))
    row = svc.get_execution(execution_id, tenant=tenant())
    history = svc.get_state_history(execution_id, 100, tenant=tenant())
    try:
        agent_name = svc.get_agent(row.agent_id, tenant=tenant()).name
    except AgentNotFoundError:
        agent_name = str(row.agent_id)
    last_reason = history[-1].reason if history else None
    ahead = None
    if row.state == ExecutionState.QUEUED.value and not row.waiting_reason:
        earlier = ExecutionFilters(state=[ExecutionState.QUEUED], created_before=row.created_at)
        _, ahead, _ = svc.list_executions_page(earlier, Pagination(page=1, page_size=1), tenant=tenant())
    flower = os.environ.get("FLOWER_URL", "").rstrip("/")
    return render_template(
        "execution.html",
        e=row,
        agent_name=agent_name,
        stays=present.timeline(history, now),
        events=[i.message for i in items if i.type != OUTPUT_DELTA],
        output=present.output([i.message for i in items if i.type == OUTPUT_DELTA]),
        stored_steps=present.step_outputs(row.context),
        last_event_id=items[-1].id if items else "0",
        why=present.why_not_moving(
            row,
            now,
            lease_timeout=settings().lease_timeout,
            last_reason=last_reason,
            ahead=ahead,
            heartbeat_interval=settings().heartbeat_interval,
            reaper_interval=settings().reaper_interval,
        ),
        actions=present.ALLOWED_ACTIONS,
        flower_task_url=f"{flower}/task/{row.celery_task_id}" if flower and row.celery_task_id else None,
        heartbeat_age=present.age(row.heartbeat_at, now),
        now=now,
        age=present.age,
    )


@bp.get("/executions/<uuid:execution_id>/events")
def execution_events(execution_id: uuid.UUID) -> Response:
    """The /v1 SSE stream of one execution, for the page's EventSource (which sends no headers)."""
    svc = service()
    svc.get_execution(execution_id, tenant=tenant())
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    start = Cursor.parse(after) or Cursor()
    # Every type, the output deltas included: the page shows the output as it streams.
    stream = EventStream(svc, execution_id, start, heartbeat_seconds=settings().sse_heartbeat_seconds)
    frames = iter(stream)
    if "key_id" in g:
        frames = while_key_lives(frames, g.key_id, str(g.tenant))
    return Response(
        frames,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@bp.post("/executions/<uuid:execution_id>/<any(cancel, pause, resume, retry):action>")
def control(execution_id: uuid.UUID, action: str) -> Page:
    svc = service()
    call = {
        "cancel": svc.cancel_execution,
        "pause": svc.pause_execution,
        "resume": svc.resume_execution,
        "retry": svc.retry_execution,
    }[action]
    wants_json = request.accept_mimetypes.best == "application/json"
    try:
        row = call(execution_id, tenant=tenant(), reason=f"{action} from the console")
    except InvalidExecutionStateError as exc:
        if wants_json:
            return Response(jsonify({"error": str(exc)}).get_data(), status=409, mimetype="application/json")
        return render_template("error.html", title="Not possible now", detail=str(exc)), 409
    if wants_json:
        return jsonify({"state": row.state, "attempt": row.attempt})
    return redirect(url_for("console.execution", execution_id=execution_id), code=303)


# ----------------------------------------------------------------- agents


@bp.get("/agents")
def agents() -> Page:
    rows, total = service().list_agents(Pagination(page=1, page_size=200), tenant=tenant())
    usage = {u["agent_id"]: u for u in service().usage(tenant=tenant(), group_by="agent")}
    return render_template("agents.html", rows=rows, total=total, usage=usage)


@bp.get("/agents/<uuid:agent_id>")
def agent(agent_id: uuid.UUID) -> Page:
    svc, now = service(), datetime.now(UTC)
    row = svc.get_agent(agent_id, tenant=tenant())
    recent, total, _ = svc.list_executions_page(
        ExecutionFilters(agent_id=agent_id), Pagination(page=1, page_size=20), tenant=tenant()
    )
    days = svc.usage(
        tenant=tenant(), group_by="day", agent_id=agent_id, created_after=now - timedelta(days=13)
    )
    return render_template(
        "agent.html", a=row, recent=recent, total=total, days=days, now=now, age=present.age
    )
