"""End-to-end harness: private services, real worker/beat/API processes, and audits of the runs.

Everything a destructive test touches is its own: a redis-server on a free port, a
PostgreSQL cluster created with initdb in a temp dir (run as user postgres), and
worker, beat and gunicorn processes started the way the Procfile starts them, each
in its own process group with a log file. The in-process ExecutionService submits
and controls executions exactly as the API does (Celery-backed BackgroundTaskManager).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
from sqlalchemy import select

from tests.conftest import wait_for
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("E2E_PG_BIN", "/usr/local/bin"))
T = TypeVar("T")

# Short recovery settings: a killed worker is noticed within ~4 s, a lost message re-sent within ~4 s.
RECOVERY_ENV = {
    "HEARTBEAT_INTERVAL": "0.5",
    "LEASE_TIMEOUT": "3",
    "REDELIVER_AFTER": "3",
    "REAPER_INTERVAL": "1",
    "RETRY_BACKOFF_BASE": "0.05",
    "RETRY_BACKOFF_CAP": "0.2",
    "AUTH_ENABLED": "false",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "console",
    "DATABASE_POOL_SIZE": "10",
}
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def percentile(values: list[float], pct: float) -> float:
    """The `pct` percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- services


class RedisServer:
    """A private redis-server on a free port (no persistence), safe to FLUSHALL or kill.

    With `netns` it runs in that network namespace, bound to `bind` there, and also listens
    on a unix socket (`local_url`), through which this process reaches it.
    """

    def __init__(self, workdir: Path, *, bind: str = "127.0.0.1", netns: str | None = None):
        self.port = free_port()
        self.bind = bind
        self.netns = netns
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    @property
    def local_url(self) -> str:
        """redis-py's URL of the unix socket (only with `netns`)."""
        return f"unix://{self.socket}?db=0"

    @property
    def local_broker_url(self) -> str:
        """kombu's URL of the unix socket (only with `netns`)."""
        return f"redis+socket://{self.socket}"

    def client(self) -> redis.Redis:
        """A fresh client of this server."""
        if self.netns is not None:
            return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def start(self) -> RedisServer:
        """Start and wait until it answers PING."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        # In its own namespace it is reached over a private network only: no protected mode there.
        local = (
            ["--unixsocket", str(self.socket), "--unixsocketperm", "700", "--protected-mode", "no"]
            if self.netns
            else []
        )
        self.proc = subprocess.Popen(
            [
                *prefix,
                "redis-server",
                *local,
                "--port",
                str(self.port),
                "--bind",
                self.bind,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = self.client()
        wait_for(lambda: _quietly(client.ping), timeout=10, what=f"redis-server on {self.port}")
        return self

    def flushall(self) -> None:
        """Empty every database of THIS server."""
        self.client().flushall()

    def stop(self) -> None:
        """Kill the server."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class PostgresCluster:
    """A private PostgreSQL 15 cluster (initdb in a temp dir, run as user postgres).

    With `netns` the server runs in that network namespace, listening on `listen` there and
    trusting clients from `trust_network`; this process reaches it through its unix socket.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        listen: str = "127.0.0.1",
        netns: str | None = None,
        trust_network: str | None = None,
    ):
        self.listen = listen
        self.netns = netns
        self.trust_network = trust_network
        self.port = free_port()
        self.dir = workdir / f"pg-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run(
            [*prefix, "runuser", "-u", "postgres", "--", *args], check=check, capture_output=True, timeout=60
        )

    def init(self) -> PostgresCluster:
        """initdb (trust auth, no fsync: a test cluster) and start."""
        self._pg(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        if self.trust_network:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.trust_network} trust\n")
        return self.start()

    def start(self) -> PostgresCluster:
        """pg_ctl start, waiting until it accepts connections."""
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.listen} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (fast: disconnects every client at once)."""
        self._pg(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False
        )

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@{self.listen}:{self.port}/{database}"

    def local_url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """The URL of the cluster's unix socket (reachable from any network namespace)."""
        return f"{driver}://postgres@/{database}?host={self.dir}&port={self.port}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser, autocommit."""
        url = self.local_url(driver="postgresql") if self.netns else self.url(driver="postgresql")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE (optionally from a migrated template); its SQLAlchemy URL."""
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def destroy(self) -> None:
        """Stop immediately and delete the cluster's files."""
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def migrate(database_url: str) -> None:
    """alembic upgrade head, as `make db` does."""
    subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
        env=os.environ | {"DATABASE_URL": database_url},
    )


# --------------------------------------------------------------------------- processes


class Proc:
    """One subprocess in its own process group, its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], logdir: Path, prefix: Iterable[str] = ()
    ):
        self.name = name
        # `prefix` runs the command through another one, e.g. `ip netns exec NAME` (which execs it:
        # the pid, and so the process group, are the command's own)
        self.argv = [*prefix, *argv]
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        """Start it (cwd: the repository root)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.popen = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to this process only."""
        if self.alive():
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """kill -9 the process (and reap it)."""
        if self.popen is not None:
            self.signal(signal.SIGKILL)
            self.popen.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the process holds its work but does nothing (a hung worker)."""
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen process carries on as if nothing happened (a zombie)."""
        self.signal(signal.SIGCONT)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM its process group, then SIGKILL what is left after `grace` seconds."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGCONT)
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """Services, processes and an in-process ExecutionService for one group of tests."""

    database_url: str
    redis_url: str
    workdir: Path
    queue: str = field(default_factory=lambda: f"e2e-{secrets.token_hex(3)}")
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    # How THIS process reaches the services when the subprocesses' URLs are not reachable from
    # here (services in another network namespace): database, redis-py and kombu URLs.
    client_database_url: str | None = None
    client_redis_url: str | None = None
    client_broker_url: str | None = None
    _service: Any = None
    _agent: Any = None
    _celery: Any = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of every subprocess of this stack."""
        return (
            os.environ
            | RECOVERY_ENV
            | {
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "CELERY_BROKER_URL": self.redis_url,
                "DEFAULT_QUEUE": self.queue,
                "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
            }
            | self.extra_env
        )

    # -- processes, as the Procfile starts them

    def start_worker(
        self,
        name: str,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 16,
        wait: bool = True,
        prefix: Iterable[str] = (),
    ) -> Proc:
        """`celery -A workers worker --pool threads` consuming `queues` (default: the stack's queue)."""
        hostname = f"{name}-{secrets.token_hex(2)}@e2e"
        proc = Proc(
            name,
            [
                str(BIN / "celery"),
                "-A",
                "workers",
                "worker",
                "--loglevel",
                "INFO",
                "-E",
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "-Q",
                ",".join(queues or [self.queue]),
                "-n",
                hostname,
            ],
            self.env,
            self.workdir,
            prefix,
        )
        proc.hostname = hostname  # type: ignore[attr-defined]
        self.procs.append(proc.start())
        if wait:
            self.wait_worker_ready(proc)
        return proc

    def wait_worker_ready(self, proc: Proc, timeout: float = 30) -> None:
        """Until the worker answers a remote-control ping (it consumes by then)."""
        hostname = proc.hostname  # type: ignore[attr-defined]

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                return bool(self.celery.control.ping(destination=[hostname], timeout=0.5))
            except Exception:  # this process's broker connection died with a restarted Redis
                return False

        wait_for(ready, timeout=timeout, interval=0.1, what=f"{proc.name} to be ready")

    def start_beat(self, prefix: Iterable[str] = ()) -> Proc:
        """`celery -A workers beat` (sends agentexec.reap every REAPER_INTERVAL)."""
        schedule = self.workdir / f"beat-schedule-{secrets.token_hex(3)}"
        proc = Proc(
            "beat",
            [str(BIN / "celery"), "-A", "workers", "beat", "--loglevel", "INFO", "--schedule", str(schedule)],
            self.env,
            self.workdir,
            prefix,
        )
        self.procs.append(proc.start())
        return proc

    def start_api(self) -> tuple[Proc, str]:
        """gunicorn `api:create_app()` (api.server.GeventWorker, as the Procfile); the process and its URL."""
        port = free_port()
        proc = Proc(
            "web",
            [
                str(BIN / "gunicorn"),
                "--worker-class",
                "api.server.GeventWorker",
                "--workers",
                "1",
                "--bind",
                f"127.0.0.1:{port}",
                "--timeout",
                "0",
                "api:create_app()",
            ],
            self.env,
            self.workdir,
        )
        self.procs.append(proc.start())
        base = f"http://127.0.0.1:{port}"
        import httpx

        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"gunicorn exited:\n{proc.tail()}")
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.1, what="gunicorn to answer /healthz")
        return proc, base

    def close(self) -> None:
        """Stop every process of the stack."""
        for proc in self.procs:
            proc.stop(grace=2)
        if self._service is not None and self._service.control_hub is not None:
            self._service.control_hub.stop()
        if self._celery is not None:
            self._celery.close()

    def logs(self, lines: int = 30) -> str:
        """The last lines of every process log (for failure messages)."""
        return "\n".join(f"--- {p.name} ({p.log_path})\n{p.tail(lines)}" for p in self.procs)

    # -- the in-process client side

    @property
    def celery(self) -> Any:
        """A Celery app configured like the workers' (celeryconfig) but on this stack's broker."""
        if self._celery is None:
            from celery import Celery

            app = Celery(f"agentexec-e2e-{secrets.token_hex(2)}")
            app.config_from_object("celeryconfig")
            # CELERY_BROKER_URL in this process's environment (the shared Redis of the other tests)
            # would win over broker_url; the read/write URLs are taken before it.
            broker = self.client_broker_url or self.redis_url
            app.conf.update(
                broker_url=broker,
                broker_read_url=broker,
                broker_write_url=broker,
                task_default_queue=self.queue,
            )
            self._celery = app
        return self._celery

    @property
    def service(self) -> Any:
        """ExecutionService as the API builds it (Celery-backed BackgroundTaskManager)."""
        if self._service is None:
            from app.bootstrap import build_service
            from app.config import Settings
            from app.db import get_engine, make_session_factory
            from workers.background import BackgroundTaskManager

            database_url = self.client_database_url or self.database_url
            settings = Settings(
                database_url=database_url,
                redis_url=self.client_redis_url or self.redis_url,
                celery_broker_url=self.client_broker_url or self.redis_url,
                default_queue=self.queue,
                heartbeat_interval=0.5,
                lease_timeout=3,
                redeliver_after=3,
                reaper_interval=1,
            )
            self._service = build_service(
                background_tasks=lambda hub: BackgroundTaskManager(self.celery, hub),
                settings=settings,
                session_factory=make_session_factory(get_engine(database_url, 5, 10)),
            )
        return self._service

    @property
    def agent(self) -> Any:
        if self._agent is None:
            from app.schemas import AgentCreate

            self._agent = self.service.create_agent(
                AgentCreate(name=f"e2e-{secrets.token_hex(3)}", system_prompt="Be brief.")
            )
        return self._agent

    def submit(self, parameters: dict[str, Any], **fields: Any) -> Any:
        """Create (and, unless start=False, queue) an execution of the stack's agent."""
        from app.schemas import ExecutionCreate

        execution, _ = self.service.create_execution(
            ExecutionCreate(agent_id=self.agent.id, parameters=parameters, **fields)
        )
        return execution

    def rows(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Any]:
        """The current rows of these executions, in one query."""
        from app.models import Execution

        ids = list(ids)
        with self.service.repository.session_factory() as s:
            return {row.id: row for row in s.scalars(select(Execution).where(Execution.id.in_(ids)))}

    def wait_states(
        self,
        ids: Iterable[uuid.UUID],
        states: Iterable[str] = FINAL,
        timeout: float = 30,
        what: str = "executions to finish",
    ) -> dict[uuid.UUID, Any]:
        """Poll until every execution is in one of `states`; the rows."""
        ids, states = list(ids), set(states)

        def check() -> dict[uuid.UUID, Any] | None:
            rows = self.rows(ids)
            return rows if len(rows) == len(ids) and all(r.state in states for r in rows.values()) else None

        try:
            return wait_for(check, timeout=timeout, interval=0.05, what=what)
        except AssertionError as exc:
            counts = Counter(r.state for r in self.rows(ids).values())
            raise AssertionError(f"{exc}; states now {dict(counts)}\n{self.logs()}") from None


# --------------------------------------------------------------------------- audits


def pipeline(steps: int, latency_ms: int, chunks: int = 10, text: str = "e2e") -> dict[str, Any]:
    """Parameters of a pipeline whose step i uses the output of step i-1."""
    return {
        "type": "pipeline",
        "input": f"{text} {secrets.token_hex(4)}",
        "steps": [
            {"name": f"s{i}", "prompt": "{input}" if i == 1 else f"step {i} after {{steps.s{i - 1}}}"}
            for i in range(1, steps + 1)
        ],
        "simulate": {"latency_ms": latency_ms, "chunks": chunks},
    }


@dataclass
class RunAudit:
    """What the durable record says happened to one execution."""

    execution_id: uuid.UUID
    state: str
    attempt: int
    history: list[tuple[str | None, str, str | None]]
    # (attempt, progress message) of every progress event, in order
    calls: list[tuple[int, str]]
    checkpoints: dict[str, int]
    problems: list[str]

    @property
    def claims(self) -> int:
        return sum(1 for _, to, _ in self.history if to == "RUNNING")

    def calls_of(self, message: str) -> list[int]:
        """The attempts in which the run started the model call named by `message`."""
        return [a for a, m in self.calls if m == message]


def audit(service: Any, execution_id: uuid.UUID) -> RunAudit:
    """Check the history, event log and checkpoints of one execution for double runs.

    Problems: more than one COMPLETED entry; an attempt claimed twice; a model call
    (a `Step <name>`/`Generate` progress event) started twice within one attempt; a
    step started again in an attempt after the one whose checkpoint finished it.
    """
    row = service.get_execution(execution_id)
    history = [(h.from_state, h.to_state, h.reason) for h in service.get_state_history(execution_id, 1000)]
    attempt, calls = 0, []
    for ev in service.get_events(execution_id, 0, 100_000):
        if ev.type == "agent.execution.state_changed" and ev.payload.get("new_state") == "QUEUED":
            attempt += 1
        elif ev.type == "agent.execution.progress":
            message = ev.payload.get("message") or ""
            if message.startswith("Step ") or message == "Generate":
                calls.append((attempt, message))
    checkpoints = {name: int(cp["attempt"]) for name, cp in ((row.context or {}).get("steps") or {}).items()}
    problems: list[str] = []
    completed = sum(1 for _, to, _ in history if to == "COMPLETED")
    if completed > 1:
        problems.append(f"{completed} COMPLETED entries")
    claims_per_attempt: Counter[int] = Counter()
    n = 0
    for _, to, _ in history:
        if to == "QUEUED":
            n += 1
        elif to == "RUNNING":
            claims_per_attempt[n] += 1
    problems += [f"attempt {a} claimed {c} times" for a, c in claims_per_attempt.items() if c > 1]
    problems += [
        f"model call {m!r} started {c} times in attempt {a}" for (a, m), c in Counter(calls).items() if c > 1
    ]
    for name, done_in in checkpoints.items():
        later = [a for a in (x for x, m in calls if m == f"Step {name}") if a > done_in]
        if later:
            problems.append(f"step {name} finished in attempt {done_in} but run again in {later}")
    return RunAudit(execution_id, row.state, row.attempt, history, calls, checkpoints, problems)


def summarize(name: str, audits: list[RunAudit], **extra: Any) -> str:
    """One report line: submitted, completed, lost, run twice (and any extra figures)."""
    submitted = len(audits)
    completed = sum(1 for a in audits if a.state == "COMPLETED")
    twice = sum(1 for a in audits if a.problems)
    bits = [
        f"submitted={submitted}",
        f"completed={completed}",
        f"lost={submitted - completed}",
        f"run_twice={twice}",
    ] + [f"{k}={v}" for k, v in extra.items()]
    line = f"[e2e figures] {name}: " + " ".join(bits)
    print(line)
    return line


def latency_line(name: str, values: list[float]) -> str:
    """p50/p99/max of latencies in seconds, printed for the report."""
    line = (
        f"[e2e figures] {name}: n={len(values)} p50={percentile(values, 50) * 1000:.0f}ms "
        f"p99={percentile(values, 99) * 1000:.0f}ms max={max(values) * 1000:.0f}ms "
        f"mean={statistics.mean(values) * 1000:.0f}ms"
    )
    print(line)
    return line


def _quietly(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception:
        return None


def make_workdir(prefix: str) -> Path:
    """A temp dir for logs and services (kept with E2E_KEEP=1)."""
    path = Path(tempfile.mkdtemp(prefix=f"agentexec-e2e-{prefix}-"))
    path.chmod(0o755)  # PostgreSQL runs as user postgres and must reach its cluster dir
    return path
