"""Flask app factory: builds the service, registers blueprints and the error mapping."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from sqlalchemy import text

from api.problems import problem
from app.bootstrap import build_service
from app.config import Settings, get_settings


def create_app(**overrides: Any) -> Flask:
    """The WSGI app; overrides go to build_service (settings, session_factory, ...)."""
    settings: Settings = overrides.get("settings") or get_settings()
    background_tasks = overrides.pop("background_tasks", None)
    if background_tasks is None:
        from workers.background import BackgroundTaskManager
        from workers.celery_app import celery_app

        background_tasks = BackgroundTaskManager(celery_app)
    service = build_service(background_tasks=background_tasks, **overrides)
    if getattr(background_tasks, "control_hub", "absent") is None:
        background_tasks.control_hub = service.control_hub
    app = Flask("agentexec")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["agentexec.service"] = service
    app.extensions["agentexec.settings"] = settings

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Any:
        down = []
        try:
            with service.repository.session_factory() as s:
                s.execute(text("SELECT 1"))
        except Exception:
            down.append("postgresql")
        if service.event_bus is None or not service.event_bus.ping():
            down.append("redis")
        if down:
            return problem(503, "Service Unavailable", f"not ready: {', '.join(down)} down", down=down)
        return jsonify(status="ready")

    return app
