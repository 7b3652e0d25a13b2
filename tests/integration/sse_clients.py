"""Raw-socket SSE clients for tests that hold many streams (or slow ones) at once.

httpx holds a thread (or a task) and a pool per stream; a thousand streams are a thousand
plain sockets here, read with one selector.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from collections.abc import Callable, Iterable

EVENT_ID = re.compile(rb"^id: (\S+)$", re.M)


class RawStream:
    """One GET .../events with Accept: text/event-stream on its own socket; bytes as they come."""

    def __init__(
        self, port: int, path: str, headers: dict[str, str] | None = None, *, rcvbuf: int | None = None
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window the server sees
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.data = b""
        self.closed = False

    @property
    def status(self) -> int | None:
        """The status code once the head has arrived."""
        head = self.data.split(b"\r\n", 1)[0]
        return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") and b"\r\n" in self.data else None

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def event_ids(self) -> list[str]:
        """The ids of the complete event frames received so far."""
        complete = self.body.rpartition(b"\n\n")[0]
        return [m.decode() for m in EVENT_ID.findall(complete)]

    def read_some(self) -> None:
        """Read what is there without blocking long (EOF or a reset marks the stream closed)."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            self.data += chunk
        else:
            self.closed = True

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def pump(streams: Iterable[RawStream], until: Callable[[], bool], timeout: float, what: str) -> None:
    """Read every open stream until `until()` holds; fails after `timeout` seconds."""
    sel = selectors.DefaultSelector()
    for s in streams:
        if not s.closed:
            sel.register(s.sock, selectors.EVENT_READ, s)
    deadline = time.monotonic() + timeout
    try:
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            for key, _ in sel.select(timeout=0.2):
                stream: RawStream = key.data
                stream.read_some()
                if stream.closed:
                    sel.unregister(stream.sock)
    finally:
        sel.close()
