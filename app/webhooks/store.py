"""WebhookStore: the SQL of webhooks: endpoints, the fan-out from the event log, claims, outcomes.

Fan-out reads `execution_events` in (txid, id) order and only events of transactions older
than every transaction still running (`pg_snapshot_xmin`): those can no longer change, and no
event can later appear before the cursor (migration 0011 says why an id cursor is not enough).
One dispatcher at a time moves the cursor (its row is locked, a second one skips the pass);
UNIQUE(webhook_id, event_id) with ON CONFLICT DO NOTHING is the last guard against a double.

A claim marks a due delivery `delivering` with a fresh `lease_token` and a lease
(`next_attempt_at` in the future): a send task acts only while its token is the delivery's,
and a claim whose worker died or whose message was lost is claimable again when its lease runs
out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update

from app.execution.repository.base import RepositoryBase
from app.models import ExecutionEvent, Webhook, WebhookDelivery
from app.schemas import Pagination

_FAN_OUT = text("""
WITH horizon AS (SELECT (pg_snapshot_xmin(pg_current_snapshot()))::text::bigint AS xmin),
batch AS (
    SELECT e.id, e.txid, e.type, e.execution_id, e.created_at
    FROM execution_events e, horizon h
    WHERE e.txid IS NOT NULL AND (e.txid, e.id) > (:txid, :event_id) AND e.txid < h.xmin
    ORDER BY e.txid, e.id
    LIMIT :n
),
made AS (
    INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, next_attempt_at)
    SELECT gen_random_uuid(), w.id, b.id, b.type, 'pending', now()
    FROM batch b
    JOIN executions x ON x.id = b.execution_id
    JOIN webhooks w ON w.tenant = x.tenant AND w.enabled AND b.type = ANY(w.events)
                   AND w.created_at <= b.created_at
    ON CONFLICT (webhook_id, event_id) DO NOTHING
    RETURNING 1
),
last AS (SELECT txid, id FROM batch ORDER BY txid DESC, id DESC LIMIT 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM made), (SELECT txid FROM last),
       (SELECT id FROM last)
""")

# With no enabled endpoint (as of this statement's snapshot, the same the horizon is taken in):
# the cursor moves past every event of a transaction older than any still running, unread.
_SKIP_TO_HORIZON = text("""
UPDATE webhook_cursor
SET last_txid = h.xmin - 1, last_event_id = 9223372036854775807, updated_at = now()
FROM (SELECT (pg_snapshot_xmin(pg_current_snapshot()))::text::bigint AS xmin) h
WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled)
RETURNING 1
""")

# Due deliveries of enabled endpoints, oldest due first, at most `per_endpoint` in flight for one
# endpoint and `total` in all (a lease not yet run out is in flight): a slow or dead receiver
# holds at most that many of the workers' threads, whatever its backlog.
_CLAIM = text("""
WITH busy AS (
    SELECT webhook_id, count(*) AS n FROM webhook_deliveries
    WHERE status = 'delivering' AND next_attempt_at > now()
    GROUP BY webhook_id
),
ranked AS (
    SELECT d.id, d.next_attempt_at,
           row_number() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id)
               + coalesce(b.n, 0) AS place
    FROM webhook_deliveries d
    JOIN webhooks w ON w.id = d.webhook_id AND w.enabled
    LEFT JOIN busy b ON b.webhook_id = d.webhook_id
    WHERE d.status IN ('pending', 'delivering') AND d.next_attempt_at <= now()
),
due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.id IN (SELECT id FROM ranked WHERE place <= :per_endpoint)
      AND d.status IN ('pending', 'delivering') AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at
    LIMIT greatest(least(:n, :total - (SELECT coalesce(sum(n), 0) FROM busy)), 0)
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET status = 'delivering', lease_token = gen_random_uuid(),
    next_attempt_at = now() + make_interval(secs => :lease), updated_at = now()
FROM due WHERE d.id = due.id
RETURNING d.id, d.lease_token
""")

_START = text("""
UPDATE webhook_deliveries d
SET next_attempt_at = now() + make_interval(secs => :lease), updated_at = now()
FROM webhooks w
WHERE d.id = :id AND d.lease_token = :token AND d.status = 'delivering' AND w.id = d.webhook_id
RETURNING d.event_id, d.attempts, w.id, w.url, w.secret, w.enabled
""")

_SUCCEEDED = text("""
WITH d AS (
    UPDATE webhook_deliveries
    SET status = 'succeeded', attempts = attempts + 1, last_status_code = :code, last_error = NULL,
        first_attempt_at = coalesce(first_attempt_at, now()), delivered_at = now(),
        next_attempt_at = NULL, lease_token = NULL, updated_at = now()
    WHERE id = :id AND lease_token = :token
    RETURNING webhook_id
)
UPDATE webhooks w SET consecutive_failures = 0, updated_at = now()
FROM d WHERE w.id = d.webhook_id AND w.consecutive_failures <> 0
""")

# Pending again after `delay` seconds, or failed when that is past the retry window that began
# with the first attempt; a failed delivery counts against its endpoint, which is disabled when
# `disable_after` deliveries in a row have failed.
_FAILED = text("""
WITH d AS (
    UPDATE webhook_deliveries
    SET attempts = attempts + 1, last_status_code = :code, last_error = :error,
        first_attempt_at = coalesce(first_attempt_at, now()),
        status = CASE WHEN now() + make_interval(secs => :delay)
                           > coalesce(first_attempt_at, now()) + make_interval(secs => :window)
                      THEN 'failed' ELSE 'pending' END,
        next_attempt_at = CASE WHEN now() + make_interval(secs => :delay)
                                    > coalesce(first_attempt_at, now()) + make_interval(secs => :window)
                               THEN NULL ELSE now() + make_interval(secs => :delay) END,
        lease_token = NULL, updated_at = now()
    WHERE id = :id AND lease_token = :token
    RETURNING webhook_id, status
),
w AS (
    UPDATE webhooks w
    SET consecutive_failures = w.consecutive_failures + 1,
        enabled = w.enabled AND w.consecutive_failures + 1 < :disable_after,
        disabled_reason = CASE WHEN w.enabled AND w.consecutive_failures + 1 >= :disable_after
                               THEN :reason ELSE w.disabled_reason END,
        updated_at = now()
    FROM d WHERE w.id = d.webhook_id AND d.status = 'failed'
    RETURNING w.enabled
)
SELECT d.status, (SELECT enabled FROM w) FROM d
""")


@dataclass(frozen=True)
class SendJob:
    """What one claimed attempt needs: the endpoint, its secret and the event to send."""

    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    url: str
    secret: str
    enabled: bool
    attempts: int
    event: ExecutionEvent


class WebhookStore(RepositoryBase):
    """Handles the database side of webhooks."""

    # -- endpoints

    def create(self, webhook: Webhook, *, max_per_tenant: int) -> Webhook | None:
        """Insert the endpoint unless its tenant has `max_per_tenant` already (then None)."""
        with self._work(None, "create_webhook", autocommit=False) as work:
            s = work.session
            s.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended('agentexec.webhooks:' || :t, 0))"),
                {"t": webhook.tenant},
            )
            mine = Webhook.tenant == webhook.tenant
            count = s.scalar(select(func.count()).select_from(Webhook).where(mine))
            if (count or 0) >= max_per_tenant:
                return None
            s.add(webhook)
            s.flush()
            s.refresh(webhook)
            return webhook

    def get(self, webhook_id: uuid.UUID, tenant: str) -> Webhook | None:
        """The tenant's endpoint, or None."""
        with self._work(None, "get_webhook") as work:
            stmt = select(Webhook).where(Webhook.id == webhook_id, Webhook.tenant == tenant)
            return work.session.scalars(stmt).one_or_none()

    def list_page(self, tenant: str, page: Pagination) -> tuple[list[Webhook], int]:
        """A page of the tenant's endpoints, newest first, and their total."""
        with self._work(None, "list_webhooks") as work:
            s = work.session
            total = s.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant == tenant))
            rows = s.scalars(
                select(Webhook)
                .where(Webhook.tenant == tenant)
                .order_by(Webhook.created_at.desc(), Webhook.id)
                .offset((page.page - 1) * page.page_size)
                .limit(page.page_size)
            )
            return list(rows), int(total or 0)

    def update(self, webhook_id: uuid.UUID, tenant: str, changes: dict[str, Any]) -> Webhook | None:
        """Apply `changes` (column values) to the tenant's endpoint; None when not found."""
        with self._work(None, "update_webhook", autocommit=False) as work:
            stmt = (
                update(Webhook)
                .where(Webhook.id == webhook_id, Webhook.tenant == tenant)
                .values(**changes, updated_at=func.now())
                .returning(Webhook)
            )
            return work.session.scalars(stmt).one_or_none()

    def delete(self, webhook_id: uuid.UUID, tenant: str) -> bool:
        """Delete the tenant's endpoint and its deliveries; False when not found."""
        with self._work(None, "delete_webhook", autocommit=False) as work:
            stmt = delete(Webhook).where(Webhook.id == webhook_id, Webhook.tenant == tenant)
            return bool(work.session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    # -- deliveries as the API shows them

    def deliveries(self, webhook_id: uuid.UUID, page: Pagination) -> tuple[list[WebhookDelivery], int]:
        """A page of an endpoint's deliveries, newest first, and their total."""
        where = WebhookDelivery.webhook_id == webhook_id
        with self._work(None, "list_webhook_deliveries") as work:
            s = work.session
            total = s.scalar(select(func.count()).select_from(WebhookDelivery).where(where))
            rows = s.scalars(
                select(WebhookDelivery)
                .where(where)
                .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.event_id.desc())
                .offset((page.page - 1) * page.page_size)
                .limit(page.page_size)
            )
            return list(rows), int(total or 0)

    def redeliver(self, webhook_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery | None:
        """Make a delivery due now with a fresh retry window (not while an attempt is in flight:
        then it is returned unchanged); None when the endpoint has no such delivery."""
        with self._work(None, "redeliver_webhook", autocommit=False) as work:
            s = work.session
            row = s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == webhook_id)
                .with_for_update()
            ).one_or_none()
            if row is None or row.status == "delivering":
                return row
            row.status, row.next_attempt_at, row.first_attempt_at = "pending", func.now(), None
            row.lease_token, row.updated_at = None, func.now()
            s.flush()
            s.refresh(row)
            return row

    # -- the dispatcher

    def fan_out(self, batch: int = 5000, max_batches: int = 10) -> tuple[int, int]:
        """Read the log past the cursor and write the deliveries it calls for; (events read,
        deliveries made). (0, 0) when another dispatcher holds the cursor."""
        scanned = made = 0
        for _ in range(max_batches):
            with self._work(None, "webhook_fan_out", autocommit=False) as work:
                s = work.session
                s.execute(
                    text(
                        "INSERT INTO webhook_cursor (id, last_txid, last_event_id) VALUES (1, 0, 0) "
                        "ON CONFLICT (id) DO NOTHING"
                    )
                )
                cursor = s.execute(
                    text(
                        "SELECT last_txid, last_event_id FROM webhook_cursor WHERE id = 1 "
                        "FOR UPDATE SKIP LOCKED"
                    )
                ).first()
                if cursor is None:
                    return scanned, made
                if s.execute(_SKIP_TO_HORIZON).first() is not None:
                    return scanned, made  # nobody to call: nothing read
                read, new, txid, event_id = s.execute(
                    _FAN_OUT, {"txid": cursor[0], "event_id": cursor[1], "n": batch}
                ).one()
                if read:
                    s.execute(
                        text(
                            "UPDATE webhook_cursor SET last_txid = :t, last_event_id = :e, "
                            "updated_at = now() WHERE id = 1"
                        ),
                        {"t": txid, "e": event_id},
                    )
            scanned, made = scanned + int(read), made + int(new)
            if read < batch:
                break
        return scanned, made

    def claim_due(
        self, limit: int, lease_seconds: float, *, total: int, per_endpoint: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Claim up to `limit` due deliveries of enabled endpoints, keeping at most `total` in
        flight and `per_endpoint` for one endpoint: (delivery id, lease token) of each."""
        params = {"n": limit, "lease": lease_seconds, "total": total, "per_endpoint": per_endpoint}
        with self._work(None, "claim_webhook_deliveries") as work:
            rows = work.session.execute(_CLAIM, params).all()
            return [(r[0], r[1]) for r in rows]

    def start_send(self, delivery_id: uuid.UUID, token: uuid.UUID, lease_seconds: float) -> SendJob | None:
        """Renew the claim for the attempt about to be made; None when the claim is not ours."""
        with self._work(None, "start_webhook_send", autocommit=False) as work:
            s = work.session
            row = s.execute(_START, {"id": delivery_id, "token": token, "lease": lease_seconds}).first()
            if row is None:
                return None
            event = s.get(ExecutionEvent, row[0])
            if event is None:
                return None
            return SendJob(delivery_id, row[2], row[3], row[4], bool(row[5]), int(row[1]), event)

    def release(self, delivery_id: uuid.UUID, token: uuid.UUID) -> None:
        """Give a claim back unattempted (its endpoint was disabled meanwhile): pending, due now."""
        with self._work(None, "release_webhook_delivery") as work:
            work.session.execute(
                text(
                    "UPDATE webhook_deliveries SET status = 'pending', lease_token = NULL, "
                    "next_attempt_at = now(), updated_at = now() WHERE id = :id AND lease_token = :token"
                ),
                {"id": delivery_id, "token": token},
            )

    def record_success(self, delivery_id: uuid.UUID, token: uuid.UUID, status_code: int) -> None:
        """The attempt got a 2xx: succeeded; the endpoint's failure streak ends."""
        with self._work(None, "record_webhook_success") as work:
            work.session.execute(_SUCCEEDED, {"id": delivery_id, "token": token, "code": status_code})

    def record_failure(
        self,
        delivery_id: uuid.UUID,
        token: uuid.UUID,
        *,
        status_code: int | None,
        error: str,
        delay: float,
        window: float,
        disable_after: int,
    ) -> tuple[str, bool | None] | None:
        """The attempt failed: pending again after `delay` s, or failed past the retry window.
        (the delivery's status, False when this disabled the endpoint); None if the claim was lost."""
        reason = f"disabled after {disable_after} consecutive failed deliveries"
        params = {
            "id": delivery_id,
            "token": token,
            "code": status_code,
            "error": error[:1000],
            "delay": delay,
            "window": window,
            "disable_after": disable_after,
            "reason": reason,
        }
        with self._work(None, "record_webhook_failure") as work:
            row = work.session.execute(_FAILED, params).first()
            return None if row is None else (str(row[0]), row[1])
