"""The `agentexec` CLI against the real stack: the API on a local HTTP server, a real Celery worker.

The CLI runs in-process through typer's CliRunner (and once as the installed console
script); it only speaks HTTP to the server, which runs the real app over the test
database and sends tasks to the session's Celery worker.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentexec_client import Client, EventType, ProblemError, event_position
from typer.testing import CliRunner
from werkzeug.serving import WSGIRequestHandler, make_server

from cli.main import app as cli_app
from tests.conftest import wait_for
from tests.processes import free_port

AGENTEXEC = str(Path(sys.executable).parent / "agentexec")
FIRST_FRAME = re.compile(rb"id: \d+\n.*?\n\n", re.S)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ERASE_LINE = "\x1b[2K"  # rich's live display erases the previous frame's lines before each new one
SPINNER_FRAMES = re.compile("[\u2800-\u28ff]")  # rich's default "dots" spinner is braille
# Long enough never to finish during a test (a cancel stops it within a second).
SLOW = ["--simulate", "latency_ms=20000", "--simulate", "chunks=40"]


class QuietRequestHandler(WSGIRequestHandler):
    """No access-log line per request (they would land in the captured CLI output)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture(scope="module")
def api_url(settings, session_factory, celery_worker) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The real API app served over HTTP on a free port (threaded, so SSE streams run alongside)."""
    from api import create_app

    app = create_app(settings=settings, session_factory=session_factory)
    server = make_server("127.0.0.1", free_port(), app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="cli-test-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        hub = app.extensions["agentexec.service"].control_hub
        if hub is not None:
            hub.stop()


class Cli:
    """Runs `agentexec ...` in-process against the test server."""

    def __init__(self, url: str):
        self.url = url
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int | None = 0, columns: int = 200) -> Any:
        env = {"AGENTEXEC_API_URL": self.url, "COLUMNS": str(columns)}
        result = self.runner.invoke(cli_app, list(args), env=env)
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        assert "Traceback" not in result.output
        return result

    def process(self, *args: str, code: int) -> subprocess.CompletedProcess[str]:
        """Run the installed `agentexec` command (its output is the CLI's alone)."""
        proc = subprocess.run(
            [AGENTEXEC, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": os.environ["PATH"], "AGENTEXEC_API_URL": self.url},
        )
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def terminal(self, *args: str, columns: int = 100, timeout: float = 30) -> tuple[int, str]:
        """Run the installed `agentexec` on a pseudo-terminal COLUMNS wide: (exit code, all it wrote)."""
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        env = {"PATH": os.environ["PATH"], "AGENTEXEC_API_URL": self.url, "TERM": "xterm-256color"}
        proc = subprocess.Popen([AGENTEXEC, *args], stdin=follower, stdout=follower, stderr=follower, env=env)
        os.close(follower)
        chunks, deadline = [], time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if select.select([leader], [], [], 0.1)[0]:
                    try:
                        data = os.read(leader, 65536)
                    except OSError:  # EIO: the command exited and closed the terminal
                        break
                    if not data:
                        break
                    chunks.append(data)
            return proc.wait(timeout=5), b"".join(chunks).decode()
        finally:
            os.close(leader)
            if proc.poll() is None:
                proc.kill()

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def execution(self, execution_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/v1/executions/{execution_id}", timeout=10).json()


@pytest.fixture
def cli(api_url, clean_db) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(api_url)


@pytest.fixture
def writer(cli) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An agent created with the CLI."""
    return cli.json("agents", "create", "writer", "--system-prompt", "Be brief.")


def test_agents_can_be_created_listed_shown_and_deleted_by_name(cli, writer):  # type: ignore[no-untyped-def]
    assert writer["name"] == "writer" and uuid.UUID(writer["id"])
    listed = cli("agents", "list").stdout
    assert "writer" in listed and writer["id"] in listed
    assert json.loads(cli("agents", "show", "writer").stdout)["id"] == writer["id"]
    cli("agents", "delete", "writer")
    assert cli.json("agents", "list") == []


def test_submit_with_watch_follows_a_pipeline_to_completion_and_prints_its_result(cli, writer):  # type: ignore[no-untyped-def]
    result = cli(
        "submit",
        "writer",
        "--input",
        "tides and moons",
        "--type",
        "pipeline",
        "--step",
        "outline=Outline {input}",
        "--step",
        "draft=Write from {steps.outline}",
        "--simulate",
        "latency_ms=300",
        "--watch",
    )
    assert "tides and moons" in result.stdout
    assert re.search(r"submitted [0-9a-f-]{36} to writer", result.stderr)
    assert "✓ COMPLETED" in result.stderr and "100%" in result.stderr
    executions = cli.json("list")["items"]
    assert len(executions) == 1 and executions[0]["state"] == "COMPLETED"
    history = cli("history", executions[0]["id"]).stdout
    assert [s for s in ("PENDING", "QUEUED", "RUNNING", "COMPLETED") if s in history] == [
        "PENDING",
        "QUEUED",
        "RUNNING",
        "COMPLETED",
    ]
    events = cli("events", executions[0]["id"]).stdout.splitlines()
    assert "state_changed" in events[0] and "completed" in events[-1]
    assert any("progress" in line and "outline" in line.lower() for line in events)
    assert [t["to_state"] for t in cli.json("history", executions[0]["id"])][-1] == "COMPLETED"
    direct = httpx.get(f"{cli.url}/v1/executions/{executions[0]['id']}/events", params={"limit": 1000}).json()
    kinds = [(e["id"], e["type"]) for e in direct["items"]]
    assert [(e["id"], e["type"]) for e in cli.json("events", executions[0]["id"])] == kinds
    followed = cli("events", executions[0]["id"], "--follow", "--json").stdout.splitlines()
    assert [(e["id"], e["type"]) for e in map(json.loads, followed) if "delta" not in e["type"]] == kinds
    deltas = [e["payload"]["delta"] for e in map(json.loads, followed) if "delta" in e["type"]]
    assert "tides and moons" in "".join(deltas)  # --follow shows the output as it streamed
    only = cli("events", executions[0]["id"], "--follow", "--types", "output.delta,completed").stdout
    assert only.count("delta") == len(deltas) and "state_changed" not in only


def test_submit_by_id_from_a_params_file_with_an_idempotency_key_returns_the_same_execution(
    cli, writer, tmp_path: Path
):  # type: ignore[no-untyped-def]
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"input": "from a file"}))
    first = cli("submit", writer["id"], "--params", str(params), "--idempotency-key", "k-1").stdout.strip()
    again = cli("submit", writer["id"], "--params", str(params), "--idempotency-key", "k-1")
    assert again.stdout.strip() == first and "existing" in again.stderr
    wait_for(lambda: cli.execution(first)["state"] == "COMPLETED", what="the execution to complete")
    shown = cli("show", first).stdout
    assert "COMPLETED" in shown and "from a file" in shown and "writer" in shown


def test_a_permanently_failing_execution_exits_1_with_its_error_under_watch(cli, writer):  # type: ignore[no-untyped-def]
    result = cli("submit", "writer", "--input", "x", "--simulate", "fail_permanently=true", "--watch", code=1)
    assert "FAILED" in result.stderr
    assert result.stdout.strip() == ""


def test_cancel_stops_a_running_execution_and_follow_reports_it_with_exit_1(cli, writer):  # type: ignore[no-untyped-def]
    execution_id = cli(
        "submit",
        "writer",
        "--input",
        "long",
        "--type",
        "pipeline",
        "--step",
        "a=A {input}",
        "--step",
        "b=B",
        *SLOW,
    ).stdout.strip()
    wait_for(lambda: cli.execution(execution_id)["state"] == "RUNNING", what="the run to start")
    cancelled = cli("cancel", execution_id, "--reason", "operator said stop").stdout
    assert execution_id in cancelled and ("CANCELLING" in cancelled or "CANCELLED" in cancelled)
    follow = cli("events", execution_id, "--follow", code=1)
    assert "CANCELLED" in follow.stdout.splitlines()[-1]
    assert "operator said stop" in cli("history", execution_id).stdout
    again = cli.process("cancel", execution_id, code=1)
    assert again.stdout == "" and len(again.stderr.splitlines()) == 1
    assert again.stderr.startswith("error: Conflict") and "(HTTP 409)" in again.stderr


def test_list_filters_by_state_and_by_agent_name(cli, writer):  # type: ignore[no-untyped-def]
    assert cli.json("agents", "create", "other")["name"] == "other"
    done = cli("submit", "writer", "--input", "one", "--watch").stderr
    assert "COMPLETED" in done
    slow = cli("submit", "other", "--input", "two", *SLOW).stdout.strip()
    wait_for(lambda: cli.execution(slow)["state"] == "RUNNING", what="the slow run to start")
    completed = cli.json("list", "--state", "COMPLETED")["items"]
    assert [e["agent_id"] for e in completed] == [writer["id"]]
    running = cli.json("list", "--state", "running", "--state", "QUEUED", "--agent", "other")["items"]
    assert [e["id"] for e in running] == [slow]
    assert cli.json("list", "--agent", "writer", "--state", "RUNNING")["items"] == []
    table = cli("list").stdout
    assert slow in table and "RUNNING" in table and "other" in table and "writer" in table
    cli("cancel", slow)
    wait_for(lambda: cli.execution(slow)["state"] == "CANCELLED", what="the slow run to be cancelled")


def test_api_errors_are_one_clear_line_with_exit_1(cli, writer):  # type: ignore[no-untyped-def]
    for args, status, text in [
        (["show", str(uuid.uuid4())], 404, "Not Found"),
        (["agents", "create", "writer"], 409, "Conflict"),
        (["submit", "writer", "--input", "x", "--simulate", "latency_ms=-5"], 422, "latency_ms"),
    ]:
        proc = cli.process(*args, code=1)
        assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and f"(HTTP {status})" in proc.stderr and text in proc.stderr
    unknown = cli("submit", "nobody", "--input", "x", code=1)
    assert "error: no agent named 'nobody'" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "writer"],
        ["submit", "writer", "--input", "x", "--params", "p.json"],
        ["submit", "writer", "--input", "x", "--type", "pipeline"],
        ["submit", "writer", "--input", "x", "--step", "no-equals-sign"],
        ["list", "--state", "SLEEPING"],
        ["submit", "writer", "--input", "x", "--priority", "11"],
        ["frobnicate"],
    ],
)
def test_bad_usage_exits_2_without_calling_the_api(cli, args):  # type: ignore[no-untyped-def]
    result = cli(*args, code=2)
    assert "Usage" in result.output


def test_the_installed_command_reports_an_unreachable_api_in_one_line():
    port = free_port()
    proc = subprocess.run(
        [AGENTEXEC, "--api-url", f"http://127.0.0.1:{port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: cannot connect to the agentexec API at http://127.0.0.1:{port} "
        "(is it running? set --api-url or AGENTEXEC_API_URL)"
    )
    assert proc.stdout == ""


class DroppingProxy:
    """A TCP proxy to the API that cuts the first event stream right after its first event."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with client, upstream:
            request = client.recv(65536)
            self.requests.append(request)
            upstream.sendall(request)
            cut_this = b"text/event-stream" in request and not self.cut
            self.cut = self.cut or cut_this
            seen, sent = b"", 0
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    seen += data
                    frame = FIRST_FRAME.search(seen) if cut_this else None
                    end = frame.end() if frame else len(seen)
                    client.sendall(seen[sent:end])
                    sent = end
                    if frame:
                        return  # closes both sockets mid-response
            except (BrokenPipeError, ConnectionResetError):
                return  # the CLI hung up first (it had what it needed): nothing left to relay

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_event_stream_is_resumed_with_last_event_id_without_gaps_or_repeats(cli, writer):  # type: ignore[no-untyped-def]
    execution_id = cli("submit", "writer", "--input", "resume", "--simulate", "latency_ms=800").stdout.strip()
    proxy = DroppingProxy(int(cli.url.rsplit(":", 1)[1]))
    try:
        client = Client(f"http://127.0.0.1:{proxy.port}")
        events = list(client.executions.stream(execution_id))
        client.close()
    finally:
        proxy.close()
    streams = [r for r in proxy.requests if b"text/event-stream" in r]
    assert len(streams) >= 2, "the stream was not cut and reopened"
    first_id = events[0].id
    assert f"last-event-id: {first_id}".encode() in streams[1].lower()
    ids = [e.id for e in events]
    assert sorted(ids, key=event_position) == ids and len(set(ids)) == len(ids)
    every = ",".join(EventType)  # the log and the output deltas
    direct = httpx.get(
        f"{cli.url}/v1/executions/{execution_id}/events", params={"limit": 1000, "types": every}
    ).json()
    assert ids == [e["id"] for e in direct["items"]]
    assert events[-1].type == "agent.execution.completed"


def test_the_api_key_is_sent_as_a_bearer_token_and_validation_problems_name_their_fields():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            422,
            headers={"content-type": "application/problem+json"},
            json={
                "type": "about:blank",
                "title": "Unprocessable Content",
                "status": 422,
                "detail": "the request body is invalid",
                "errors": [{"loc": ["body", "parameters", "steps"], "msg": "a pipeline needs 1 to 50 steps"}],
            },
        )

    client = Client("http://api.invalid", api_key="k-123", transport=httpx.MockTransport(answer))
    with pytest.raises(ProblemError) as caught:
        client.executions.create(str(uuid.UUID(int=0)), {})
    assert seen[0].headers["authorization"] == "Bearer k-123"
    assert str(caught.value) == (
        "Unprocessable Content: the request body is invalid "
        "[body.parameters.steps: a pipeline needs 1 to 50 steps] (HTTP 422)"
    )


def test_status_shows_the_workers_the_reapers_last_pass_and_the_queue_depths(cli, settings, celery_worker):  # type: ignore[no-untyped-def]
    never = cli("status").stdout
    assert "never ran" in never and settings.default_queue in never
    from workers.tasks import get_service

    get_service().reap()
    found = cli.json("status")
    assert found["reaper"]["last_pass_seconds_ago"] < 10 and found["reaper"]["stale"] is False
    assert found["periodic"] == {}  # neither the schedule tick nor the dispatcher ran yet
    assert found["queues"][settings.default_queue] == 0  # the test worker keeps it drained
    assert any(settings.default_queue in w["queues"] for w in found["workers"]), found["workers"]


@pytest.fixture
def key_store(settings, session_factory, clean_db):  # type: ignore[no-untyped-def]
    """The API-key store over the test database, the one `agentexec keys` opens from DATABASE_URL."""
    from app.bootstrap import build_service

    return build_service(settings=settings, session_factory=session_factory).keys


def _key_json(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "tenant": row.tenant,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
    }


def test_keys_list_shows_every_full_id_at_80_columns_and_as_json(cli, key_store):  # type: ignore[no-untyped-def]
    for tenant, name in [
        ("acme-production", "ci deploy key for the nightly build"),
        ("me", None),
        ("globex", "ops"),
    ]:
        plaintext = cli("keys", "create", "--tenant", tenant, *(["--name", name] if name else [])).stdout
        assert plaintext.strip().startswith("agx_")
    rows = key_store.list()
    assert key_store.revoke(rows[1].id)
    rows = key_store.list()
    table = cli("keys", "list", columns=80).stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "…" not in table
    for row in rows:
        assert re.search(rf"^{row.id}\s+", table, re.M) and row.prefix in table, (row.id, table)
    listed = json.loads(cli("keys", "list", "--json", columns=40).stdout)
    for key in listed:
        key["created_at"] = datetime.fromisoformat(key["created_at"])
        key["revoked_at"] = key["revoked_at"] and datetime.fromisoformat(key["revoked_at"])
    assert listed == [_key_json(row) for row in rows]
    assert [key["tenant"] for key in cli.json("keys", "list", "--tenant", "me")] == ["me"]


def _unique_prefix(key_id: str, others: list[str]) -> str:
    return next(key_id[:n] for n in range(1, 37) if not any(o.startswith(key_id[:n]) for o in others))


def test_keys_revoke_takes_any_unique_start_of_an_id_and_refuses_an_ambiguous_one(cli, key_store):  # type: ignore[no-untyped-def]
    ids = [
        str(key_store.create("acme")[1].id) for _ in range(17)
    ]  # 17 ids, 16 hex digits: two share the first
    first = max("0123456789abcdef", key=lambda digit: sum(i.startswith(digit) for i in ids))
    shared = [i for i in ids if i.startswith(first)]
    refused = cli("keys", "revoke", first, code=1)
    assert len(refused.stderr.splitlines()) == 1 and f"matches {len(shared)} keys" in refused.stderr
    assert all(i in refused.stderr for i in shared), refused.stderr
    assert [row.revoked_at for row in key_store.list()] == [None] * 17

    target = shared[0]
    prefix = _unique_prefix(target, [i for i in ids if i != target])
    assert cli("keys", "revoke", prefix.upper()).stderr.strip() == f"revoked key {target}"
    assert [str(row.id) for row in key_store.list() if row.revoked_at] == [target]
    again = cli("keys", "revoke", prefix, code=1).stderr
    assert f"no active key {target} (unknown or already revoked)" in again

    unused = next(
        p
        for p in (f"{a}{b}" for a in "0123456789abcdef" for b in "0123456789abcdef")
        if not any(i.startswith(p) for i in ids)
    )
    assert f"no key id starts with '{unused}'" in cli("keys", "revoke", unused, code=1).stderr
    assert "Usage" in cli("keys", "revoke", "agx_notanid", code=2).output
    assert [str(row.id) for row in key_store.list() if row.revoked_at] == [target]


def test_a_failed_execution_under_watch_ends_on_a_still_cross_and_its_state_not_a_spinner(cli, writer):  # type: ignore[no-untyped-def]
    code, screen = cli.terminal(
        "submit", "writer", "--input", "x", "--simulate", "fail_permanently=true", "--watch", columns=100
    )
    assert code == 1, screen
    assert SPINNER_FRAMES.search(screen), f"the bar never spun, so this was no live terminal: {screen!r}"
    last_frame = ANSI.sub("", screen.rsplit(ERASE_LINE, 1)[-1]).replace("\r", "")
    lines = [line.strip() for line in last_frame.splitlines() if line.strip()]
    assert not SPINNER_FRAMES.search(last_frame), lines
    assert lines[0].startswith("✗ FAILED "), lines
    assert lines[0].startswith("✗ FAILED (model_error_permanent) "), lines
    assert lines[-1] == "FAILED (model_error_permanent): simulated permanent model failure", lines


def test_agents_create_and_update_set_and_remove_the_limits(cli):  # type: ignore[no-untyped-def]
    made = cli.json(
        "agents",
        "create",
        "capped",
        "--max-concurrency",
        "2",
        "--on-conflict",
        "reject",
        "--daily-token-budget",
        "1000",
    )
    assert (made["max_concurrency"], made["on_conflict"], made["daily_token_budget"]) == (2, "reject", 1000)
    renamed = cli.json("agents", "update", "capped", "--name", "still-capped", "--max-concurrency", "3")
    assert (renamed["name"], renamed["max_concurrency"], renamed["on_conflict"]) == (
        "still-capped",
        3,
        "reject",
    )
    freed = cli.json("agents", "update", made["id"], "--max-concurrency", "0", "--on-conflict", "none")
    assert (freed["max_concurrency"], freed["on_conflict"], freed["daily_token_budget"]) == (None, None, 1000)
    assert cli("agents", "update", "still-capped", "--daily-token-budget", "0").stderr.strip() == (
        "updated agent 'still-capped'"
    )
    assert json.loads(cli("agents", "show", "still-capped").stdout)["daily_token_budget"] is None
    assert "Usage" in cli("agents", "update", "still-capped", code=2).output
    assert "Usage" in cli("agents", "create", "x", "--on-conflict", "sometimes", code=2).output


def test_submit_on_conflict_reject_on_a_busy_task_exits_1_naming_the_active_execution(cli, writer):  # type: ignore[no-untyped-def]
    task = str(uuid.uuid4())
    active = cli("submit", "writer", "--input", "long", "--task-id", task, *SLOW).stdout.strip()
    wait_for(lambda: cli.execution(active)["state"] == "RUNNING", what="the first run to start")
    refused = cli.process(
        "submit", "writer", "--input", "x", "--task-id", task, "--on-conflict", "reject", code=1
    )
    assert refused.stdout == "" and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("error: Conflict") and "(HTTP 409)" in refused.stderr
    assert f"already has an active execution: {active}" in refused.stderr

    waiting = cli("submit", "writer", "--input", "y", "--task-id", task, "--on-conflict", "enqueue")
    assert "QUEUED (waiting: task_busy)" in waiting.stderr
    waiting_id = waiting.stdout.strip()
    assert re.search(r"^state\s+QUEUED \(waiting: task_busy\)$", cli("show", waiting_id).stdout, re.M)
    cli("cancel", active)
    wait_for(lambda: cli.execution(waiting_id)["state"] == "COMPLETED", what="the waiting run to complete")
    assert re.search(r"^state\s+CANCELLED$", cli("show", active).stdout, re.M)  # no "(cancelled)"

    capped = cli("submit", "writer", "--input", "a b c d e f", "--max-tokens", "1", "--watch", code=1)
    assert "FAILED (budget_exceeded): " in capped.stderr
    [failed] = cli.json("list", "--error-code", "budget_exceeded")["items"]
    shown = cli("show", failed["id"]).stdout
    assert re.search(r"^state\s+FAILED \(budget_exceeded\)$", shown, re.M), shown
    assert re.search(r"^tokens\s+0 \(prompt 0, completion 0\) of at most 1$", shown, re.M), shown
    table = cli("list").stdout
    assert "FAILED (budget_exceeded)" in table and "CANCELLED " in table and "(cancelled)" not in table
    assert cli.json("list", "--error-code", "CANCELLED")["items"][0]["id"] == active


def test_usage_prints_the_apis_answer_as_json_and_as_a_table_at_80_columns(cli, writer):  # type: ignore[no-untyped-def]
    cli.json("agents", "create", "an-agent-with-a-rather-long-descriptive-name-for-its-reports")
    for agent in ("writer", "an-agent-with-a-rather-long-descriptive-name-for-its-reports"):
        assert "COMPLETED" in cli("submit", agent, "--input", "a b c d e f", "--watch").stderr
    for group_by in ("agent", "day", "agent_day"):
        api = httpx.get(f"{cli.url}/v1/usage", params={"group_by": group_by}, timeout=10).json()
        assert cli.json("usage", "--group-by", group_by) == api and len(api["items"]) in (1, 2), group_by
    mine = httpx.get(f"{cli.url}/v1/usage", params={"agent_id": writer["id"]}, timeout=10).json()
    today = datetime.now(UTC).date().isoformat()
    assert cli.json("usage", "--agent", "writer", "--since", today, "--until", today) == mine
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert cli.json("usage", "--since", tomorrow) == {"items": []}
    assert "no usage recorded" in cli("usage", "--since", tomorrow).stderr

    table = cli("usage", "--group-by", "agent_day", columns=80).stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "…" not in table and "writer" in table and today in table and writer["id"] not in table
    total = mine["items"][0]["total_tokens"]
    assert re.search(rf"^writer\s+{today}\s+1\s+[\d,]+\s+[\d,]+\s+{total:,}$", table, re.M), table
    assert "Usage" in cli("usage", "--since", "yesterday", code=2).output


def test_submit_watch_shows_the_output_under_the_bar_as_it_streams_then_prints_the_result(cli, writer):  # type: ignore[no-untyped-def]
    code, screen = cli.terminal(
        "submit",
        "writer",
        "--input",
        "the quick brown fox jumps over the lazy dog " * 3,
        "--simulate",
        "latency_ms=2500",
        "--simulate",
        "chunks=25",
        "--watch",
        columns=100,
    )
    assert code == 0, screen
    frames = [ANSI.sub("", f).replace("\r", "") for f in screen.split(ERASE_LINE)]
    running = [f for f in frames if "RUNNING" in f and "[simulated-1] the quick" in f]
    assert running, f"no frame showed the output under the bar while it ran: {screen!r}"
    grown = {f.split("[simulated-1]", 1)[1].strip() for f in running}
    assert len(grown) >= 2, "the output under the bar did not grow while it streamed"
    last_frame = frames[-1]
    assert (
        "✓ COMPLETED" in last_frame and last_frame.count("[simulated-1] the quick") == 1
    )  # the result, once


def test_submit_delay_seconds_or_start_at_creates_a_scheduled_execution_that_show_reports(cli, writer):  # type: ignore[no-untyped-def]
    before = datetime.now(UTC)
    later = cli("submit", "writer", "--input", "x", "--delay-seconds", "3600").stdout.strip()
    row = cli.execution(later)
    due = datetime.fromisoformat(row["scheduled_at"])
    assert row["state"] == "PENDING" and 3590 <= (due - before).total_seconds() <= 3610, row
    assert f"scheduled  {row['scheduled_at'].replace('T', ' ')[:19]}" in cli("show", later).stdout
    when = (before + timedelta(days=2)).replace(microsecond=0, tzinfo=None)  # naive: read as UTC
    at = cli("submit", "writer", "--input", "x", "--start-at", when.isoformat()).stdout.strip()
    assert datetime.fromisoformat(cli.execution(at)["scheduled_at"]) == when.replace(tzinfo=UTC)
    both = cli("submit", "writer", "--delay-seconds", "5", "--start-at", when.isoformat(), code=2)
    assert "not both" in both.stderr
