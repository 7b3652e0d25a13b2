"""The `agentexec` command: a client of the HTTP API (agents, submit, list, show, control).

Exit codes: 0 success (for a watched run: it completed), 1 failed, cancelled or timed
out, or an error from the API or the connection (one line on stderr), 2 bad usage, 3 a
watched agent waits for tool outputs and this is not a terminal (`agentexec respond`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from agentexec_client import AgentexecError, ConnectionFailed
from rich.markup import escape
from typer.core import TyperGroup

from cli.context import ApiLocation, Context, locate_api
from cli.render import CliError, err, error_line

API_URL_HELP = (
    "Base URL of the API. Without it: AGENTEXEC_API_URL, else the URL `make run` wrote to var/api-url "
    "of the checkout you are in, else http://127.0.0.1:$PORT, else http://127.0.0.1:8000."
)


class _Group(TyperGroup):
    """Turns every CliError and SDK error into one line on stderr and exit code 1 (never a traceback);
    its --help ends with the API URL the commands would use, and where it came from."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (CliError, AgentexecError) as exc:
            line = error_line(exc)
            where = ctx.obj.location if isinstance(ctx.obj, Context) else None
            if isinstance(exc, ConnectionFailed) and where is not None and where.source != "--api-url":
                line += f"; the URL {where.origin()}"
            err.print(f"[bold red]error:[/bold red] {escape(line)}")
            raise typer.Exit(1) from None
        finally:
            state = ctx.obj
            if isinstance(state, Context):
                state.close()

    def format_help(self, ctx: Any, formatter: Any) -> None:
        where = locate_api()
        self.epilog = escape(f"Without --api-url, commands talk to {where.url}, which {where.origin()}.")
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=_Group,
    name="agentexec",
    help="Run and watch AI-agent executions through the agentexec HTTP API.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    ctx: typer.Context,
    api_url: Annotated[str | None, typer.Option("--api-url", help=API_URL_HELP, show_default=False)] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="AGENTEXEC_API_KEY",
            help="API key, sent as a Bearer token.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per HTTP call.")] = 30.0,
) -> None:
    """Run and watch AI-agent executions through the agentexec HTTP API."""
    where = ApiLocation(api_url, "--api-url") if api_url else locate_api()
    if not where.url.startswith(("http://", "https://")):
        hint = where.source or "--api-url"
        raise typer.BadParameter(f"{where.url!r} must start with http:// or https://", param_hint=hint)
    ctx.obj = Context(where, api_key or None, timeout)


def _register() -> None:
    from cli import agents, executions, keys, purge, respond, status, tenants, usage
    from cli import schedules as schedule_commands
    from cli import webhooks as webhook_commands

    app.add_typer(agents.app, name="agents")
    app.add_typer(keys.app, name="keys")
    app.add_typer(tenants.app, name="tenants")
    app.add_typer(webhook_commands.app, name="webhooks")
    app.add_typer(schedule_commands.app, name="schedules")
    app.command("status")(status.status)
    app.command("purge")(purge.purge)
    app.command("usage")(usage.usage)
    app.command("respond")(respond.respond)
    executions.register(app)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
