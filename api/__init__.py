"""The HTTP API: a Flask app factory over ExecutionService."""

from api.app import create_app

__all__ = ["create_app"]
