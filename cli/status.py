"""`agentexec status`: the workers, the reaper's last pass and the queue depths, at a glance.

An operator command like `keys`: it reads PostgreSQL (DATABASE_URL) and asks the workers
through the broker (CELERY_BROKER_URL), not the HTTP API, because none of this belongs to
one tenant.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.render import CliError, err, out

INSPECT_TIMEOUT = 1.0


def gather() -> dict[str, Any]:
    """Workers (node, queues, active tasks), the reaper's record, when the schedule tick and the
    webhook dispatcher last ran, queue depths, executions by state."""
    from app.bootstrap import build_service
    from app.errors import DatabaseError
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    service = build_service()
    try:
        reaper = service.repository.reaper_status()
        periodic = service.repository.periodic_status()
        by_state = service.repository.executions_by_state()
    except DatabaseError as exc:
        raise CliError(f"database: {exc} (is DATABASE_URL right and migrated?)") from None
    inspect = celery_app.control.inspect(timeout=INSPECT_TIMEOUT)
    try:
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
    except Exception as exc:  # the broker is down: say so, the rest still helps
        err.print(f"[yellow]workers unknown: the broker did not answer ({exc})[/yellow]")
        queues, active = {}, {}
    workers = [
        {"node": node, "queues": sorted(q["name"] for q in qs), "active": len(active.get(node, []))}
        for node, qs in sorted(queues.items())
    ]
    names = set(service.settings.accepted_queues) | {q for w in workers for q in w["queues"]}
    manager = BackgroundTaskManager(celery_app)
    depths: dict[str, int | None] = {}
    for name in sorted(names):
        try:
            depths[name] = manager.queue_depth(name)
        except Exception:  # the broker is down
            depths[name] = None
    interval = service.settings.reaper_interval
    return {
        "workers": workers,
        "reaper": None
        if reaper is None
        else {
            "last_pass_seconds_ago": round(reaper[0], 1),
            "stale": reaper[0] > 3 * interval,
            "recovered": reaper[1],
        },
        "periodic": {task: round(age, 1) for task, age in sorted(periodic.items())},
        "queues": depths,
        "executions": by_state,
    }


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """The workers (through Celery's inspect), the reaper's last pass and the queue depths."""
    found = gather()
    if as_json:
        out.print_json(json.dumps(found))
        return
    workers = Table("worker", "queues", "active", title="workers")
    for w in found["workers"]:
        workers.add_row(w["node"], ", ".join(w["queues"]), str(w["active"]))
    if not found["workers"]:
        workers.add_row("(none answered)", "", "")
    out.print(workers)
    reaper = found["reaper"]
    if reaper is None:
        out.print("reaper: [bold red]never ran[/bold red] (is beat running?)")
    else:
        mark = "[bold red]stale[/bold red]" if reaper["stale"] else "ok"
        moved = ", ".join(f"{k} {v}" for k, v in sorted(reaper["recovered"].items()) if v) or "nothing"
        out.print(
            f"reaper: last pass {reaper['last_pass_seconds_ago']} s ago ({mark}); recovered in all: {moved}"
        )
    for task, age in found["periodic"].items():
        out.print(f"{task.replace('_', ' ')}: last ran {age} s ago")
    queues = Table("queue", "waiting in the broker", title="queues")
    for name, depth in found["queues"].items():
        queues.add_row(name, "?" if depth is None else str(depth))
    out.print(queues)
    states = ", ".join(f"{k} {v}" for k, v in sorted(found["executions"].items())) or "none"
    out.print(f"executions: {states}")
