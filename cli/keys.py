"""`agentexec keys create|list|revoke`: API-key administration, straight against the database.

These are operator commands (run where DATABASE_URL reaches PostgreSQL): keys cannot be
made over the API without a key to begin with. A key is printed once, at creation; only
its hash is stored. `revoke` takes any unique prefix of a key's id, as `keys list` shows it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.render import CliError, err, out, print_json, short_time

app = typer.Typer(help="Create, list and revoke API keys (needs DATABASE_URL).", no_args_is_help=True)

ID_WIDTH = len(str(uuid.UUID(int=0)))
PREFIX_WIDTH = 12  # a key's stored prefix: "agx_" and 8 characters (app/auth.py)
ID_PREFIX = re.compile(r"[0-9a-f-]+")
SHOWN_CANDIDATES = 10


def _store():  # type: ignore[no-untyped-def]
    from app.bootstrap import build_service

    return build_service().keys


def _guard(fn):  # type: ignore[no-untyped-def]
    from app.errors import DatabaseError

    try:
        return fn()
    except DatabaseError as exc:
        raise CliError(f"database: {exc} (is DATABASE_URL right and migrated?)") from None


def key_fields(row: Any) -> dict[str, Any]:
    """A key row as JSON-ready fields: everything but its hash."""
    return {
        "id": str(row.id),
        "tenant": row.tenant,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def keys_table(keys: list[dict[str, Any]]) -> Table:
    """The keys list; the id and the prefix are never cut (the other columns wrap instead)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("TENANT", overflow="fold")
    table.add_column("NAME", overflow="fold")
    table.add_column("PREFIX", no_wrap=True, min_width=PREFIX_WIDTH)
    table.add_column("CREATED", overflow="fold")
    table.add_column("REVOKED", overflow="fold")
    for key in keys:
        table.add_row(
            key["id"],
            escape(key["tenant"]),
            escape(key["name"] or ""),
            key["prefix"],
            short_time(key["created_at"]),
            short_time(key["revoked_at"]),
        )
    return table


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as a JSON array.")] = False,
) -> None:
    """List keys, newest first (id, tenant, name, prefix, created, revoked); never the keys themselves."""
    keys = [key_fields(row) for row in _guard(lambda: _store().list(tenant))]
    if as_json:
        print_json(keys)
    else:
        out.print(keys_table(keys))


def resolve_key_id(ref: str, list_keys: Callable[[], list[Any]]) -> uuid.UUID:
    """The id `ref` is, or the one key id it starts; CliError when no id or several start with it."""
    prefix = ref.strip().lower()
    try:
        return uuid.UUID(prefix)
    except ValueError:
        pass
    if not ID_PREFIX.fullmatch(prefix):
        raise typer.BadParameter(
            "not a key id or the start of one (hex digits and dashes)", param_hint="KEY_ID"
        )
    found: list[uuid.UUID] = [row.id for row in list_keys() if str(row.id).startswith(prefix)]
    if not found:
        raise CliError(f"no key id starts with {prefix!r} (see `agentexec keys list`)")
    if len(found) > 1:
        shown = ", ".join(str(key_id) for key_id in found[:SHOWN_CANDIDATES])
        more = f" and {len(found) - SHOWN_CANDIDATES} more" if len(found) > SHOWN_CANDIDATES else ""
        raise CliError(f"{prefix!r} matches {len(found)} keys, give more of the id: {shown}{more}")
    return found[0]


@app.command("revoke")
def revoke(
    key_id: Annotated[
        str, typer.Argument(help="The key's id, or any unique start of it (from `keys list`).")
    ],
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    store = _store()
    parsed = resolve_key_id(key_id, lambda: _guard(store.list))
    if not _guard(lambda: store.revoke(parsed)):
        raise CliError(f"no active key {parsed} (unknown or already revoked)")
    err.print(f"revoked key {parsed}")
