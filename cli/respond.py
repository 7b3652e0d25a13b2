"""Agents waiting for tool outputs: `agentexec respond` and the REQUIRES_ACTION stop of `--watch`.

An `agent` execution whose model asks for `client` tools waits REQUIRES_ACTION. `respond ID
--output CALL_ID=TEXT ...` answers from scripts; without --output, in a terminal, it asks for
each pending call's output. `submit --watch` shows the pending calls when the run stops to
wait and, in a terminal, asks for them and goes on watching; elsewhere it prints them with the
`respond` line to run, and exits 3.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from agentexec_client import Client, Execution, ExecutionState
from agentexec_client.tools import pending_calls
from rich.markup import escape

from cli.context import client_of
from cli.render import err, out, state_text

WAITING_EXIT = 3  # submit --watch outside a terminal: the execution waits for tool outputs


def parse_outputs(pairs: list[str]) -> dict[str, str]:
    """`--output CALL_ID=TEXT` options as {call id: text} (TEXT taken as written, `=` allowed)."""
    outputs: dict[str, str] = {}
    for pair in pairs:
        call_id, sep, text = pair.partition("=")
        if not sep or not call_id:
            raise typer.BadParameter(f"expected CALL_ID=TEXT, got {pair!r}", param_hint="--output")
        outputs[call_id] = text
    return outputs


def show_pending(execution: Execution) -> None:
    """The tool calls the execution waits for, one line each, and until when (stderr)."""
    action = execution.required_action or {}
    err.print(
        f"{execution.id} {state_text(ExecutionState.REQUIRES_ACTION)}: waiting for tool outputs "
        f"until {escape(str(action.get('expires_at')))}"
    )
    for call in pending_calls(execution):
        arguments = json.dumps(call.get("arguments") or {}, ensure_ascii=False)
        err.print(f"  {escape(call['id'])}  {escape(call['name'])}({escape(arguments)})")


def ask_outputs(execution: Execution) -> dict[str, str]:
    """Ask for each pending call's output in the terminal."""
    return {
        call["id"]: typer.prompt(f"output of {call['name']} ({call['id']})")
        for call in pending_calls(execution)
    }


def interactive() -> bool:
    """True when a person can answer prompts (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def respond(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="Execution id.")],
    output: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            "-o",
            metavar="CALL_ID=TEXT",
            help="The output of one pending tool call. Repeat for each; without any, in a terminal, "
            "you are asked for each.",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", "-k", help="Idempotency-Key header (safe retries).")
    ] = None,
) -> None:
    """Answer the tool calls an agent execution waits for (REQUIRES_ACTION); it goes on (QUEUED)."""
    client = client_of(ctx)
    outputs = parse_outputs(output or [])
    if not outputs:
        execution = client.executions.get(execution_id)
        if not pending_calls(execution) or not interactive():
            if pending_calls(execution):
                show_pending(execution)
            raise typer.BadParameter(
                "give each pending call's output as --output CALL_ID=TEXT", param_hint="--output"
            )
        show_pending(execution)
        outputs = ask_outputs(execution)
    item = client.tools.respond(execution_id, outputs, idempotency_key=idempotency_key or None)
    out.print(f"{item.id}  {state_text(item.state)}")


def watch_and_respond(client: Client, execution: Execution, watch: Any) -> tuple[Execution, int | None]:
    """`watch(client, execution)` until the execution ends; at each wait for tool outputs show the
    calls and, in a terminal, ask for the outputs and go on. (the execution, None) when it ended;
    (it, WAITING_EXIT) when it waits and nobody can answer here."""
    while True:
        final: Execution = watch(client, execution)
        if final.state != ExecutionState.REQUIRES_ACTION:
            return final, None
        show_pending(final)
        if not interactive():
            answers = " ".join(f"--output {c['id']}=..." for c in pending_calls(final))
            err.print(f"answer with: agentexec respond {final.id} {escape(answers)}")
            return final, WAITING_EXIT
        execution = client.tools.respond(final.id, ask_outputs(final))
