"""Celery entry point: `celery -A workers worker` finds `workers.celery_app` here."""

from workers.celery_app import celery_app
from workers import tasks  # noqa: F401  (registers the tasks)

app = celery_app
__all__ = ["app", "celery_app"]
