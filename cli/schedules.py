"""`agentexec schedules create|list|show|update|delete`: recurring runs on a cron expression
(docs/api.md, "Schedules")."""

from __future__ import annotations

from typing import Annotated

import typer
from agentexec_client import Schedule
from rich.markup import escape
from rich.table import Table

from cli.agents import resolve_agent
from cli.context import client_of
from cli.render import err, out, print_json, short_time

app = typer.Typer(help="Recurring executions: a cron expression in a time zone.", no_args_is_help=True)
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON.")]
ScheduleId = Annotated[str, typer.Argument(help="Schedule id.")]


def schedules_table(items: list[Schedule]) -> Table:
    """One row per schedule: id, cron and zone, enabled, next and last run, last error."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    for name in ("CRON", "TIMEZONE", "ENABLED", "NEXT", "LAST", "LAST ERROR"):
        table.add_column(name, overflow="fold")
    for s in items:
        table.add_row(
            str(s.id),
            escape(s.cron),
            escape(s.timezone),
            "yes" if s.enabled else "no",
            short_time(s.next_run_at.isoformat()) if s.next_run_at else "",
            short_time(s.last_run_at.isoformat()) if s.last_run_at else "",
            escape(s.last_error or ""),
        )
    return table


def _show(schedule: Schedule, as_json: bool) -> None:
    if as_json:
        print_json(schedule.model_dump(mode="json"))
    else:
        out.print(schedules_table([schedule]))


@app.command("create")
def create(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    cron: Annotated[str, typer.Argument(help="5 fields, quoted: '30 7 * * 1-5'.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The input of each run.")] = "",
    timezone: Annotated[str, typer.Option("--timezone", "-z", help="IANA time zone.")] = "UTC",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it paused.")] = False,
    as_json: AsJson = False,
) -> None:
    """Run AGENT on every tick of CRON (read in --timezone); prints the schedule's id."""
    client = client_of(ctx)
    made = client.schedules.create(
        resolve_agent(client, agent).id, cron, input=input, timezone=timezone, enabled=not disabled
    )
    if as_json:
        print_json(made.model_dump(mode="json"))
        return
    out.print(str(made.id))
    if made.next_run_at:
        err.print(f"next run {made.next_run_at.isoformat()}")


@app.command("list")
def list_schedules(ctx: typer.Context, as_json: AsJson = False) -> None:
    """This tenant's schedules, oldest first."""
    items = list(client_of(ctx).schedules.list())
    if as_json:
        print_json({"items": [s.model_dump(mode="json") for s in items]})
    elif not items:
        err.print("[dim]no schedules[/dim]")
    else:
        out.print(schedules_table(items))


@app.command("show")
def show(ctx: typer.Context, schedule: ScheduleId, as_json: AsJson = False) -> None:
    """One schedule."""
    _show(client_of(ctx).schedules.get(schedule), as_json)


@app.command("update")
def update(
    ctx: typer.Context,
    schedule: ScheduleId,
    cron: Annotated[str | None, typer.Option("--cron", help="New cron expression.")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", "-z", help="New time zone.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable", help="Resume or pause it.")] = None,
    as_json: AsJson = False,
) -> None:
    """Change a schedule (a new cron, zone or --enable starts from the next tick after now)."""
    _show(client_of(ctx).schedules.update(schedule, cron=cron, timezone=timezone, enabled=enabled), as_json)


@app.command("delete")
def delete(ctx: typer.Context, schedule: ScheduleId) -> None:
    """Delete a schedule (the executions it made stay)."""
    client_of(ctx).schedules.delete(schedule)
    err.print(f"deleted schedule {schedule}")
