"""Flask app factory: builds the service, registers the blueprints, the guards and the error mapping."""

from __future__ import annotations

from typing import Any, NoReturn

from flask import Request, Response, redirect, request
from flask_openapi3 import OpenAPI
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from api import agent_tools, agents, events, executions, operations, schedules, usage
from api import webhooks as webhook_routes
from api.console import init_console
from api.deps import SERVICE_KEY, SETTINGS_KEY
from api.errors import register_error_handlers
from api.guards import check_json_body
from api.openapi import extensions, finish_document, info, register_components
from api.problems import problem, validation_problem
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


class AgentexecApp(OpenAPI):
    """flask-openapi3's app with the document finished by `api.openapi` and no HTML under /v1."""

    def generate_spec_json(self) -> None:
        super().generate_spec_json()
        settings: Settings = self.extensions[SETTINGS_KEY]
        finish_document(self.spec_json, max_timeout_seconds=settings.max_timeout_seconds)

    def raise_routing_exception(self, request: Request) -> NoReturn:
        """A routing redirect under /v1 answers problem+json (Werkzeug's own is an HTML page)."""
        exc = request.routing_exception
        if isinstance(exc, RequestRedirect) and request.path.startswith("/v1"):
            answer = problem(
                exc.code,
                "Permanent Redirect",
                f"this resource is at {exc.new_url}",
                headers={"Location": exc.new_url},
            )
            raise HTTPException(response=answer)
        super().raise_routing_exception(request)


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
    app = AgentexecApp(
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
    # `/v1/executions//events` (an id left empty) is a 404, not a redirect to `/v1/executions/events`.
    app.url_map.merge_slashes = False
    app.extensions[SERVICE_KEY] = service
    app.extensions[SETTINGS_KEY] = settings

    operations.init_operations(app, api_metrics())
    app.before_request(_bind_request_ids)
    init_security(app, service, settings)  # before the body guard: 401 comes before 415/422
    app.before_request(check_json_body)
    register_error_handlers(app)
    register_components(app)
    for blueprint in (operations.bp, agents.bp, executions.bp, events.bp, usage.bp, schedules.bp):
        app.register_api(blueprint)
    app.register_api(webhook_routes.bp)  # /v1/webhooks (#16)
    app.register_api(agent_tools.bp)  # /v1/executions/{id}/input, /v1/tools/secret (#14)
    document_security(app, settings.auth_enabled)
    init_console(app, settings)  # /console: the operator's pages (its own session, CSRF and CSP)

    @app.route("/openapi.json")
    def openapi_json() -> Response:
        return app.response_class(app.json.dumps(app.api_doc), mimetype="application/json")

    @app.route("/docs")
    def docs() -> Response:
        return redirect("/docs/swagger", code=302)  # type: ignore[return-value]

    return app
