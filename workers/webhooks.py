"""Celery tasks of webhooks: the dispatcher pass (beat, every WEBHOOK_POLL_INTERVAL) and one
attempt of one delivery, both on the webhooks queue so a slow receiver never delays executions.

Neither sends task events (like the reaper): a pass a second and one task per attempt would
bury the executions in Flower. The deliveries' own record is the webhook_deliveries table
(GET /v1/webhooks/{id}/deliveries). Retries are rows due at `next_attempt_at`, never a Celery
countdown, so an emptied Redis or a killed worker loses nothing: the next pass claims again.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from typing import Any

from celery import signals

from app.execution.dispatch import WEBHOOK_DISPATCH_RECORD
from app.webhooks import WEBHOOK_DISPATCH, WEBHOOK_SEND, webhook_queue
from app.webhooks.service import WebhookService, build_webhooks
from workers.celery_app import celery_app
from workers.tasks import get_service, skipped_while_database_down

_lock = threading.Lock()


class _NoSentEvent:
    """The dispatcher's sends make no `task-sent` event (see the module docstring); Celery has
    only the global task_send_sent_event, which beat turns off for its own sends."""

    def publish(self, *_: Any, **__: Any) -> None:
        return None


_NO_SENT_EVENT = _NoSentEvent()
# By service object, not id(): a new service can reuse a dropped one's id and would get its
# WebhookService (its database and settings).
_built: weakref.WeakKeyDictionary[Any, WebhookService] = weakref.WeakKeyDictionary()


def get_webhooks() -> WebhookService:
    """This worker process's WebhookService (on the ExecutionService's database and settings)."""
    service = get_service()
    webhooks = _built.get(service)
    if webhooks is None:
        with _lock:
            webhooks = _built.get(service)
            if webhooks is None:
                webhooks = _built[service] = build_webhooks(
                    service.repository.session_factory, service.settings
                )
    return webhooks


@signals.celeryd_after_setup.connect
def _consume_the_webhook_queue(instance: Any = None, **_: Any) -> None:
    """Every worker also takes the webhook tasks from their own queue, whatever -Q says."""
    if instance is not None:
        instance.app.amqp.queues.select_add(webhook_queue(instance.app.conf.task_default_queue))


@celery_app.task(name=WEBHOOK_DISPATCH, ignore_result=True, send_events=False)
@skipped_while_database_down(WEBHOOK_DISPATCH_RECORD, record=True)
def dispatch() -> int:
    """Fan new events out to deliveries and send one task per due delivery; how many were sent."""
    webhooks = get_webhooks()
    queue = webhook_queue(webhooks.settings.default_queue)
    claims = webhooks.dispatch_pass()
    for delivery_id, token in claims:
        send.apply_async((str(delivery_id), str(token)), queue=queue, event_dispatcher=_NO_SENT_EVENT)
    return len(claims)


@celery_app.task(name=WEBHOOK_SEND, ignore_result=True, send_events=False)
@skipped_while_database_down("webhooks.send")
def send(delivery_id: str, token: str) -> str:
    """One attempt of one claimed delivery (a stale claim's task does nothing; so does one
    PostgreSQL cannot serve: its claim's lease runs out and the dispatcher claims it again)."""
    return get_webhooks().send(uuid.UUID(delivery_id), uuid.UUID(token))
