"""The unit tier opens no connection: a test that reaches for PostgreSQL, Redis or any TCP service
fails at once with the address it tried, instead of passing only where the services happen to run.

(The root conftest points DATABASE_URL at a local PostgreSQL; nothing here may use it.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkUsed(AssertionError):
    """A unit test tried to open a network connection."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in _INET:
            raise NetworkUsed(f"the unit tier opens no connection (tried {address!r})")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in _INET:
            raise NetworkUsed(f"the unit tier opens no connection (tried {address!r})")
        return real_connect_ex(self, address)

    def pg_connect(*args: Any, **kwargs: Any) -> None:  # libpq opens its sockets in C
        raise NetworkUsed(f"the unit tier opens no PostgreSQL connection (tried {args or kwargs!r})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(psycopg, "connect", pg_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", pg_connect)
    yield
