"""Where scripts/services.sh should find PostgreSQL and Redis, and whether a server answers there.

The hosts and ports come from the settings (DATABASE_URL, REDIS_URL, CELERY_BROKER_URL):
app.config.Settings when the project is installed, otherwise (CI calls services.sh before
`make install`) the defaults written in app/config.py, read with `ast` rather than copied,
and the environment. A value equal to what services.sh recorded for an embedded server
(var/services.env, sourced by the Makefile) counts as unset: it is services.sh's own choice,
not the user's. The probes speak just enough of each protocol to tell "a server answers"
from "nothing there" or "still starting", so neither pg_isready nor redis-cli is needed.

    service_urls.py                      shell assignments: DB_HOST, DB_PORT, DB_EXPLICIT, ...
    service_urls.py wait postgres|redis HOST PORT SECONDS    exit 0 once it answers, else 1
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import socket
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # app.config, when this runs as a script
    sys.path.insert(1, str(ROOT))
FIELDS = ("database_url", "redis_url", "celery_broker_url")
LOCAL_HOSTS = {"", "localhost", "::1", "ip6-localhost"}
ENV_LINE = re.compile(r'^export ([A-Z_]+)="\$\{\1:-(.*)\}"$')


def var_dir() -> Path:
    """The checkout's runtime directory (AGENTEXEC_VAR_DIR overrides it)."""
    return Path(os.environ.get("AGENTEXEC_VAR_DIR") or ROOT / "var")


def recorded_embedded() -> dict[str, str]:
    """The URLs var/services.env gives when services.sh last used embedded servers."""
    path = var_dir() / "services.env"
    if not path.exists():
        return {}
    found = (ENV_LINE.match(line.strip()) for line in path.read_text().splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def _from_environment(name: str) -> str:
    """The variable as pydantic-settings reads it (case-insensitive), or ''."""
    matches = [v for k, v in os.environ.items() if k.lower() == name]
    return matches[0] if matches else ""


def _drop_recorded(recorded: dict[str, str]) -> None:
    """Forget variables whose value is one services.sh recorded itself."""
    for key in list(os.environ):
        if key.upper() in recorded and os.environ[key] == recorded[key.upper()]:
            del os.environ[key]


def defaults() -> dict[str, str]:
    """The defaults of the three URL settings, as app/config.py writes them."""
    try:
        from app.config import Settings

        return {f: str(Settings.model_fields[f].default) for f in FIELDS}
    except ImportError:  # not installed yet: read the literals in the source
        tree = ast.parse((ROOT / "app" / "config.py").read_text())
        found: dict[str, str] = {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id in FIELDS
                and isinstance(node.value, ast.Constant)
            ):
                found[node.target.id] = str(node.value.value)
        return found


def settings() -> dict[str, str]:
    """The three URLs in effect (the broker defaults to REDIS_URL, as in Settings)."""
    try:
        from app.config import Settings

        current = Settings()
        return {f: str(getattr(current, f)) for f in FIELDS}
    except ImportError:
        values = {f: _from_environment(f) or defaults()[f] for f in FIELDS}
        values["celery_broker_url"] = values["celery_broker_url"] or values["redis_url"]
        return values


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """Host and port of a URL (a missing host is the local one)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def with_host_port(url: str, host: str, port: int) -> str:
    """`url` pointing at host:port instead, user, database and options kept."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = (f"{user}@" if user else "") + f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host.startswith("127.")


def shell_assignments() -> str:
    """What services.sh evals: hosts, ports, and which URLs the user set explicitly."""
    _drop_recorded(recorded_embedded())
    current = settings()
    db_host, db_port = host_port(current["database_url"], 5432)
    redis_host, redis_port = host_port(current["redis_url"], 6379)
    broker = current["celery_broker_url"]
    broker_host, broker_port = host_port(broker, 6379)
    # A broker set on its own is checked on its own: it must answer where it says.
    separate_broker = urlsplit(broker).scheme.startswith("redis") and (
        bool(_from_environment("celery_broker_url")) or (broker_host, broker_port) != (redis_host, redis_port)
    )
    values = {
        "DB_HOST": db_host,
        "DB_PORT": db_port,
        "DB_USER": urlsplit(current["database_url"]).username or "postgres",
        "DB_LOCAL": int(is_local(db_host)),
        "DB_EXPLICIT": int(bool(_from_environment("database_url"))),
        "REDIS_HOST": redis_host,
        "REDIS_PORT": redis_port,
        "REDIS_LOCAL": int(is_local(redis_host)),
        "REDIS_EXPLICIT": int(bool(_from_environment("redis_url"))),
        "BROKER_SEPARATE": int(separate_broker),
        "BROKER_HOST": broker_host,
        "BROKER_PORT": broker_port,
        "BROKER_LOCAL": int(is_local(broker_host)),
    }
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


# --------------------------------------------------------------------------- probes


def _exchange(host: str, port: int, payload: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=1) as conn:
        conn.settimeout(2)
        conn.sendall(payload)
        return conn.recv(4096)


def postgres_answers(host: str, port: int, user: str = "postgres") -> bool:
    """A startup packet gets an authentication request or an error other than 'starting up'."""
    params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    try:
        reply = _exchange(host, port, struct.pack("!ii", 8 + len(params), 196608) + params)
    except OSError:
        return False
    if reply[:1] == b"R":
        return True
    # An ErrorResponse: field 'C' holds the SQLSTATE; 57P03 is "the database system is starting up".
    return reply[:1] == b"E" and b"C57P03\0" not in reply


def redis_answers(host: str, port: int) -> bool:
    """PING gets PONG, or a refusal that only a live server gives (auth needed)."""
    try:
        reply = _exchange(host, port, b"*1\r\n$4\r\nPING\r\n")
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH", b"-WRONGPASS"))


PROBES = {"postgres": postgres_answers, "redis": redis_answers}


def wait(kind: str, host: str, port: int, seconds: float) -> bool:
    """Probe every half second until the server answers or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if PROBES[kind](host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    if not argv:
        print(shell_assignments())
        return 0
    if argv[0] == "wait" and len(argv) == 5:
        return 0 if wait(argv[1], argv[2], int(argv[3]), float(argv[4])) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
