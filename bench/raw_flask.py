"""The raw Flask baseline: one endpoint that inserts one row and calls apply_async.

Served by the Procfile's gunicorn line with `bench.raw_flask:create_app()`. It uses a
plain SQLAlchemy engine (library defaults, with the pool sizes of agentexec's settings)
and the raw Celery app, sending to a queue nobody consumes, like agentexec's API does
during the HTTP benchmark.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import create_engine, text

from bench.raw_celery import noop

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_raw (id uuid PRIMARY KEY, payload jsonb NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now())"
)
INSERT = text(
    "INSERT INTO bench_raw (id, payload) VALUES (:id, CAST(:payload AS jsonb)) RETURNING created_at"
)


def create_app() -> Flask:
    """The WSGI app of the raw baseline."""
    engine = create_engine(
        os.environ["DATABASE_URL"],
        pool_size=int(os.environ.get("DATABASE_POOL_SIZE", "10")),
        max_overflow=int(os.environ.get("DATABASE_MAX_OVERFLOW", "20")),
    )
    queue = os.environ.get("BENCH_SINK_QUEUE", "bench-sink")
    app = Flask("bench_raw")

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.post("/raw")
    def raw() -> Any:
        body = request.get_json()
        row_id = uuid.uuid4()
        with engine.begin() as conn:
            params = {"id": row_id, "payload": request.get_data(as_text=True)}
            created_at = conn.execute(INSERT, params).scalar()
        noop.apply_async(queue=queue)
        return jsonify(id=str(row_id), created_at=created_at.isoformat(), body=body), 201

    return app
