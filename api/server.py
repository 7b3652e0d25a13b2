"""The gunicorn worker of the web process: gthread, answering its own errors as problem+json
and ending open event streams cleanly on shutdown.

gunicorn answers a request it cannot parse (request line over `limit_request_line`, more
than `limit_request_fields` headers or one over `limit_request_field_size`, a malformed
line or header) itself, before the app sees it, with an HTML page. Every answer of this
API is problem+json, so `ThreadWorker.handle_error` writes one instead, with the same
status code and never a traceback.

On a graceful stop (SIGTERM from the master, also what the master sends its workers on
its own SIGTERM) and on a quick one (SIGINT/SIGQUIT) the worker tells the SSE streams of
its process to send `event: reconnect` and end (`api.sse.begin_shutdown`), so clients
reconnect with Last-Event-ID instead of being cut at the graceful timeout.

Used by the Procfile's web line: `gunicorn --worker-class api.server.ThreadWorker ...`.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime
from types import FrameType
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import gthread

from api import sse
from api.problems import PROBLEM_JSON

# A stream notices a shutdown within sse.SHUTDOWN_CHECK_SECONDS; on a quick stop the worker
# waits this long for the streams' last frames before it exits.
QUICK_STOP_WAIT_SECONDS = 2.0

# gunicorn's own refusals: (status, title), most specific class first (as gunicorn decides them).
REFUSALS: tuple[tuple[type[BaseException], int, str], ...] = (
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (http_errors.LimitRequestLine, 400, "Bad Request"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden"),
    (http_errors.ConfigurationProblem, 500, "Internal Server Error"),
    (http_errors.ParseException, 400, "Bad Request"),
)
_DETAILS = {
    http_errors.LimitRequestHeaders: "the request headers are too many or one is too large",
    http_errors.LimitRequestLine: "the request line (method, path and query) is too long",
}
_HEADERS = (
    ("Connection", "close"),
    ("Content-Type", PROBLEM_JSON),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


def refusal(exc: BaseException) -> tuple[int, str, str]:
    """The status, title and detail of gunicorn's answer to `exc` (500 without details if unknown)."""
    for cls, status, title in REFUSALS:
        if isinstance(exc, cls):
            if status >= 500:
                return status, title, "the server could not handle this request"
            detail = next((d for c, d in _DETAILS.items() if isinstance(exc, c)), "the request is malformed")
            return status, title, f"{detail}: {str(exc)[:200]}"
    return 500, "Internal Server Error", "an internal error occurred; it has been logged"


def problem_bytes(status: int, title: str, detail: str) -> bytes:
    """A complete HTTP/1.1 problem+json answer that closes the connection."""
    body = json.dumps(
        {
            "type": f"https://agentexec.dev/problems/{status}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    ).encode()
    head = f"HTTP/1.1 {status} {title}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in _HEADERS)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker with problem+json errors and a clean end for event streams."""

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn refused (or failed on) with problem+json, same status."""
        started = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        status, title, detail = refusal(exc)
        if status >= 500:
            self.log.exception("Error handling request")
        else:
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        if req is None and hasattr(exc, "req"):
            req = exc.req  # an invalid header: the request line was read, for the access log
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {title}"
            resp.response_length = len(detail)
            self.log.access(resp, req, environ, datetime.now() - started)
        try:
            util.write_nonblock(client, problem_bytes(status, title, detail))
        except Exception:
            self.log.debug("Failed to send error message.")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: a graceful stop; open streams send `reconnect` and end within a second."""
        sse.begin_shutdown()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT/SIGQUIT: a quick stop; open streams still get their `reconnect` frame first."""
        sse.begin_shutdown()
        sse.wait_for_streams_to_end(QUICK_STOP_WAIT_SECONDS)
        super().handle_quit(sig, frame)
