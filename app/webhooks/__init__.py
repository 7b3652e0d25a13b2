"""Webhooks: tenants' endpoints called with their events, from the durable event log.

The flow (docs/webhooks.md): beat runs the dispatcher (`WEBHOOK_DISPATCH`) every
WEBHOOK_POLL_INTERVAL. It reads `execution_events` past its cursor, writes one delivery row per
matching endpoint, claims the deliveries that are due and sends one `WEBHOOK_SEND` task per
claim on the webhooks queue. A send task POSTs the signed event and records the outcome:
succeeded, or pending again at a later `next_attempt_at` (never a Celery countdown), or failed
when the retry window is spent. PostgreSQL holds every delivery, so a killed worker (its
claim's lease runs out) or an emptied Redis (the claim is made again) loses none.
"""

from __future__ import annotations

WEBHOOK_DISPATCH = "agentexec.webhooks.dispatch"
WEBHOOK_SEND = "agentexec.webhooks.send"


def webhook_queue(default_queue: str) -> str:
    """The queue of the webhook tasks: a slow receiver never delays an execution's messages."""
    return f"{default_queue}.webhooks"
