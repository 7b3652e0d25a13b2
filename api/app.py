"""Flask app factory: builds the service, registers the blueprints, the guards and the error mapping."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, request
from flask_openapi3 import OpenAPI

from api import agents, events, executions, operations
from api.deps import SERVICE_KEY, SETTINGS_KEY
from api.errors import register_error_handlers
from api.guards import check_json_body
from api.openapi import extensions, info, register_components
from api.problems import validation_problem
from api.security import BEARER_SCHEME, document_security, init_security
from app.bootstrap import build_service
from app.config import Settings
from app.execution.control import ControlHub
from app.logging import bind_log_context, configure_logging
from app.metrics import api_metrics, prepare_multiprocess_dir


def _bind_request_ids() -> None:
    """Every log line of a request carries the execution and agent it is about."""
    args = request.view_args or {}
    bind_log_context(execution_id=args.get("execution_id"), agent_id=args.get("agent_id"))


def create_app(**overrides: Any) -> OpenAPI:
    """The WSGI app of one process; overrides go to build_service (settings, session_factory,
    background_tasks, ...). The service and everything it holds are built here, once."""
    settings: Settings = overrides.pop("settings", None) or Settings()
    configure_logging(settings)
    background_tasks = overrides.pop("background_tasks", None)
    if background_tasks is None:
        from workers.background import BackgroundTaskManager
        from workers.celery_app import celery_app

        def background_tasks(hub: ControlHub) -> BackgroundTaskManager:
            return BackgroundTaskManager(celery_app, hub)

    service = build_service(background_tasks=background_tasks, settings=settings, **overrides)

    prepare_multiprocess_dir()
    app = OpenAPI(
        "agentexec",
        info=info(),
        openapi_extensions=extensions(),
        security_schemes=BEARER_SCHEME,
        validation_error_status=422,
        validation_error_callback=validation_problem,
        doc_prefix="/docs",
        doc_url="/openapi.json",
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions[SERVICE_KEY] = service
    app.extensions[SETTINGS_KEY] = settings

    operations.init_operations(app, api_metrics())
    app.before_request(_bind_request_ids)
    init_security(app, service, settings)  # before the body guard: 401 comes before 415/422
    app.before_request(check_json_body)
    register_error_handlers(app)
    register_components(app)
    for blueprint in (operations.bp, agents.bp, executions.bp, events.bp):
        app.register_api(blueprint)
    document_security(app, settings.auth_enabled)

    @app.route("/openapi.json")
    def openapi_json() -> Response:
        return app.response_class(app.json.dumps(app.api_doc), mimetype="application/json")

    @app.route("/docs")
    def docs() -> Response:
        return redirect("/docs/swagger", code=302)  # type: ignore[return-value]

    return app
