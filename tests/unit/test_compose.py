"""docker-compose.yml is valid for Docker Compose and runs the whole stack the way the Procfile does.

Compose validates without a Docker engine. The test uses the `docker compose` plugin
when it is there and the standalone `docker-compose` otherwise (Debian's package
`docker-compose`, installed by .ci/run); it fails, never skips, when neither exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

APP_SERVICES = ("migrate", "web", "worker", "beat", "flower")
SHARED_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "DEFAULT_QUEUE",
    "MODEL_PROVIDER",
    "AUTH_ENABLED",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "HEARTBEAT_INTERVAL",
    "WORKER_POOL",
    "DATABASE_PREPARED_STATEMENTS",
)


def compose_command() -> list[str]:
    """`docker compose` when the plugin works, else `docker-compose`; fails the test when neither does."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "Docker Compose is missing: neither `docker compose` nor `docker-compose` runs here "
        "(apt-get install -y --no-install-recommends docker-compose)"
    )


def compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run compose on the project's file with a minimal environment (no engine needed)."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), *args],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The resolved compose configuration."""
    proc = compose("config", FLOWER_BASIC_AUTH="ops:secret")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_docker_compose_config_passes_quietly_when_flower_credentials_are_given():
    proc = compose("config", "-q", FLOWER_BASIC_AUTH="ops:secret")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_docker_compose_refuses_the_stack_without_flower_credentials():
    proc = compose("config", "-q")
    assert proc.returncode != 0
    assert "FLOWER_BASIC_AUTH" in proc.stderr


def test_the_stack_has_postgres_redis_a_one_shot_migrate_and_the_four_processes(config):  # type: ignore[no-untyped-def]
    services = {name: s for name, s in config["services"].items() if not s.get("profiles")}
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat", "flower"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    assert "celery -A workers worker -E" in " ".join(services["worker"]["command"])
    assert "celery -A workers beat" in " ".join(services["beat"]["command"])
    assert "--basic-auth" in " ".join(services["flower"]["command"])


def test_every_long_running_service_has_a_health_check(config):  # type: ignore[no-untyped-def]
    for name, service in config["services"].items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_all_app_services_share_one_image_and_the_same_environment(config):  # type: ignore[no-untyped-def]
    services = config["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert images == {"agentexec:latest"}
    reference = {k: services["web"]["environment"][k] for k in SHARED_ENV}
    assert reference["LOG_FORMAT"] == "json"
    assert "@postgres:5432/" in reference["DATABASE_URL"] and "redis:6379" in reference["REDIS_URL"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert {k: env.get(k) for k in SHARED_ENV} == reference, name


def test_flower_is_published_on_loopback_only(config):  # type: ignore[no-untyped-def]
    ports = config["services"]["flower"]["ports"]
    rendered = [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p.get('published')}" for p in ports]
    assert rendered and all(p.startswith("127.0.0.1:") for p in rendered)


def test_the_pgbouncer_profile_validates_and_puts_every_process_but_migrate_behind_it():
    env = {
        "FLOWER_BASIC_AUTH": "ops:secret",
        "DATABASE_HOST": "pgbouncer",
        "DATABASE_PREPARED_STATEMENTS": "false",
    }
    assert compose("--profile", "pgbouncer", "config", "-q", **env).returncode == 0
    proc = compose("--profile", "pgbouncer", "config", **env)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    bouncer = services["pgbouncer"]
    assert bouncer["profiles"] == ["pgbouncer"]
    assert bouncer["environment"]["POOL_MODE"] == "transaction"
    assert "@postgres:5432/" in bouncer["environment"]["DATABASE_URL"]
    assert bouncer["healthcheck"]["test"]
    for name in ("web", "worker", "beat", "flower"):
        env_of = services[name]["environment"]
        assert "@pgbouncer:5432/" in env_of["DATABASE_URL"], name
        assert env_of["DATABASE_PREPARED_STATEMENTS"] == "false", name
    assert "@postgres:5432/" in services["migrate"]["environment"]["DATABASE_URL"]


def test_pgbouncer_is_only_an_option(config):  # type: ignore[no-untyped-def]
    services = config["services"]
    # Compose v2 leaves out a service of an inactive profile; v1 lists it with its profile.
    assert services.get("pgbouncer", {"profiles": ["pgbouncer"]})["profiles"] == ["pgbouncer"]
    assert all("pgbouncer" not in s.get("depends_on", {}) for s in services.values())
    assert "@postgres:5432/" in services["web"]["environment"]["DATABASE_URL"]
    assert services["web"]["environment"]["DATABASE_PREPARED_STATEMENTS"] == "true"
