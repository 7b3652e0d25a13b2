"""`agentexec purge --older-than 7d [--dry-run]`: retention at once, straight against the database
(an operator command, like `keys`): finished executions older than that go, with their history
and events, in batches of 1,000. Active executions are never touched."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from cli.render import CliError, err, out

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_age(text: str) -> float:
    """Seconds in an age such as 90s, 30m, 12h, 7d or 2w (one number and one unit)."""
    match = _AGE.fullmatch(text.strip().lower())
    if match is None:
        raise typer.BadParameter("an age such as 90s, 30m, 12h, 7d or 2w", param_hint="--older-than")
    return float(match.group(1)) * _UNITS[match.group(2)]


def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of the finished executions to delete: 7d, 12h...")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
) -> None:
    """Delete finished executions older than --older-than (with their history and events)."""
    seconds = parse_age(older_than)
    import sys

    from app.bootstrap import build_service
    from app.errors import DatabaseError
    from app.logging import configure_logging

    configure_logging(level="WARNING", stream=sys.stderr)  # stdout carries only the count

    svc: Any = build_service()
    try:
        count = svc.purge(seconds, dry_run=dry_run)
    except DatabaseError as exc:
        raise CliError(f"database: {exc} (is DATABASE_URL right and migrated?)") from None
    if dry_run:
        err.print(f"would delete {count} finished executions older than {older_than} (dry run)")
    else:
        err.print(f"deleted {count} finished executions older than {older_than}")
    out.print(str(count))
