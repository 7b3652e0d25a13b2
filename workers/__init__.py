"""Celery entry point: `celery -A workers worker` finds `workers.celery_app` here."""

# The structured-log signals; the tasks (executions, reaper, retention; webhooks and their queue).
from workers import logging_setup, tasks, webhooks  # noqa: F401
from workers.celery_app import celery_app

app = celery_app
__all__ = ["app", "celery_app"]
