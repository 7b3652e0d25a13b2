"""`agentexec tenants list|set-limit|unset-limit`: per-tenant concurrency limits, straight
against the database (operator commands, like `keys`: run where DATABASE_URL reaches
PostgreSQL). TENANT_MAX_CONCURRENCY is the limit of every tenant without its own."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.render import CliError, err, out, print_json

app = typer.Typer(help="Per-tenant concurrency limits (needs DATABASE_URL).", no_args_is_help=True)


def _service() -> Any:
    from app.bootstrap import build_service
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    # With the Celery bridge: executions waiting for a slot that now fits start at once.
    return build_service(background_tasks=BackgroundTaskManager(celery_app))


def _guard(fn: Any) -> Any:
    from app.errors import DatabaseError

    try:
        return fn()
    except DatabaseError as exc:
        raise CliError(f"database: {exc} (is DATABASE_URL right and migrated?)") from None


def _tenant(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 100:
        raise typer.BadParameter("must be 1 to 100 characters", param_hint="TENANT")
    return value


@app.command("set-limit")
def set_limit(
    tenant: Annotated[str, typer.Argument(help="The tenant.")],
    limit: Annotated[
        int, typer.Argument(min=0, help="At most this many RUNNING or PAUSING at once; 0: no limit.")
    ],
) -> None:
    """Give TENANT its own concurrency limit, overriding TENANT_MAX_CONCURRENCY."""
    svc = _service()
    name = _tenant(tenant)
    _guard(lambda: svc.set_tenant_limit(name, limit))
    err.print(f"tenant {name!r}: at most {limit or 'unlimited'} executions running at once")


@app.command("unset-limit")
def unset_limit(tenant: Annotated[str, typer.Argument(help="The tenant.")]) -> None:
    """Remove TENANT's own limit: TENANT_MAX_CONCURRENCY applies again."""
    svc = _service()
    name = _tenant(tenant)
    _guard(lambda: svc.set_tenant_limit(name, None))
    default = svc.settings.tenant_max_concurrency
    err.print(f"tenant {name!r}: TENANT_MAX_CONCURRENCY applies ({default or 'unlimited'})")


@app.command("list")
def list_tenants(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Tenants with a limit or with executions running or waiting: limit, running, waiting."""
    svc = _service()
    rows = _guard(svc.tenant_slots)
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("TENANT", "LIMIT", "RUNNING", "WAITING"):
        table.add_column(column, overflow="fold", justify="left" if column == "TENANT" else "right")
    for row in rows:
        limit = str(row["max_concurrency"] or "-") + ("" if row["own_limit"] else " (default)")
        table.add_row(escape(row["tenant"]), limit, str(row["running"]), str(row["waiting"]))
    out.print(table)
