"""`make run` gives each checkout a stack of its own, found by the CLI, refused twice, stopped cleanly.

Each test copies the checkout (the files git knows, as they are in the working tree, with
their modification times, and `.venv` linked, so `make install` has nothing to do) into a
temporary directory and runs `make run` there on free ports against the e2e tier's private
PostgreSQL and Redis: a second checkout beside the developer's own. Every process whose
working directory lies inside a copy belongs to the test; all of them are killed at the
end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import wait_for
from tests.processes import ROOT, free_port

GRACEFUL = 10.0  # gunicorn's --graceful-timeout in the Procfile: the whole stack is gone by then
MARGIN = 2.0
# Variables of the developer's or the test run's environment that would point the copy elsewhere.
DROPPED = (
    "MAKEFLAGS",
    "MAKELEVEL",
    "MFLAGS",
    "MAKEOVERRIDES",
    "AGENTEXEC_API_URL",
    "AGENTEXEC_API_KEY",
    "PORT",
    "FLOWER_PORT",
    "WEB_BIND",
    "FLOWER_ADDRESS",
    "WORKER_NAME",
    "BEAT_SCHEDULE",
    "CELERY_QUEUES",
    "WORKER_SHUTDOWN_GRACE",
)


def copy_checkout(dest: Path) -> Path:
    """The working tree's files (tracked or not ignored) in `dest`, a git repository of its own."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        src = ROOT / os.fsdecode(name)
        if src.is_file() and not src.is_symlink():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)  # keeps mtimes: the venv's install stamp stays newer
    (dest / ".venv").symlink_to(ROOT / ".venv")
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    up_to_date = subprocess.run(["make", "-q", "install"], cwd=dest, capture_output=True, env=_clean_env())
    assert up_to_date.returncode == 0, "the virtualenv is not up to date: run `make install` first"
    return dest


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DROPPED}


def processes_in(path: Path) -> list[int]:
    """Pids of the processes whose working directory is `path` or below it."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(proc / "cwd")
            if cwd == str(path) or cwd.startswith(f"{path}/"):
                pids.append(int(proc.name))
    return pids


def kill_all_in(path: Path) -> None:
    """SIGKILL every process running in `path` until none is left."""

    def none_left() -> bool:
        for pid in processes_in(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not processes_in(path)

    wait_for(none_left, timeout=20, interval=0.1, what=f"every process in {path} to die")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Checkout:
    """A copy of the checkout with the environment of its stack: ports, database, Redis, queue."""

    def __init__(self, path: Path, database_url: str, redis_url: str):
        self.path = path
        self.database_url = database_url
        self.port, self.flower_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _clean_env() | {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "DEFAULT_QUEUE": f"run-stack-{uuid.uuid4().hex[:6]}",
            "PORT": str(self.port),
            "FLOWER_PORT": str(self.flower_port),
            "AUTH_ENABLED": "true",
            "WEB_WORKERS": "1",
            "WEB_THREADS": "8",
            "WORKER_CONCURRENCY": "8",
            "LOG_LEVEL": "INFO",
        }
        self.runs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    # -- make

    def start(self, *, pipe: bool = False) -> subprocess.Popen[bytes]:
        """`make run` (or `make run | cat`) in a session of its own, as a terminal runs a job."""
        log = self.path.parent / f"{self.path.name}-run{len(self.runs) + 1}.log"
        command = ["bash", "-c", "make run | cat"] if pipe else ["make", "run"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, cwd=self.path, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        self.runs.append(proc)
        self.logs.append(log)
        return proc

    def wait_up(self, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
        """Until the API answers /healthz and Flower listens."""

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"make run exited ({proc.returncode}):\n{self.log_tail()}")
            try:
                healthy = httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
            return healthy and _listening(self.flower_port)

        wait_for(up, timeout=timeout, interval=0.1, what="the stack of `make run` to come up")
        # make run says so itself, once both answer: its URLs were printed before anything started.
        log = self.logs[self.runs.index(proc)]
        wait_for(
            lambda: (
                "ready in " in log.read_text()
                and f": API {self.url}, Flower port {self.flower_port}" in log.read_text()
            ),
            timeout=5,
            interval=0.1,
            what=f"make run to print its ready line:\n{self.log_tail()}",
        )

    def make(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", *args],
            cwd=self.path,
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_gone(self, timeout: float) -> float:
        """Seconds until no process runs in the checkout any more."""
        started = time.monotonic()
        wait_for(
            lambda: not processes_in(self.path),
            timeout=timeout,
            interval=0.05,
            what=f"the stack to be gone; left: {self.describe(processes_in(self.path))}",
        )
        for proc in self.runs:
            proc.wait(5)
        return time.monotonic() - started

    def describe(self, pids: list[int]) -> str:
        names = []
        for pid in pids:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                names.append(f"{pid} {cmdline[:80].decode(errors='replace')}")
        return "; ".join(names) or "none"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
            if log.exists()
        )

    # -- the API and the database

    @property
    def key(self) -> str:
        return (self.path / ".agentexec-dev-key").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=10)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            return conn.execute(query, args).fetchall()

    def states(self, ids: list[str]) -> dict[str, tuple[str, int]]:
        rows = self.sql("SELECT id::text, state, attempt FROM executions WHERE id::text = ANY(%s)", ids)
        return {row[0]: (row[1], row[2]) for row in rows}

    def wait_states(self, ids: list[str], states: set[str], timeout: float) -> dict[str, tuple[str, int]]:
        def check() -> dict[str, tuple[str, int]] | None:
            now = self.states(ids)
            return now if len(now) == len(ids) and all(s in states for s, _ in now.values()) else None

        try:
            return wait_for(check, timeout=timeout, interval=0.1, what=f"{len(ids)} executions in {states}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.states(ids)}\n{self.log_tail()}") from None


@pytest.fixture
def make_checkout(
    tmp_path: Path, new_database: Callable[[], str], redis_server: Any
) -> Iterator[Callable[[], Checkout]]:
    """Checkouts of this test, each with its own database; every process in them killed at the end."""
    made: list[Checkout] = []

    def make() -> Checkout:
        checkout = Checkout(
            copy_checkout(tmp_path / f"checkout{len(made) + 1}"), new_database(), redis_server.url
        )
        made.append(checkout)
        return checkout

    yield make
    for checkout in made:
        kill_all_in(checkout.path)
        for proc in checkout.runs:
            proc.wait(10)


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str], redis_server: Any
) -> Iterator[tuple[Checkout, subprocess.Popen[bytes]]]:
    """One checkout whose `make run` stack serves the tests that only look at it."""
    checkout = Checkout(
        copy_checkout(tmp_path_factory.mktemp("running") / "checkout"), new_database(), redis_server.url
    )
    try:
        proc = checkout.start()
        checkout.wait_up(proc)
        yield checkout, proc
    finally:
        kill_all_in(checkout.path)
        for run in checkout.runs:
            run.wait(10)


def _agentexec(checkout: Checkout, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `agentexec` command, with no --api-url, and the stack's environment minus PORT."""
    base = {k: v for k, v in checkout.env.items() if k != "PORT"} | {"AGENTEXEC_API_KEY": checkout.key}
    return subprocess.run(
        [str(checkout.path / ".venv" / "bin" / "agentexec"), *args],
        cwd=cwd,
        env=base | {"COLUMNS": "200"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(240)
def test_the_cli_without_api_url_talks_to_the_stack_make_run_started_on_a_non_default_port(
    running: tuple[Checkout, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    checkout, _ = running
    assert checkout.port != 8000

    made = _agentexec(checkout, "agents", "create", "found-by-the-cli", cwd=checkout.path / "docs")
    assert made.returncode == 0, (made.stdout, made.stderr, checkout.log_tail())
    assert checkout.sql("SELECT count(*) FROM agents WHERE name = 'found-by-the-cli'") == [(1,)]

    shown = _agentexec(checkout, "--help", cwd=checkout.path)
    assert checkout.url in shown.stdout and "var/api-url" in shown.stdout, shown.stdout

    # The URL make run wrote wins over PORT; AGENTEXEC_API_URL wins over it; outside a checkout, PORT.
    elsewhere = free_port()
    listed = _agentexec(checkout, "agents", "list", cwd=checkout.path, PORT=str(elsewhere))
    assert listed.returncode == 0 and "found-by-the-cli" in listed.stdout, (listed.stdout, listed.stderr)
    dead = _agentexec(
        checkout, "agents", "list", cwd=checkout.path, AGENTEXEC_API_URL=f"http://127.0.0.1:{elsewhere}"
    )
    assert dead.returncode == 1 and f"127.0.0.1:{elsewhere}" in dead.stderr, (dead.stdout, dead.stderr)
    assert "AGENTEXEC_API_URL" in dead.stderr
    outside = _agentexec(checkout, "agents", "list", cwd=tmp_path, PORT=str(checkout.port))
    assert outside.returncode == 0 and "found-by-the-cli" in outside.stdout, (outside.stdout, outside.stderr)


@pytest.mark.timeout(240)
def test_a_second_make_run_is_refused_in_one_line_and_the_first_stack_keeps_serving(
    running: tuple[Checkout, subprocess.Popen[bytes]], make_checkout: Callable[[], Checkout]
) -> None:
    checkout, first = running
    pid = int((checkout.path / "var" / "run.pid").read_text())
    before = set(processes_in(checkout.path))

    started = time.monotonic()
    again = checkout.make("run")
    took = time.monotonic() - started
    lines = [line for line in (again.stdout + again.stderr).splitlines() if line.strip()]
    assert again.returncode != 0 and len(lines) == 1, (again.returncode, lines)
    assert "already running" in lines[0] and checkout.url in lines[0] and f"pid {pid}" in lines[0], lines
    assert took < 5, took
    assert set(processes_in(checkout.path)) <= before  # nothing was started

    # Another checkout on the same PORT is refused too, naming the first one.
    other = make_checkout()
    other.env["PORT"] = str(checkout.port)
    refused = other.make("run")
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
    assert refused.returncode != 0 and len(lines) == 1, (refused.returncode, lines)
    assert str(checkout.path) in lines[0] and f"pid {pid}" in lines[0], lines
    assert not processes_in(other.path)

    # The first stack still serves and runs executions.
    assert first.poll() is None
    with checkout.client() as api:
        agent = api.post("/v1/agents", json={"name": "still-serving"}).json()["id"]
        created = api.post("/v1/executions", json={"agent_id": agent, "parameters": {"input": "hello"}})
        assert created.status_code == 201, created.text
    done = checkout.wait_states([created.json()["id"]], {"COMPLETED", "FAILED"}, timeout=30)
    assert [state for state, _ in done.values()] == ["COMPLETED"]


@pytest.mark.timeout(240)
def test_make_stop_stops_the_stack_of_this_checkout_within_the_graceful_timeout(
    running: tuple[Checkout, subprocess.Popen[bytes]],
) -> None:
    checkout, first = running
    started = time.monotonic()
    stopped = checkout.make("stop", timeout=GRACEFUL + 30)
    assert stopped.returncode == 0, (stopped.stdout, stopped.stderr)
    checkout.wait_gone(timeout=GRACEFUL + MARGIN)
    assert time.monotonic() - started < GRACEFUL + MARGIN
    assert first.returncode == 0, checkout.log_tail()
    again = checkout.make("stop")
    assert again.returncode == 0 and "not running" in again.stdout, (again.stdout, again.stderr)


def _submit_slow_work(checkout: Checkout) -> list[str]:
    """Three single model calls of 8 s (handed back mid-call when the worker's 2 s grace is over)
    and three pipelines of three 1.5 s steps (handed back at the next step boundary)."""
    single = {"input": "one long call", "simulate": {"latency_ms": 8000, "chunks": 80}}
    steps = [
        {"name": f"s{i}", "prompt": "{input}" if i == 1 else f"after {{steps.s{i - 1}}}"} for i in (1, 2, 3)
    ]
    staged = {"type": "pipeline", "input": "three steps", "steps": steps, "simulate": {"latency_ms": 1500}}
    with checkout.client() as api:
        agent = api.post("/v1/agents", json={"name": f"slow-{uuid.uuid4().hex[:6]}"})
        assert agent.status_code == 201, agent.text
        ids = []
        for parameters in [single] * 3 + [staged] * 3:
            created = api.post(
                "/v1/executions", json={"agent_id": agent.json()["id"], "parameters": parameters}
            )
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
    return ids


def _interrupt(checkout: Checkout, run: subprocess.Popen[bytes], ids: list[str]) -> float:
    """Ctrl-C as a terminal sends it (SIGINT to the whole foreground job); the seconds until every
    process of the checkout is gone. The running executions must be handed back by then."""
    checkout.wait_states(ids, {"RUNNING"}, timeout=30)
    os.killpg(run.pid, signal.SIGINT)
    took = checkout.wait_gone(timeout=GRACEFUL + 20)
    assert took < GRACEFUL + MARGIN, (took, checkout.log_tail())
    # Handed back at once (QUEUED, next attempt), not left RUNNING for the reaper (30 s lease).
    after_stop = checkout.states(ids)
    assert all(state == "QUEUED" and attempt == 2 for state, attempt in after_stop.values()), (
        after_stop,
        checkout.log_tail(),
    )
    return took


def _assert_finished_once_on_attempt_2(checkout: Checkout, ids: list[str]) -> None:
    final = checkout.wait_states(ids, {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}, timeout=30)
    assert all(state == "COMPLETED" and attempt == 2 for state, attempt in final.values()), final
    counts = checkout.sql(
        "SELECT execution_id::text, count(*) FILTER (WHERE to_state = 'COMPLETED'), count(*) FILTER"
        " (WHERE from_state = 'RUNNING' AND to_state = 'QUEUED' AND reason LIKE '%%handed back%%')"
        " FROM execution_state_history WHERE execution_id::text = ANY(%s) GROUP BY 1",
        ids,
    )
    assert sorted(counts) == sorted((i, 1, 1) for i in ids), counts
    # Progress never went back across the hand-back: attempt 2 starts where attempt 1 got to.
    progress = checkout.sql(
        "SELECT execution_id::text, array_agg((payload->>'percentage')::float ORDER BY id)"
        " FROM execution_events WHERE type = 'agent.execution.progress' AND execution_id::text = ANY(%s)"
        " GROUP BY 1",
        ids,
    )
    assert len(progress) == len(ids), progress
    assert all(p == sorted(p) and p[-1] == 100 for _, p in progress), progress


@pytest.mark.timeout(240)
def test_ctrl_c_in_a_terminal_or_under_a_pipe_stops_the_stack_in_time_and_running_work_finishes_once_after(
    make_checkout: Callable[[], Checkout], capsys: pytest.CaptureFixture[str]
) -> None:
    checkout = make_checkout()
    first = checkout.start()  # `make run`
    checkout.wait_up(first)
    in_terminal = _submit_slow_work(checkout)
    stopped_in_terminal = _interrupt(checkout, first, in_terminal)

    piped = checkout.start(pipe=True)  # `make run | cat`: Ctrl-C kills cat too
    checkout.wait_up(piped)
    _assert_finished_once_on_attempt_2(checkout, in_terminal)
    under_pipe = _submit_slow_work(checkout)
    stopped_under_pipe = _interrupt(checkout, piped, under_pipe)

    last = checkout.start()
    checkout.wait_up(last)
    _assert_finished_once_on_attempt_2(checkout, under_pipe)
    stopped = checkout.make("stop", timeout=GRACEFUL + 30)
    assert stopped.returncode == 0, (stopped.stdout, stopped.stderr)
    checkout.wait_gone(timeout=GRACEFUL + MARGIN)
    ready = re.findall(r"\| ready in ([\d.]+) s", " ".join(log.read_text() for log in checkout.logs))
    with capsys.disabled():
        print(
            f"\n[make run] ready in {' / '.join(ready)} s after its processes started;"
            f" Ctrl-C, 6 executions running: every process gone in {stopped_in_terminal:.1f} s,"
            f" {stopped_under_pipe:.1f} s under a pipe"
        )
