"""`agentexec keys create|list|revoke`: API-key administration, straight against the database.

These are operator commands (run where DATABASE_URL reaches PostgreSQL): keys cannot be
made over the API without a key to begin with. A key is printed once, at creation; only
its hash is stored.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.table import Table

from cli.render import CliError, err, out

app = typer.Typer(help="Create, list and revoke API keys (needs DATABASE_URL).", no_args_is_help=True)


def _store():  # type: ignore[no-untyped-def]
    from app.bootstrap import build_service

    return build_service().keys


def _guard(fn):  # type: ignore[no-untyped-def]
    from app.errors import DatabaseError

    try:
        return fn()
    except DatabaseError as exc:
        raise CliError(f"database: {exc} (is DATABASE_URL right and migrated?)") from None


@app.command("create")
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the key acts for.")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
) -> None:
    """Create a key for TENANT and print it (this is the only time it is shown)."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > 100:
        raise typer.BadParameter("must be 1 to 100 characters", param_hint="--tenant")
    plaintext, row = _guard(lambda: _store().create(tenant, name))
    err.print(f"created key {row.id} for tenant {tenant!r}; store it now, it is not shown again:")
    out.print(plaintext)


@app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
) -> None:
    """List keys (id, tenant, name, prefix, created, revoked); never the keys themselves."""
    rows = _guard(lambda: _store().list(tenant))
    table = Table("id", "tenant", "name", "prefix", "created", "revoked")
    for row in rows:
        table.add_row(
            str(row.id),
            row.tenant,
            row.name or "",
            row.prefix + "…",
            row.created_at.isoformat()[:19].replace("T", " "),
            row.revoked_at.isoformat()[:19].replace("T", " ") if row.revoked_at else "",
        )
    out.print(table)


@app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise typer.BadParameter("not a key id (a UUID)", param_hint="KEY_ID") from None
    if not _guard(lambda: _store().revoke(parsed)):
        raise CliError(f"no active key {key_id}")
    err.print(f"revoked key {key_id}")
