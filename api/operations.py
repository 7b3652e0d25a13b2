"""Operations routes (/healthz, /readyz, /metrics) and the request metrics of every route."""

from __future__ import annotations

import time

from flask import Flask, Response, current_app, g, request
from flask_openapi3 import APIBlueprint, Tag
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import answer, service, settings
from api.models import Status
from api.openapi import problem_answers
from api.problems import problem
from app.config import Settings
from app.execution.dispatch import SCHEDULE_TICK_RECORD, WEBHOOK_DISPATCH_RECORD
from app.metrics import ApiMetrics, render

bp = APIBlueprint("operations", __name__, abp_tags=[Tag(name="operations", description="Health and metrics")])
API_METRICS_KEY = "agentexec.api_metrics"
UNMATCHED = "<unmatched>"


@bp.get("/healthz", operation_id="getHealth", responses={200: Status})
def healthz() -> Response:
    """Liveness: the process answers."""
    return answer(Status(status="ok"))


@bp.get("/readyz", operation_id="getReadiness", responses={200: Status, **problem_answers(500, 503)})
def readyz() -> Response:
    """Readiness: 503 while PostgreSQL or Redis is down; 200 `degraded` (with the reasons) while
    the reaper has not run for 3 of its intervals (nothing recovers lost work then)."""
    svc = service()
    down = []
    try:
        svc.repository.ping()
    except Exception:
        down.append("postgresql")
    if svc.event_bus is None or not svc.event_bus.ping():
        down.append("redis")
    if down:
        return problem(
            503,
            "Service Unavailable",
            f"not ready: {', '.join(down)} down",
            down=down,
            headers={"Retry-After": "2"},
        )
    reasons = reaper_lag(svc.repository.reaper_status(), settings().reaper_interval)
    reasons += periodic_lag(svc.repository.periodic_status(), settings())
    return answer(Status(status="degraded", reasons=reasons) if reasons else Status(status="ready"))


def reaper_lag(status: tuple[float, dict[str, int]] | None, interval: float) -> list[str]:
    """Why the reaper looks stopped, if it does: never ran, or no pass for 3 intervals."""
    if status is None:
        return ["the reaper has never run: is beat running (Procfile `beat`)?"]
    age = status[0]
    if age > 3 * interval:
        return [f"the reaper last ran {age:.0f} s ago (every {interval:g} s expected): is beat running?"]
    return []


def periodic_lag(ages: dict[str, float], s: Settings) -> list[str]:
    """Which of beat's other passes stopped: no run for 3 of its intervals (15 s at least).
    One that never ran says nothing here: the reaper's line already asks whether beat runs."""
    expected = {
        SCHEDULE_TICK_RECORD: (
            "the schedule tick (delayed starts, cron schedules)",
            s.schedule_tick_interval,
        ),
        WEBHOOK_DISPATCH_RECORD: ("the webhook dispatcher", s.webhook_poll_interval),
    }
    reasons = []
    for task, (what, interval) in expected.items():
        age = ages.get(task)
        if age is not None and age > max(3 * interval, 15.0):
            reasons.append(
                f"{what} last ran {age:.0f} s ago (every {interval:g} s expected): is beat running?"
            )
    return reasons


@bp.get(
    "/metrics",
    operation_id="getMetrics",
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        # From off loopback (or with METRICS_TOKEN set) it needs a key: 401, 429, 503 as on /v1.
        **problem_answers(401, 429, 500, 503),
    },
)
def metrics() -> Response:
    """Prometheus metrics: API requests of all web processes, and execution figures from PostgreSQL."""
    return Response(render(service().stats), mimetype=None, content_type=CONTENT_TYPE_LATEST)


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("request_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        metrics: ApiMetrics = current_app.extensions[API_METRICS_KEY]
        metrics.observe(request.method, route, response.status_code, time.perf_counter() - started)
    return response


def init_operations(app: Flask, metrics: ApiMetrics) -> None:
    """Count and time every request in `metrics` (register first)."""
    app.extensions[API_METRICS_KEY] = metrics
    app.before_request(_start_timer)
    app.after_request(_observe)
