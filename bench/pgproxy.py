"""A TCP proxy in front of PostgreSQL that counts round trips on the wire.

A client waits for the server once per simple-protocol Query ('Q': BEGIN, COMMIT,
ROLLBACK, the pool's ping) and once per extended-protocol Sync ('S': every
parameterized statement psycopg sends). Counting those messages gives the exact number
of database round trips, whatever library or code produced them; the text of simple
queries tells transactions (COMMIT) and pings apart.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter

from bench.env import PG_HOST, PG_PORT


class _ConnState:
    """Where one client connection is in the protocol."""

    def __init__(self) -> None:
        self.started = False
        self.last_parse = b""
        self.in_transaction = False


class CountingProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL and counts what clients send."""

    def __init__(self, upstream: tuple[str, int] = (PG_HOST, PG_PORT)):
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name="pgproxy-accept", daemon=True).start()

    def snapshot(self) -> Counter[str]:
        """A copy of the counters: round_trips, statements, begin, commit, rollback, ping, autocommit."""
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        """Stop accepting (open connections end with their clients)."""
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=_pipe, args=(server, client), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buf = b""
        conn = _ConnState()
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                server.sendall(data)
                buf += data
                buf = self._parse(buf, conn)
        except OSError:
            pass
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _parse(self, buf: bytes, conn: _ConnState) -> bytes:
        while True:
            if not conn.started:  # StartupMessage: int32 length, no type byte
                if len(buf) < 4:
                    return buf
                (length,) = struct.unpack("!I", buf[:4])
                if len(buf) < length:
                    return buf
                buf, conn.started = buf[length:], True
                continue
            if len(buf) < 5:
                return buf
            kind = chr(buf[0])
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                return buf
            body, buf = buf[5 : 1 + length], buf[1 + length :]
            self._count(kind, body, conn)

    def _count(self, kind: str, body: bytes, conn: _ConnState) -> None:
        if kind == "P":  # Parse: statement name, then the query text
            conn.last_parse = body.split(b"\x00", 2)[1]
            return
        if kind not in ("Q", "S"):
            return
        sql = body.rstrip(b"\x00") if kind == "Q" else conn.last_parse
        conn.last_parse = b""
        with self._lock:
            self.counts["round_trips"] += 1
            self._classify(sql, conn)

    def _classify(self, sql: bytes, conn: _ConnState) -> None:
        sql = sql.strip().upper()
        if sql.startswith(b"BEGIN"):
            self.counts["begin"] += 1
            conn.in_transaction = True
        elif sql.startswith(b"COMMIT"):
            self.counts["commit"] += 1
            conn.in_transaction = False
        elif sql.startswith(b"ROLLBACK"):
            self.counts["rollback"] += 1
            conn.in_transaction = False
        elif sql in (b";", b"SELECT 1"):
            self.counts["ping"] += 1
        else:
            self.counts["statements"] += 1
            if not conn.in_transaction:  # autocommit: the statement is a transaction of its own
                self.counts["autocommit"] += 1


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
