"""The `agentexec` command: a client of the HTTP API (agents, submit, list, show, control).

Exit codes: 0 success (for a watched run: it completed), 1 failed, cancelled or timed
out, or an error from the API or the connection (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from agentexec_client import AgentexecError
from rich.markup import escape
from typer.core import TyperGroup

from cli.context import Context
from cli.render import CliError, err, error_line


class _Group(TyperGroup):
    """Turns every CliError and SDK error into one line on stderr and exit code 1 (never a traceback)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (CliError, AgentexecError) as exc:
            err.print(f"[bold red]error:[/bold red] {escape(error_line(exc))}")
            raise typer.Exit(1) from None
        finally:
            state = ctx.obj
            if isinstance(state, Context):
                state.close()


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
    api_url: Annotated[
        str, typer.Option("--api-url", envvar="AGENTEXEC_API_URL", help="Base URL of the API.")
    ] = "http://127.0.0.1:8000",
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
    if not api_url.startswith(("http://", "https://")):
        raise typer.BadParameter("must start with http:// or https://", param_hint="--api-url")
    ctx.obj = Context(api_url, api_key or None, timeout)


def _register() -> None:
    from cli import agents, executions, keys, status

    app.add_typer(agents.app, name="agents")
    app.add_typer(keys.app, name="keys")
    app.command("status")(status.status)
    executions.register(app)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
