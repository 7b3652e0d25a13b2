"""Structured logs: JSON lines in production, readable console lines in development.

`configure_logging(settings)` routes structlog and the standard library (Celery,
gunicorn, SQLAlchemy, ...) through one handler on the root logger, so every line has
the same shape and carries the context bound with `structlog.contextvars`
(execution_id, attempt, agent_id where they apply). Values of keys that can hold
secrets or user text (keys, tokens, prompts, inputs, results) are redacted in every
line above debug level.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from app.config import Settings, get_settings

REDACTED = "[redacted]"
# Keys whose values must never reach an info/warning/error line.
SENSITIVE_KEYS = frozenset(
    {
        "api_key",
        "model_api_key",
        "authorization",
        "password",
        "secret",
        "token",
        "access_token",
        "prompt",
        "system_prompt",
        "input",
        "output",
        "result",
        "messages",
        "text",
        "chunk",
        "content",
        "parameters",
        "steps",
        "context",
    }
)
_SENSITIVE_SUFFIXES = ("_api_key", "_token", "_secret", "_password", "_prompt")
_MARK = "_agentexec_handler"


def _is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return lowered in SENSITIVE_KEYS or lowered.endswith(_SENSITIVE_SUFFIXES)


def redact_sensitive(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the values of sensitive keys, except in debug lines."""
    if method_name == "debug":
        return event_dict
    for key in list(event_dict):
        if key != "event" and _is_sensitive(key):
            event_dict[key] = REDACTED
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a line is emitted (it may be swapped after setup)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_sensitive,
    ]


def bind_log_context(**ids: Any) -> None:
    """Start a unit of work (a request, a task) with a clean log context holding these ids."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        **{k: v if isinstance(v, int | float) else str(v) for k, v in ids.items() if v is not None}
    )


def _renderer(log_format: str, stream: TextIO) -> Any:
    if log_format == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    colors = bool(getattr(stream, "isatty", lambda: False)())
    # Plain tracebacks: structlog's default (rich) prints every frame's local variables, past
    # the key redaction, and takes seconds of CPU under the logging lock that every thread of
    # the process waits on (a worker that stalls so misses its heartbeats).
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)


def configure_logging(
    settings: Settings | None = None, *, level: int | str | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Send structlog and stdlib logs through one root handler (JSON or console); returns it."""
    settings = settings or get_settings()
    log_format = settings.log_format.strip().lower()
    if log_format not in ("json", "console"):
        log_format = "console"
    resolved = level if level is not None else settings.log_level.strip().upper()
    if isinstance(resolved, str):
        resolved = logging.getLevelName(resolved.upper())
        if not isinstance(resolved, int):
            resolved = logging.INFO
    shared = _shared_processors()
    final = [structlog.processors.format_exc_info] if log_format == "json" else []
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            _renderer(log_format, stream or sys.stderr),
        ],
    )
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(resolved)
    # Chatty libraries stay at warning unless debugging.
    for name in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if resolved <= logging.DEBUG else logging.WARNING)
    return handler
