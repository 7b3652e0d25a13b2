"""Celery entry point: `celery -A workers worker` finds `workers.celery_app` here."""

from workers import logging_setup, tasks  # noqa: F401  (structured-log signals; registers the tasks)
from workers.celery_app import celery_app

app = celery_app
__all__ = ["app", "celery_app"]
