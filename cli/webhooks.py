"""`agentexec webhooks create|list|show|update|delete|deliveries|redeliver` (docs/webhooks.md)."""

from __future__ import annotations

from typing import Annotated

import typer
from agentexec_client import Webhook, WebhookDelivery
from rich.markup import escape
from rich.table import Table

from cli.context import client_of
from cli.render import err, out, print_json, short_time

app = typer.Typer(
    help="Endpoints called back with this tenant's events (signed per Standard Webhooks).",
    no_args_is_help=True,
)
Events = Annotated[
    list[str] | None,
    typer.Option(
        "--event", "-e", help="An event type to send (repeatable); default agent.execution.completed."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON.")]
WebhookId = Annotated[str, typer.Argument(help="Webhook id.")]


def webhooks_table(items: list[Webhook]) -> Table:
    """One row per endpoint: id, enabled (or why not), failures in a row, events, URL."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    for name in ("ENABLED", "FAILURES", "EVENTS", "URL"):
        table.add_column(name, overflow="fold")
    for hook in items:
        enabled = "yes" if hook.enabled else f"no: {hook.disabled_reason or 'disabled'}"
        events = ", ".join(e.removeprefix("agent.execution.") for e in hook.events)
        table.add_row(str(hook.id), escape(enabled), str(hook.consecutive_failures), events, escape(hook.url))
    return table


def deliveries_table(items: list[WebhookDelivery]) -> Table:
    """One row per delivery: its webhook-id, event, status, attempts, last answer, next attempt."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("DELIVERY (webhook-id)", no_wrap=True)
    for name in ("EVENT", "STATUS", "ATTEMPTS", "LAST", "NEXT"):
        table.add_column(name, overflow="fold")
    for d in items:
        last = d.last_error if d.last_status_code is None else f"HTTP {d.last_status_code}"
        nxt = short_time(d.next_attempt_at.isoformat()) if d.next_attempt_at else ""
        table.add_row(
            str(d.id),
            f"{d.event_id} {d.event_type.removeprefix('agent.execution.')}",
            d.status,
            str(d.attempts),
            escape(last or ""),
            nxt,
        )
    return table


@app.command("create")
def create(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The http(s) URL events are POSTed to.")],
    event: Events = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="A note for you.")] = None,
    as_json: AsJson = False,
) -> None:
    """Register an endpoint; prints its id, and its signing secret once (keep it)."""
    hook = client_of(ctx).webhooks.create(url, events=event or None, description=description)
    if as_json:
        print_json(hook.model_dump(mode="json"))
        return
    out.print(str(hook.id))
    out.print(hook.secret)
    err.print("created; the secret (second line) verifies webhook-signature and is not shown again")


@app.command("list")
def list_webhooks(ctx: typer.Context, as_json: AsJson = False) -> None:
    """This tenant's endpoints, newest first."""
    items = list(client_of(ctx).webhooks.list())
    if as_json:
        print_json({"items": [h.model_dump(mode="json") for h in items]})
    elif not items:
        err.print("[dim]no webhooks[/dim]")
    else:
        out.print(webhooks_table(items))


@app.command("show")
def show(ctx: typer.Context, webhook: WebhookId, as_json: AsJson = False) -> None:
    """One endpoint."""
    hook = client_of(ctx).webhooks.get(webhook)
    if as_json:
        print_json(hook.model_dump(mode="json"))
    else:
        out.print(webhooks_table([hook]))


@app.command("update")
def update(
    ctx: typer.Context,
    webhook: WebhookId,
    url: Annotated[str | None, typer.Option("--url", help="New URL.")] = None,
    event: Annotated[
        list[str] | None, typer.Option("--event", "-e", help="Replace the event types (repeatable).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    enabled: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="Resume (and reset the failure count) or stop deliveries."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Change an endpoint."""
    hook = client_of(ctx).webhooks.update(
        webhook, url=url, events=event or None, description=description, enabled=enabled
    )
    if as_json:
        print_json(hook.model_dump(mode="json"))
    else:
        out.print(webhooks_table([hook]))


@app.command("delete")
def delete(ctx: typer.Context, webhook: WebhookId) -> None:
    """Delete an endpoint and its deliveries."""
    client_of(ctx).webhooks.delete(webhook)
    err.print(f"deleted webhook {webhook}")


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    webhook: WebhookId,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=200, help="The newest N.")] = 20,
    as_json: AsJson = False,
) -> None:
    """An endpoint's newest deliveries: status, attempts, the last answer, the next attempt."""
    page = client_of(ctx).webhooks.deliveries_page(webhook, 1, limit)
    if as_json:
        print_json(page.model_dump(mode="json"))
    elif not page.items:
        err.print("[dim]no deliveries yet[/dim]")
    else:
        out.print(deliveries_table(page.items))


@app.command("redeliver")
def redeliver(
    ctx: typer.Context,
    webhook: WebhookId,
    delivery: Annotated[str, typer.Argument(help="Delivery id (its webhook-id).")],
) -> None:
    """Send a delivery again, with the same webhook-id."""
    done = client_of(ctx).webhooks.redeliver(webhook, delivery)
    err.print(f"delivery {done.id} is due again ({done.status})")
