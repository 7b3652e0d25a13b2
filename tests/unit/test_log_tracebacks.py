"""An error line's traceback in the console format: plain text, without the frames' local variables.

structlog's default console traceback (rich, with every frame's locals) printed a worker's
secrets past the key redaction, and rendering it took seconds of a loaded worker's CPU while
every thread of the process waited on the logging lock: during a PostgreSQL restart a worker
rendering the periodic tasks' tracebacks missed its heartbeats, and the reaper failed its live
runs as "worker lost" (tests/e2e/test_postgres_restart.py).
"""

from __future__ import annotations

import io
import logging

import structlog

from app.config import Settings
from app.logging import configure_logging


def _fail_with_a_secret_in_scope() -> None:
    model_api_key = "sk-local-canary"  # a local of the failing frame
    raise RuntimeError(f"model call failed ({len(model_api_key)})")


def _render(fmt: str) -> str:
    stream = io.StringIO()
    handler = configure_logging(Settings(log_format=fmt), level="INFO", stream=stream)
    try:
        try:
            _fail_with_a_secret_in_scope()
        except RuntimeError:
            structlog.get_logger("agentexec.test").exception("run failed")
            logging.getLogger("celery.app.trace").error("Task raised unexpected", exc_info=True)
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def test_console_tracebacks_are_plain_text_without_local_variables() -> None:
    out = _render("console")
    assert out.count("Traceback (most recent call last):") == 2, out
    assert "RuntimeError: model call failed (15)" in out
    assert "_fail_with_a_secret_in_scope" in out  # the frames are there
    assert "sk-local-canary" not in out  # their locals are not
    assert not any(box in out for box in "│╭╰"), out  # no rich panels


def test_json_tracebacks_carry_no_local_variables_either() -> None:
    out = _render("json")
    assert out.count("Traceback (most recent call last):") == 2, out
    assert "sk-local-canary" not in out
