"""The API, workers and the reaper through a real PgBouncer in transaction mode, end to end.

PgBouncer (Debian's 1.18, installed by scripts/services.sh) runs on a free port in front
of a fresh database of the e2e cluster, with a server pool much smaller than the
processes' own pools. In transaction mode each transaction may land on another server
connection, so a statement prepared on one does not exist on the next (or a second client
finds its name taken): the processes run with DATABASE_PREPARED_STATEMENTS=false, and
the first test shows that without it the same statements fail
(E2E_PGBOUNCER_PREPARED=true runs the stack of the second with them on, to watch it break).

The stack's own reads (stack.rows) go straight to PostgreSQL; every process under test
(gunicorn, workers, beat) reaches it only through PgBouncer. The connection budget's
startup warning is checked here too, against the cluster directly and through PgBouncer.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import PostgresCluster, Stack, pipeline
from tests.processes import free_port

pytestmark = pytest.mark.e2e

SERVER_POOL = 4  # PostgreSQL connections PgBouncer may open: far fewer than the processes ask for


class PgBouncer:
    """A private pgbouncer (transaction pooling, trust auth) in front of one PostgreSQL cluster."""

    def __init__(self, workdir: Path, cluster: PostgresCluster):
        self.port = free_port()
        self.dir = workdir / f"pgbouncer-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgBouncer:
        """Write its configuration and start it in the foreground; wait until it answers."""
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            pytest.fail("pgbouncer is missing (scripts/services.sh installs it: apt-get install pgbouncer)")
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.cluster.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL}\nmax_client_conn = 500\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        argv = [binary, str(ini)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
            for path in self.dir.iterdir():
                shutil.chown(path, "postgres", "postgres")
            argv[1:1] = ["-u", "postgres"]
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited:\n{self.log()}")
            try:
                with psycopg.connect(self.url("postgres", "postgresql"), connect_timeout=1) as conn:
                    return conn.execute("SELECT 1").fetchone() == (1,)
            except psycopg.OperationalError:
                return False

        wait_for(answers, timeout=15, interval=0.1, what=f"pgbouncer on {self.port}")
        return self

    def log(self) -> str:
        return "\n".join(
            (self.dir / name).read_text(errors="replace")[-4000:]
            for name in ("stdout.log", "pgbouncer.log")
            if (self.dir / name).exists()
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def pgbouncer(pg_cluster: PostgresCluster, e2e_workdir: Path) -> Iterator[PgBouncer]:
    """One pgbouncer for this module, stopped even when a test fails."""
    bouncer = PgBouncer(e2e_workdir, pg_cluster)
    try:
        yield bouncer.start()
    finally:
        bouncer.stop()


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-statements-on", "prepared-statements-off"])
def test_two_pooled_connections_through_pgbouncer_collide_only_with_prepared_statements_on(
    prepared: bool, pgbouncer: PgBouncer, new_database: Any
) -> None:
    from app.db import get_engine
    from app.execution.writer import _run

    url = pgbouncer.url(_database(new_database()))
    engine = get_engine(url, pool_size=2, max_overflow=0, prepared_statements=prepared)
    failures: list[str] = []
    try:
        with engine.connect() as a, engine.connect() as b:
            for conn in (a, b):  # autocommit: every statement may go to another server connection
                conn.execution_options(isolation_level="AUTOCOMMIT")
            for i in range(8):  # the writer prepares at once; SQLAlchemy's statements after 5 runs
                for conn in (a, b):
                    try:
                        _run(conn, "SELECT 1 WHERE %(i)s::int < 0", {"i": i})
                        conn.execute(text("SELECT :i"), {"i": i}).scalar_one()
                    except (psycopg.Error, DBAPIError) as exc:
                        failures.append(str(exc).splitlines()[0])
    finally:
        engine.dispose()
    if prepared:
        assert any("prepared statement" in f for f in failures), failures
    else:
        assert failures == []


@pytest.mark.timeout(30)
def test_a_process_whose_pool_alone_could_take_every_postgres_connection_warns_at_first_connect(
    pg_cluster: PostgresCluster, pgbouncer: PgBouncer, new_database: Any
) -> None:
    from structlog.testing import capture_logs

    from app.db import get_engine

    database = _database(new_database())
    direct = pg_cluster.url(database)  # max_connections 300, 3 reserved: 297 for the app
    engines = {
        "fits": get_engine(direct, pool_size=10, max_overflow=20),
        "too big": get_engine(direct + "?application_name=big", pool_size=200, max_overflow=97),
        "behind pgbouncer": get_engine(pgbouncer.url(database), 200, 97, prepared_statements=False),
    }
    warned: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, engine in engines.items():
            with capture_logs() as logs:
                for _ in range(2):
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
            warned[name] = [e for e in logs if e["log_level"] == "warning"]
    finally:
        for engine in engines.values():
            engine.dispose()
    assert warned["fits"] == [] and warned["behind pgbouncer"] == []
    [warning] = warned["too big"]
    assert warning["process_max_connections"] == 297 and warning["postgres_available_connections"] == 297


@pytest.fixture(scope="module")
def stack(pgbouncer: PgBouncer, new_database: Any, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    """A database reached by the processes only through pgbouncer, prepared statements off."""
    direct = new_database()
    s = open_stack(
        direct + "?application_name=e2e-direct",
        redis_server.url,
        extra_env={
            "DATABASE_URL": pgbouncer.url(_database(direct)),
            "DATABASE_PREPARED_STATEMENTS": os.environ.get("E2E_PGBOUNCER_PREPARED", "false"),
        },
    )
    try:
        yield s
    finally:
        close_stack(s)


class ServerConnections:
    """Samples how many PostgreSQL connections pgbouncer holds for a database (the peak)."""

    def __init__(self, cluster: PostgresCluster, database: str):
        self.cluster, self.database = cluster, database
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with psycopg.connect(self.cluster.url(driver="postgresql"), autocommit=True) as conn:
            while not self._stop.wait(0.02):
                (n,) = conn.execute(
                    # Client backends only: an autovacuum worker on the database is no pgbouncer
                    # connection (one was counted once, the peak read 5 with a pool of 4).
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND backend_type = 'client backend' "
                    "AND application_name IS DISTINCT FROM 'e2e-direct'",
                    (self.database,),
                ).fetchone() or (0,)
                self.peak = max(self.peak, int(n))

    def __enter__(self) -> ServerConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def standard(latency_ms: int) -> dict[str, Any]:
    return {
        "type": "standard",
        "input": f"e2e {uuid.uuid4().hex[:8]}",
        "simulate": {"latency_ms": latency_ms},
    }


@pytest.mark.timeout(180)
def test_api_workers_and_reaper_run_everything_through_pgbouncer_in_transaction_mode(
    stack: Stack, pgbouncer: PgBouncer, pg_cluster: PostgresCluster
) -> None:
    database = _database(stack.database_url)
    _, base = stack.start_api()
    api = httpx.Client(base_url=base, timeout=10)
    first = stack.start_worker("pgb-w1", concurrency=16)

    def post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = api.post(path, json=body or {})
        assert answer.status_code in (200, 201, 202), (
            f"{path}: {answer.status_code} {answer.text}\n{stack.logs()}"
        )
        return answer.json()  # type: ignore[no-any-return]

    agent = post("/v1/agents", {"name": f"pgb-{uuid.uuid4().hex[:6]}", "system_prompt": "Be brief."})["id"]

    def submit(parameters: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(post("/v1/executions", {"agent_id": agent, "parameters": parameters})["id"])

    with ServerConnections(pg_cluster, database) as server:
        # Forty executions, standard and pipelines, through the API and a worker.
        ids = [submit(standard(20)) for _ in range(30)] + [submit(pipeline(3, 20)) for _ in range(10)]
        rows = stack.wait_states(ids, timeout=60, what="forty executions to finish")
        assert {r.state for r in rows.values()} == {"COMPLETED"}, stack.logs()
        listed = api.get("/v1/executions", params={"state": "COMPLETED", "page_size": 5})
        assert listed.status_code == 200 and listed.json()["total"] == 40, listed.text

        # A cancel reaches the running worker.
        long = submit(standard(60_000))
        stack.wait_states([long], {"RUNNING"}, timeout=20, what="the long execution to be claimed")
        assert post(f"/v1/executions/{long}/cancel", {"reason": "e2e: through pgbouncer"})["state"] in (
            "CANCELLING",
            "CANCELLED",
        )
        stack.wait_states([long], {"CANCELLED"}, timeout=20, what="the cancel to take effect")

        # The reaper (beat -> a worker) recovers the executions of a killed worker.
        held = [submit(standard(3_000)) for _ in range(3)]
        wait_for(
            lambda: all(
                r.state == "RUNNING" and r.progress_message == "Generate" for r in stack.rows(held).values()
            ),
            timeout=20,
            what="three executions in their model call",
        )
        first.kill9()
        stack.start_beat()
        stack.start_worker("pgb-w2", concurrency=16)
        rows = stack.wait_states(held, timeout=60, what="the reaper to recover the killed worker's runs")
        assert {r.state for r in rows.values()} == {"COMPLETED"}, stack.logs()
        assert all(r.attempt == 2 for r in rows.values())
        for eid in held:
            history = api.get(f"/v1/executions/{eid}/history", params={"limit": 20}).json()["items"]
            assert any("worker lost" in (h["reason"] or "") for h in history), history
        passes = re.search(r"^agentexec_reaper_passes_total (\S+)$", api.get("/metrics").text, re.M)
        assert passes and float(passes.group(1)) > 0, "no reaper pass recorded"

    logs = stack.logs(10_000)
    assert "prepared statement" not in logs, logs
    assert "unsupported startup parameter" not in pgbouncer.log(), pgbouncer.log()
    assert 0 < server.peak <= SERVER_POOL, f"PostgreSQL saw {server.peak} connections from pgbouncer"
    print(f"[e2e figures] pgbouncer: executions=44 server_connections_peak={server.peak} pool={SERVER_POOL}")
