"""The benchmark's own world: a fresh database, its own queues and Redis db, its own processes.

`configure()` must run before anything imports `app` (settings are read once). `BenchEnv`
creates and migrates `agentexec_bench_<pid>`, starts workers and gunicorn from the
Procfile's command lines on free ports, and stops all of them (by process group) and
drops the database at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
# The PostgreSQL server DATABASE_URL names (under `make bench`, the embedded one of
# var/services.env when scripts/services.sh had to start one), else the default's; the run's
# database is made there, as the tests do.
# (app's defaults, not imported from app.config: configure() must run before app is imported.)
_SERVER = make_url(os.environ.get("DATABASE_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/agentexec")
PG_ADMIN_URL = os.environ.get(
    "BENCH_PG_ADMIN_URL",
    _SERVER.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False),
)
PG_HOST, PG_PORT = _SERVER.host or "127.0.0.1", _SERVER.port or 5432
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "11"))
RUN_ID = str(os.getpid())
DB_NAME = f"agentexec_bench_{RUN_ID}"
QUEUE = f"bench-{RUN_ID}"
RAW_QUEUE = f"bench-raw-{RUN_ID}"
SINK_QUEUE = f"bench-sink-{RUN_ID}"  # HTTP benchmarks send here; nobody consumes it
LOG_DIR = Path(f"/tmp/agentexec-bench-{RUN_ID}")


def database_url(port: int = PG_PORT, db: str = DB_NAME, host: str = PG_HOST) -> str:
    """The SQLAlchemy URL of the benchmark database (optionally through another port)."""
    url = _SERVER.set(drivername="postgresql+psycopg", host=host, port=port, database=db)
    return url.update_query_dict({"sslmode": "disable", "gssencmode": "disable"}).render_as_string(
        hide_password=False
    )


# The shared Redis (when this run cannot start its own): REDIS_URL's server, db BENCH_REDIS_DB.
_SHARED_REDIS = make_url(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
_redis = {
    "url": os.environ.get("BENCH_REDIS_URL")
    or _SHARED_REDIS.set(database=str(REDIS_DB)).render_as_string(hide_password=False)
}


def redis_url() -> str:
    """The Redis of this run: its own redis-server when one could be started, else the shared one.

    Pub/sub channels are server-wide (db indexes do not separate them), so on the shared
    Redis the benchmark's events would reach other people's subscribers and theirs ours.
    """
    return _redis["url"]


def base_env() -> dict[str, str]:
    """Environment of every process of the benchmark (this one and its children)."""
    return {
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url(),
        "CELERY_BROKER_URL": redis_url(),
        "DEFAULT_QUEUE": QUEUE,
        "CELERY_QUEUES": QUEUE,
        "BENCH_RAW_QUEUE": RAW_QUEUE,
        "BENCH_SINK_QUEUE": SINK_QUEUE,
        "LOG_LEVEL": "WARNING",
        "AUTH_ENABLED": "false",
        "RATE_LIMIT": "0",
        "PYTHONUNBUFFERED": "1",
    }


def configure() -> None:
    """Point this process at the benchmark's database, Redis db and queues (before importing app)."""
    if "app.config" in sys.modules:
        raise RuntimeError("bench.env.configure() must run before app is imported")
    os.environ.update(base_env())


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def expand(text: str, env: dict[str, str]) -> str:
    """Shell-style ${VAR}, ${VAR:-default} (nested) and ${VAR:?message} expansion."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= text[j] == "}"
                j += 1
            inner = text[i + 2 : j - 1]
            m = re.match(r"(\w+)(?::([-?])(.*))?$", inner, re.S)
            if m is None:
                raise ValueError(f"cannot expand ${{{inner}}}")
            name, op, rest = m.groups()
            value = env.get(name, "")
            if not value and op == "-":
                value = expand(rest, env)
            elif not value and op == "?":
                raise ValueError(f"{name}: {rest}")
            out.append(value)
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def procfile_command(kind: str, env: dict[str, str]) -> list[str]:
    """The Procfile's command line for `kind`, its ${...} expanded from `env`."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            argv = shlex.split(expand(command, env))
            return [sys.executable, "-m", argv[0], *argv[1:]]
    raise LookupError(f"no {kind!r} line in the Procfile")


@dataclass
class Proc:
    """A process the benchmark started (in its own process group) and will stop."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class BenchEnv:
    """Creates the database, starts and stops processes, cleans everything up."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.db_created = False
        LOG_DIR.mkdir(parents=True, exist_ok=True)

    # --------------------------------------------------------------- database

    def start_redis(self) -> None:
        """Run a private redis-server on a free port unless BENCH_REDIS_URL names one."""
        if os.environ.get("BENCH_REDIS_URL") or shutil.which("redis-server") is None:
            return
        port = free_port()
        proc = self.start(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        )
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=0.5).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.popen.poll() is not None:
                    raise RuntimeError(f"redis-server did not start:\n{proc.tail()}") from None
                time.sleep(0.05)
        _redis["url"] = url

    def create_database(self) -> None:
        """CREATE DATABASE agentexec_bench_<pid> and migrate it with alembic, as `make db` does."""
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        self.db_created = True
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=os.environ | base_env(),
            check=True,
            capture_output=True,
        )

    def drop_database(self) -> None:
        """Drop the benchmark database (forcing out leftover connections)."""
        if not self.db_created:
            return
        import psycopg

        from app.db import dispose_all

        dispose_all()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        self.db_created = False

    # -------------------------------------------------------------- processes

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a process in a new session (process group) with its output in LOG_DIR."""
        log = LOG_DIR / f"{name}.log"
        fh = log.open("ab")
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=os.environ | base_env() | (env or {}),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 20.0) -> None:
        """SIGTERM its process group, SIGKILL after `timeout`; only processes we started."""
        if proc.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        else:  # the leader exited; children of its group may still run
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=10)

    def start_worker(
        self,
        name: str,
        *,
        app: str = "workers",
        queue: str = QUEUE,
        concurrency: int | None = None,
        pool: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """A Celery worker from the Procfile's `worker` line; returns once it answers a ping."""
        penv = base_env() | (env or {}) | {"CELERY_QUEUES": queue}
        if concurrency is not None:
            penv["WORKER_CONCURRENCY"] = str(concurrency)
        if pool is not None:
            penv["WORKER_POOL"] = pool
        penv["WORKER_NAME"] = f"bench-{name}-{RUN_ID}"
        argv = procfile_command("worker", penv)
        if app != "workers":
            argv[argv.index("-A") + 1] = app
        if argv[argv.index("-Q") + 1] != queue:
            raise RuntimeError(f"the Procfile's worker line did not expand to queue {queue}: {argv}")
        proc = self.start(name, argv, penv)
        proc.info["node"] = f"{penv['WORKER_NAME']}@{socket.gethostname()}"
        proc.info["argv"] = argv
        self._wait_worker(proc)
        return proc

    def _wait_worker(self, proc: Proc, timeout: float = 60.0) -> None:
        from celery import Celery

        control = Celery(broker=redis_url())
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"worker {proc.name} exited:\n{proc.tail()}")
                if control.control.ping(destination=[proc.info["node"]], timeout=0.5):
                    return
            raise RuntimeError(f"worker {proc.name} did not answer within {timeout} s:\n{proc.tail()}")
        finally:
            control.close()

    def start_web(
        self,
        name: str,
        app_spec: str = "api:create_app()",
        env: dict[str, str] | None = None,
        health: str = "/healthz",
    ) -> Proc:
        """gunicorn from the Procfile's `web` line on a free port; returns once `health` answers."""
        port = free_port()
        penv = base_env() | {"PORT": str(port)} | (env or {})
        argv = procfile_command("web", penv)
        argv[-1] = app_spec
        proc = self.start(name, argv, penv)
        proc.info.update(port=port, url=f"http://127.0.0.1:{port}", argv=argv)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(proc.info["url"] + health, timeout=1) as resp:
                    if resp.status == 200:
                        return proc
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer on {health}:\n{proc.tail()}")

    @contextmanager
    def profiled(self, proc: Proc, name: str) -> Iterator[None]:
        """Sample `proc` (and its children) with py-spy while the block runs, when BENCH_PROFILE is set.

        Writes LOG_DIR/<name>.collapsed (folded stacks) for `python -m bench.profile`.
        """
        spy = py_spy()
        if not profiling():
            yield
            return
        if spy is None:  # python -m bench refuses to start in this case; other callers learn it here
            raise RuntimeError(PY_SPY_MISSING)
        out = LOG_DIR / f"{name}.collapsed"
        spy_log = LOG_DIR / f"{name}.py-spy.log"
        spy_log_fh = spy_log.open("wb")
        rec = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(proc.pid),
                "--subprocesses",
                "--rate",
                "250",
                "--gil",
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(out),
            ],
            stdout=spy_log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        spy_log_fh.close()
        try:
            time.sleep(0.5)
            yield
        finally:
            rec.send_signal(signal.SIGINT)
            try:
                rec.wait(30)
            except subprocess.TimeoutExpired:
                rec.kill()
            if out.exists() and out.stat().st_size:
                print(f"  profile of {proc.name}: {out}", flush=True)
            else:  # e.g. no permission to attach (ptrace); say so rather than leave no file
                print(f"  NO PROFILE of {proc.name}: py-spy wrote nothing, see {spy_log}", flush=True)

    # --------------------------------------------------------------- Redis

    def delete_queues(self) -> None:
        """Delete this run's queues (every priority list) from the benchmark's Redis db."""
        import redis

        client = redis.Redis.from_url(redis_url())
        try:
            keys = [k for k in client.scan_iter(match=f"*{RUN_ID}*", count=1000)]
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def purge(self, queue: str) -> None:
        """Drop the messages waiting in `queue` (all its priority lists)."""
        import redis

        client = redis.Redis.from_url(redis_url())
        try:
            keys = [k for k in client.scan_iter(match=f"{queue}*", count=1000)]
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def close(self, keep_logs: bool = False) -> None:
        """Stop processes, delete queues, drop the database: always, whatever happened.

        The logs directory goes too, unless asked to keep it (failures, profiles).
        """
        errors: list[str] = []
        for step in (self.delete_queues, self.stop_all, self.drop_database):
            try:
                step()
            except Exception as exc:  # keep cleaning up after one failed step
                errors.append(f"{step.__name__}: {exc}")
        if errors:
            print("cleanup problems: " + "; ".join(errors), file=sys.stderr)
        if not keep_logs and not errors and not profiling():
            shutil.rmtree(LOG_DIR, ignore_errors=True)
        else:
            print(f"logs kept in {LOG_DIR}", file=sys.stderr)


PY_SPY_MISSING = (
    f"BENCH_PROFILE is set but py-spy is not installed, so nothing would be profiled: "
    f"pip install py-spy (here: {sys.executable} -m pip install py-spy), or unset BENCH_PROFILE"
)


def profiling() -> bool:
    """Whether BENCH_PROFILE asks for py-spy profiles (set, and not empty or 0)."""
    return os.environ.get("BENCH_PROFILE", "") not in ("", "0")


def py_spy() -> str | None:
    """The py-spy executable: on PATH or beside this Python (the virtualenv's bin); None if absent."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out.append(int(c))
        out.extend(_descendants(int(c)))
    return out


def postgres_backends() -> list[int]:
    """Server process ids of every connection to the benchmark database."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (DB_NAME,)).fetchall()
    return [int(r[0]) for r in rows]


class CpuMeter:
    """CPU seconds used between start() and stop() by named groups of processes."""

    def __init__(self, groups: dict[str, Any]):
        # name -> a pid (with its descendants), or a callable returning pids (each alone)
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}

    def _sample(self, name: str) -> dict[int, float]:
        source = self.groups[name]
        if callable(source):
            return {p: cpu_seconds(p, children=False) for p in source()}
        return {int(source): cpu_seconds(int(source))}

    def start(self) -> None:
        """Remember the CPU time of every process now."""
        self._start = {name: self._sample(name) for name in self.groups}

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since start() (processes that appeared count in full)."""
        self.used = {}
        for name in self.groups:
            before = self._start.get(name, {})
            now = self._sample(name)
            self.used[name] = sum(max(t - before.get(p, 0.0), 0.0) for p, t in now.items())
        return self.used


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User+system CPU seconds used so far by a process (and its descendants)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *(_descendants(pid) if children else [])]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total
