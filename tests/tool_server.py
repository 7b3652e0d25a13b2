"""A local http tool for the agent tests: answers the argument `q` reversed, recording every call."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A client tool (the caller answers it: REQUIRES_ACTION), for tests that only need one to ask.
LOOKUP = {
    "name": "lookup",
    "description": "Look a word up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    "kind": "client",
}


class ToolServer:
    """A local http tool: answers 503 `fail_first` times, then the argument `q` reversed.

    `requests` holds each call's headers (lower-cased names) and raw body."""

    def __init__(self, fail_first: int = 0, path: str = "/tool"):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if len(server.requests) <= server.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = json.loads(body)["arguments"]["q"][::-1].encode()
                self.send_response(200)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                """Quiet: a failing test shows `requests`, not one stderr line per call."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def calls(self) -> list[tuple[str | None, dict[str, Any]]]:
        """Each call's Idempotency-Key and JSON body, in order."""
        return [(headers.get("idempotency-key"), json.loads(body)) for headers, body in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
