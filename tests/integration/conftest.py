"""Fixtures of the HTTP API tests: the app on the real services, a test client, a gunicorn server.

`api_app` is the real app (real PostgreSQL, Redis and the Celery bridge) with the
session's real Celery worker consuming this run's queue, so executions submitted through
it run to completion. `api_server` is gunicorn started as the Procfile starts it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


@pytest.fixture
def api_app(settings, session_factory, celery_worker, clean_db):  # type: ignore[no-untyped-def]
    """The API app on the test database, sending tasks to the running test worker."""
    from api import create_app

    app = create_app(settings=settings, session_factory=session_factory)
    app.config["TESTING"] = True
    yield app
    hub = app.extensions["agentexec.service"].control_hub
    if hub is not None:
        hub.stop()


@pytest.fixture
def api(api_app):  # type: ignore[no-untyped-def]
    """A Flask test client of `api_app`."""
    return api_app.test_client()


@pytest.fixture
def api_agent(api) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An agent created through the API."""
    resp = api.post("/v1/agents", json={"name": "writer", "system_prompt": "Be brief."})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def wait_finished(client: Any, execution_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll GET /v1/executions/{id} (test client or httpx) until the execution is in a final state."""

    def done() -> dict[str, Any] | None:
        resp = client.get(f"/v1/executions/{execution_id}")
        body = resp.get_json() if hasattr(resp, "get_json") else resp.json()
        return body if body["state"] in FINISHED else None

    return wait_for(done, timeout=timeout, what=f"execution {execution_id} to finish")


@dataclass
class Server:
    """A running API server process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on this server."""
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 10.0), **kwargs)


WORKER_CLASS = "api.server.GeventWorker"  # the Procfile's web line


def start_gunicorn(
    log: Path, *, port: int | None = None, workers: int = 2, graceful_timeout: float = 3, **env: str
) -> Server:
    """gunicorn serving `api:create_app()` with the Procfile's worker class, answering /healthz.

    Extra keyword arguments are environment variables of the server.
    """
    port = port or free_port()
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_MULTIPROC_DIR", "AGENTEXEC_METRICS_DIR_OWNER")
    }
    full_env |= {"DATABASE_POOL_SIZE": "4", "DATABASE_MAX_OVERFLOW": "4", "SSE_HEARTBEAT_SECONDS": "0.5"}
    # The code of this tree, whatever checkout an editable install of the package points at.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env |= env
    cmd = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--worker-class",
        WORKER_CLASS,
        "--workers",
        str(workers),
        "--threads",
        "8",
        "--bind",
        f"127.0.0.1:{port}",
        "--timeout",
        "0",
        "--graceful-timeout",
        str(graceful_timeout),
        "--no-control-socket",
        "api:create_app()",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=30, interval=0.1, what="gunicorn to answer /healthz")
    except BaseException:
        stop_process(process)
        raise
    return server


@pytest.fixture(scope="module")
def api_server(request, settings, celery_worker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """gunicorn (api.server.GeventWorker, 2 workers) serving `api:create_app()` as the
    Procfile's web line does; indirect parametrization may add environment variables."""
    env: dict[str, str] = getattr(request, "param", None) or {}
    server = start_gunicorn(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log", **env)
    try:
        yield server
    finally:
        stop_process(server.process)
