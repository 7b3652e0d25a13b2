"""What a view needs from the app: the service, the settings, the caller's tenant, JSON answers."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, g
from pydantic import BaseModel

from app.config import Settings
from app.execution.service import ExecutionService
from app.models import DEFAULT_TENANT

SERVICE_KEY = "agentexec.service"
SETTINGS_KEY = "agentexec.settings"


def service() -> ExecutionService:
    """The app's ExecutionService."""
    svc: ExecutionService = current_app.extensions[SERVICE_KEY]
    return svc


def settings() -> Settings:
    """The app's settings."""
    conf: Settings = current_app.extensions[SETTINGS_KEY]
    return conf


def tenant() -> str:
    """The tenant of this request (set by authentication when enabled; the default otherwise)."""
    value: str = g.get("tenant", DEFAULT_TENANT)
    return value


def answer(model: BaseModel, status: int = 200, headers: dict[str, Any] | None = None) -> Response:
    """A JSON answer from a response model."""
    return Response(model.model_dump_json(), status=status, mimetype="application/json", headers=headers)
