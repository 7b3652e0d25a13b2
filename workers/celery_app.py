"""The Celery application, configured from celeryconfig.py."""

from __future__ import annotations

from celery import Celery

celery_app = Celery("agentexec")
celery_app.config_from_object("celeryconfig")
