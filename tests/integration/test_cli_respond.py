"""`agentexec respond` and `submit --watch` on an agent that waits for tool outputs (#14), against
the API served over HTTP and the real worker (the fixtures of test_cli)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.test_cli import AGENTEXEC, Cli
from tests.integration.test_cli import api_url as api_url  # noqa: F401 - the module's server fixture

LOOKUP = {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
ASK = "tool_calls=" + json.dumps([[{"name": "lookup", "arguments": {"q": "x"}}]])


@pytest.fixture
def shell(api_url, clean_db) -> Cli:  # type: ignore[no-untyped-def]  # noqa: F811
    """`agentexec` run in-process against the API server."""
    return Cli(api_url)


def _agent(cli: Cli) -> dict[str, Any]:
    return cli.json("agents", "create", "tooly", "--tool", json.dumps(LOOKUP))  # type: ignore[no-any-return]


def test_submit_watch_outside_a_terminal_shows_the_pending_calls_and_respond_answers_them(shell):  # type: ignore[no-untyped-def]
    cli = shell
    agent = _agent(cli)
    assert agent["tools"][0]["name"] == "lookup" and agent["tools"][0]["kind"] == "client"
    waiting = cli(
        "submit", "tooly", "--type", "agent", "--input", "what is x?", "--simulate", ASK, "--watch", code=3
    )
    execution_id = re.search(r"submitted ([0-9a-f-]{36})", waiting.stderr).group(1)  # type: ignore[union-attr]
    assert "REQUIRES_ACTION" in waiting.stderr
    assert 'call_1_0  lookup({"q": "x"})' in waiting.stderr
    assert f"agentexec respond {execution_id} --output call_1_0=..." in waiting.stderr

    cli("respond", execution_id, code=2)  # no --output and no terminal to ask in
    answered = cli("respond", execution_id, "--output", "call_1_0=x is forty-two")
    assert answered.stdout.split() == [execution_id, "QUEUED"]
    done = wait_for(
        lambda: (e := cli.execution(execution_id))["state"] == "COMPLETED" and e, what="the agent to finish"
    )
    assert "lookup=x is forty-two" in done["result"]["output"]
    again = cli("respond", execution_id, "--output", "call_1_0=late", code=1)
    assert "409" in again.stderr or "waits for no input" in again.stderr


def test_submit_watch_in_a_terminal_asks_for_each_output_and_goes_on_to_the_result(shell):  # type: ignore[no-untyped-def]
    cli = shell
    _agent(cli)
    leader, follower = pty.openpty()
    env = {"PATH": os.environ["PATH"], "AGENTEXEC_API_URL": cli.url, "TERM": "dumb", "COLUMNS": "120"}
    args = ["submit", "tooly", "--type", "agent", "--input", "what is x?", "--simulate", ASK, "--watch"]
    proc = subprocess.Popen([AGENTEXEC, *args], stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    seen, answered = b"", False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the command exited
                    break
                if not data:
                    break
                seen += data
            if not answered and b"output of lookup (call_1_0):" in seen:
                os.write(leader, b"typed by a person\n")
                answered = True
        code = proc.wait(timeout=5)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode(errors="replace")
    assert answered, text
    assert code == 0, text
    assert "lookup=typed by a person" in text
