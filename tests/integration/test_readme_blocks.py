"""The README's curl walkthrough as a newcomer pastes it: its shell blocks, run twice, as they are.

The blocks read `AGENTEXEC_API_URL` and `AGENTEXEC_API_KEY` (with documented defaults), so
the test only sets those two; the server is gunicorn with API keys on, and a real worker
runs the executions. The shell blocks of docs/api.md that build on the walkthrough run
after it, in the same shell.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Server

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## A first execution with curl"
ERROR_PAGES = ("traceback", "<!doctype", "<html", "unexpected answer")


def shell_blocks(text: str) -> list[str]:
    """The ```sh and ```bash blocks of a Markdown text, in order."""
    return re.findall(r"^```(?:sh|bash)\n(.*?)^```", text, re.S | re.M)


def section(text: str, heading: str) -> str:
    """The text of one `## ` section, up to the next one."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize("api_server", [{"AUTH_ENABLED": "true"}], indirect=True)
def test_the_readme_curl_walkthrough_runs_twice_without_an_error_page(
    api_server: Server, service, clean_db
) -> None:  # type: ignore[no-untyped-def]
    key, _ = service.keys.create("readme", "the README walkthrough")
    blocks = shell_blocks(section((ROOT / "README.md").read_text(), SECTION))
    assert len(blocks) == 1 and "$API/v1/executions" in blocks[0]
    limits = shell_blocks(section((ROOT / "README.md").read_text(), "## Limits and budgets"))
    assert len(limits) == 1 and "$API/v1/usage" in limits[0]  # it uses the walkthrough's API and KEY
    tools = shell_blocks(section((ROOT / "README.md").read_text(), "## An agent with a tool"))
    assert len(tools) == 2 and "/input" in tools[0] and "respond" in tools[1]  # curl, then the CLI
    script = "\n".join(blocks + limits + tools + shell_blocks((ROOT / "docs" / "api.md").read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTEXEC_")}
    env |= {"AGENTEXEC_API_URL": api_server.url, "AGENTEXEC_API_KEY": key}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the `agentexec` installed here
    executions = set()
    for paste in (1, 2):
        run = subprocess.run(
            ["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, f"paste {paste}:\n{output[-4000:]}"
        assert not [page for page in ERROR_PAGES if page in output.lower()], (
            f"paste {paste}:\n{output[-4000:]}"
        )
        assert "event: agent.execution.completed" in output and "\nCOMPLETED\n" in output, output[-4000:]
        assert '{"items":[{"agent_id"' in output, output[-4000:]  # GET /v1/usage answered
        assert "lookup=a distributed task queue" in output, output[-4000:]  # the tool's output reached it
        assert "lookup=an in-memory data store" in output, output[-4000:]  # and through the CLI
        executions.add(re.search(r"^execution (\S+)$", output, re.M).group(1))  # type: ignore[union-attr]
    assert len(executions) == 2, "the second paste did not make its own execution"


@pytest.mark.parametrize("api_server", [{"AUTH_ENABLED": "true"}], indirect=True)
def test_the_readme_python_example_runs_twice_on_the_stack_agentexec_api_url_names(
    api_server: Server, service, clean_db
) -> None:  # type: ignore[no-untyped-def]
    key, _ = service.keys.create("readme", "the README Python example")
    text = section((ROOT / "README.md").read_text(), "## From Python")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1 and "Client(" in blocks[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTEXEC_")}
    env |= {"AGENTEXEC_API_URL": api_server.url, "AGENTEXEC_API_KEY": key}
    for paste in (1, 2):
        run = subprocess.run(
            [sys.executable, "-c", blocks[0]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0 and "Traceback" not in run.stderr, (
            f"run {paste}:\n{run.stdout}{run.stderr}"
        )
        assert "100.0%" in run.stdout and "COMPLETED" in run.stdout, run.stdout
