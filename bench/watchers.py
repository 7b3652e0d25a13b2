"""`python -m bench.watchers`: hold many SSE streams open from one process and stamp their frames.

Started by bench/figures/watchers.py. Reads a JSON list of stream paths from `--paths`
and opens one raw socket per path (in batches, each batch's heads awaited before the
next: a burst of 10,000 connects would overflow gunicorn's backlog), all read with one
epoll. Prints `READY <open> <refused>` once every stream has its head; then, for every
`REPORT` line on stdin, prints one JSON line: {"frames": {event id: [receive times]},
"open": n, "closed": n} and forgets the frames reported; `EXIT` ends it.
"""

from __future__ import annotations

import argparse
import json
import re
import selectors
import socket
import sys
import threading
import time
from pathlib import Path

FRAME_ID = re.compile(rb"(?:^|\n)id: (\S+)\n")


class Stream:
    __slots__ = ("sock", "head", "status", "tail")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.head = b""
        self.status = 0
        self.tail = b""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--paths", required=True)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    paths: list[str] = json.loads(Path(args.paths).read_text())
    sel = selectors.DefaultSelector()
    streams: list[Stream] = []
    frames: dict[str, list[float]] = {}
    lock = threading.Lock()
    closed = 0

    def read(stream: Stream) -> None:
        nonlocal closed
        try:
            data = stream.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        now = time.time()
        if not data:
            sel.unregister(stream.sock)
            stream.sock.close()
            closed += 1
            return
        if not stream.status:
            stream.head += data
            if b"\r\n\r\n" not in stream.head:
                return
            head, _, data = stream.head.partition(b"\r\n\r\n")
            stream.status = int(head.split(b" ", 2)[1])
            stream.head = b""
        text = stream.tail + data
        cut = text.rfind(b"\n\n")
        stream.tail = text[cut + 2 :] if cut >= 0 else text
        if cut >= 0:
            ids = FRAME_ID.findall(text[: cut + 2])
            if ids:
                with lock:
                    for ident in ids:
                        frames.setdefault(ident.decode(), []).append(now)

    def poll(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            read(key.data)

    for start in range(0, len(paths), args.batch):
        batch = []
        for path in paths[start : start + args.batch]:
            sock = socket.create_connection(("127.0.0.1", args.port))
            request = (
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                f"Authorization: Bearer {args.key}\r\n\r\n"
            )
            sock.sendall(request.encode())
            sock.setblocking(False)
            stream = Stream(sock)
            sel.register(sock, selectors.EVENT_READ, stream)
            batch.append(stream)
        deadline = time.monotonic() + 120
        while any(not s.status for s in batch) and time.monotonic() < deadline:
            poll(0.2)
        streams += batch
    refused = sum(1 for s in streams if s.status != 200)
    print(f"READY {len(streams) - refused} {refused}", flush=True)

    commands: list[str] = []

    def stdin() -> None:
        for line in sys.stdin:
            with lock:
                commands.append(line.strip())

    threading.Thread(target=stdin, daemon=True).start()
    while True:
        poll(0.05)
        with lock:
            todo, commands[:] = list(commands), []
        for command in todo:
            if command == "EXIT":
                return 0
            if command == "REPORT":
                with lock:
                    out = dict(frames)
                    frames.clear()
                print(
                    json.dumps({"frames": out, "open": len(streams) - closed, "closed": closed}), flush=True
                )


if __name__ == "__main__":
    sys.exit(main())
