"""Alembic upgrade and downgrade round trip on an empty database."""

from __future__ import annotations

import secrets

import psycopg
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL, migrate


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade_round_trips_on_an_empty_database():
    name = f"agentexec_mig_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    server = make_url(PG_ADMIN_URL).set(database=name)  # the server the run's database is on
    plain = server.render_as_string(hide_password=False)
    url = server.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    try:
        migrate(url)
        assert {
            "agents",
            "executions",
            "execution_state_history",
            "execution_events",
            "api_keys",
            "alembic_version",
        } <= _tables(plain)
        migrate(url, "base", "downgrade")
        assert _tables(plain) == {"alembic_version"}
        migrate(url)
        assert "executions" in _tables(plain)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_models_and_the_migrations_describe_the_same_schema(settings):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "alembic", "check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr
