"""The gunicorn workers of the web process: answering their own errors as problem+json,
ending open event streams cleanly on shutdown, and bounding what a slow client can hold.

gunicorn answers a request it cannot parse (request line over `limit_request_line`, more
than `limit_request_fields` headers or one over `limit_request_field_size`, a malformed
line or header) itself, before the app sees it, with an HTML page. Every answer of this
API is problem+json, so `ThreadWorker.handle_error` writes one instead, with the same
status code and never a traceback.

On a graceful stop (SIGTERM from the master, also what the master sends its workers on
its own SIGTERM) and on a quick one (SIGINT/SIGQUIT) the worker tells the SSE streams of
its process to send `event: reconnect` and end (`api.sse.begin_shutdown`), so clients
reconnect with Last-Event-ID instead of being cut at the graceful timeout.

`GeventWorker` (the Procfile's web line: `gunicorn --worker-class api.server.GeventWorker`)
holds each connection in a greenlet, so 10,000 idle event streams cost memory, not threads,
and /healthz answers while they are open. It adds what gunicorn does not bound by itself:

- The request head must arrive within `--keep-alive` seconds (gunicorn's gevent worker
  reads every request head under that timeout, the first one included), else the
  connection is closed.
- The body (up to `PREREAD_LIMIT` bytes, with a Content-Length) is read BEFORE the app runs,
  within `WEB_BODY_TIMEOUT` seconds (10); a body that does not arrive in time is answered 408.
- A request that could not start within `WEB_QUEUE_TIMEOUT` seconds (10) of its connection being
  accepted is answered 503 with Retry-After instead of being run late; and a request with
  side effects whose client already hung up (it gave up waiting) is not run at all, so a
  POST the client never saw answered creates nothing behind its back.
- Every socket gets a send timeout (`SEND_TIMEOUT_SECONDS`; event streams their own,
  SSE_SEND_TIMEOUT_SECONDS), so a client that stops reading cannot pin a greenlet.
- The open-files soft limit is raised to the hard limit at start (each stream is a file
  descriptor); docs/operate.md says how to raise the hard limit.

The app is imported after gevent's monkey-patching (gunicorn loads it in the worker, and
`api` imports `create_app` lazily), so its locks, sockets and psycopg waits cooperate.
`ThreadWorker` (gthread) stays for a deployment that prefers threads
(`--worker-class api.server.ThreadWorker`): one stream holds one thread there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import socket
import time
from datetime import datetime
from types import FrameType
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.body import Body
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import gthread

# Not `api.problems`: importing any app module here would load the app in gunicorn's master,
# before the gevent worker's monkey-patching.
PROBLEM_JSON = "application/problem+json"
BODY_TIMEOUT_SECONDS = 10.0
QUEUE_TIMEOUT_SECONDS = 10.0
SEND_TIMEOUT_SECONDS = 60.0
PREREAD_LIMIT = 2 * 1024 * 1024  # above MAX_REQUEST_BYTES (1 MiB): the app answers 413 itself
RETRY_AFTER_SECONDS = 2
GC_FULL_SECONDS = 300.0
# Methods whose request is not run when its client already hung up (it gave up waiting).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# A shutdown wakes every open stream at once (api/fanout.py); on a quick stop the worker
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


def problem_bytes(
    status: int, title: str, detail: str, extra_headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A complete HTTP/1.1 problem+json answer that closes the connection."""
    body = json.dumps(
        {
            "type": f"https://agentexec.dev/problems/{status}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    ).encode()
    head = f"HTTP/1.1 {status} {title}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in _HEADERS + extra_headers)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


def peer_hung_up(sock: Any) -> bool:
    """True when the client has closed its side (it gave up): a peek reads end-of-file."""
    raw = getattr(sock, "_sock", sock)  # gevent's socket wraps the real, non-blocking one
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's open-files soft limit to its hard limit; (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # A refusal (hard limit RLIM_INFINITY on some systems) leaves the soft limit as it was;
        # the worker logs the limit it got, so an operator sees it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


class ProblemErrors:
    """gunicorn's own refusals answered as problem+json, and event streams ended on shutdown."""

    log: Any
    cfg: Any

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
            self.log_refusal(req, client, addr, status, title, len(detail), started)
        try:
            util.write_nonblock(client, problem_bytes(status, title, detail))
        except Exception:
            self.log.debug("Failed to send error message.")

    def log_refusal(
        self, req: Any, client: Any, addr: Any, status: int, title: str, length: int, started: datetime
    ) -> None:
        """An access-log line for an answer the worker wrote itself."""
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
        resp = Response(req, client, self.cfg)
        resp.status = f"{status} {title}"
        resp.response_length = length
        self.log.access(resp, req, environ, datetime.now() - started)

    def begin_stream_shutdown(self) -> None:
        """Open streams send `reconnect` and end (imported late: the app loads after patching)."""
        from api import sse

        sse.begin_shutdown()

    def wait_for_streams(self, timeout: float) -> None:
        from api import sse

        sse.wait_for_streams_to_end(timeout)


class ThreadWorker(ProblemErrors, gthread.ThreadWorker):
    """gunicorn's gthread worker with problem+json errors and a clean end for event streams."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: a graceful stop; open streams send `reconnect` and end within a second."""
        self.begin_stream_shutdown()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT/SIGQUIT: a quick stop; open streams still get their `reconnect` frame first."""
        self.begin_stream_shutdown()
        self.wait_for_streams(QUICK_STOP_WAIT_SECONDS)
        super().handle_quit(sig, frame)


def _gevent_worker_base() -> type:
    from gunicorn.workers import ggevent

    return ggevent.GeventWorker


class GeventWorker(ProblemErrors, _gevent_worker_base()):  # type: ignore[misc]
    """gunicorn's gevent worker with problem+json errors, bounded reads and a clean stream end."""

    body_timeout = BODY_TIMEOUT_SECONDS
    queue_timeout = QUEUE_TIMEOUT_SECONDS

    def init_process(self) -> None:
        self.body_timeout = float(os.environ.get("WEB_BODY_TIMEOUT", BODY_TIMEOUT_SECONDS))
        self.queue_timeout = float(os.environ.get("WEB_QUEUE_TIMEOUT", QUEUE_TIMEOUT_SECONDS))
        soft, hard = raise_open_files_limit()
        if soft < 16384:
            self.log.warning("open-files limit is %s (hard %s): each open stream holds one", soft, hard)
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, then take the garbage collector's full collections off the hot path.

        With 10,000 streams a process holds millions of objects, and a full collection walks
        them all: 250-330 ms during which every stream and request of the process waits (seen
        in the sse_watchers bench, WEB_GC_LOG=1 logs each collection over 50 ms). What is alive
        after the app loaded is frozen (never walked again); automatic collection is off; a
        greenlet collects the young generations every second (cheap: only new objects) and the
        old one every `WEB_GC_FULL_SECONDS` (300), so cyclic garbage still goes, rarely.
        """
        super().load_wsgi()
        import gc

        import gevent

        gc.collect()
        gc.freeze()
        gc.disable()
        full_every = float(os.environ.get("WEB_GC_FULL_SECONDS", GC_FULL_SECONDS))
        log_slow = bool(os.environ.get("WEB_GC_LOG"))

        def collect() -> None:
            last_full = time.monotonic()
            while True:
                gevent.sleep(1.0)
                full = time.monotonic() - last_full >= full_every
                started = time.perf_counter()
                gc.collect(2 if full else 1)
                took = time.perf_counter() - started
                if full:
                    last_full = time.monotonic()
                if log_slow and took > 0.05:
                    self.log.warning("gc generation %s took %.0f ms", 2 if full else 1, took * 1000)

        gevent.spawn(collect)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """A connection (in a greenlet of its own): note when it was accepted."""
        import gevent

        gevent.getcurrent().agentexec_accepted = time.monotonic()
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        """Refuse what should not run (late, body not arriving, client gone), then the app."""
        import gevent

        sock.settimeout(SEND_TIMEOUT_SECONDS)
        started = datetime.now()
        connection = gevent.getcurrent()
        waited = time.monotonic() - getattr(connection, "agentexec_accepted", time.monotonic())
        connection.agentexec_accepted = time.monotonic()  # the next request on it: its own clock
        if waited > self.queue_timeout:
            return self.refuse(
                req, sock, addr, 503, "Service Unavailable", "the server is overloaded", started
            )
        length = next((int(v) for k, v in req.headers if k == "CONTENT-LENGTH" and v.isdigit()), None)
        if length and length <= PREREAD_LIMIT:
            try:
                with gevent.Timeout(self.body_timeout):
                    data = req.body.read()
            except gevent.Timeout:
                detail = f"the request body did not arrive within {self.body_timeout:g} s"
                return self.refuse(req, sock, addr, 408, "Request Timeout", detail, started)
            req.body = Body(io.BytesIO(data))
        if req.method in UNSAFE_METHODS and peer_hung_up(sock):
            self.log.warning("Not running %s %s: the client hung up before it started", req.method, req.path)
            raise StopIteration()
        return bool(super().handle_request(listener_name, req, sock, addr))

    def refuse(
        self, req: Any, sock: Any, addr: Any, status: int, title: str, detail: str, started: datetime
    ) -> bool:
        """Write a problem+json answer and close the connection (StopIteration ends its loop)."""
        extra = (("Retry-After", str(RETRY_AFTER_SECONDS)),) if status == 503 else ()
        self.log.warning("Refused %s %s with %s: %s", req.method, req.path, status, detail)
        self.log_refusal(req, sock, addr or ("", -1), status, title, len(detail), started)
        try:
            sock.sendall(problem_bytes(status, title, detail, extra))
        except OSError:
            self.log.debug("Failed to send error message.")
        raise StopIteration()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: a graceful stop; open streams send `reconnect` and end at once."""
        self.begin_stream_shutdown()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT/SIGQUIT: a quick stop; in a greenlet (a signal handler must not block), open
        streams get their `reconnect` frame first, then gunicorn's own quick stop."""
        import gevent
        from gunicorn.workers.base import Worker

        def quit_() -> None:
            self.begin_stream_shutdown()
            self.wait_for_streams(QUICK_STOP_WAIT_SECONDS)
            Worker.handle_quit(self, sig, frame)

        gevent.spawn(quit_)
