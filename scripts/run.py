"""The supervisor of `make run`: start the Procfile's processes, stop them all cleanly.

Why not honcho: on Ctrl-C it SIGKILLs what has not exited after 5 s, while gunicorn's
graceful timeout is 10 s and a stopping worker hands its executions back; and when its
output pipe broke (`make run | tee log`, Ctrl-C kills tee too) it wedged, leaving the
stack serving. Here every process runs in a session of its own, so a terminal's Ctrl-C
reaches only this supervisor; it sends SIGTERM to each process, waits up to STOP_TIMEOUT
for all of them, then SIGKILLs what is left. Output that cannot be written any more is
dropped, never waited on.

The Procfile stays the one definition of the processes. What belongs to one checkout
lives in its git-ignored `var/`: `run.pid` (this supervisor, for `make stop`), `run.lock`
(held while it runs), `api-url` (read by the `agentexec` CLI), and, named in the
Procfile, the beat schedule and the gunicorn control socket.

Standard library only: `check` and `stop` run with the system's python3 before the
virtualenv exists.

    run.py [start]   run the stack in the foreground until Ctrl-C, SIGTERM or `stop`
    run.py check     print why the stack cannot start here (one line, exit 1), or nothing
    run.py stop      stop the stack of this checkout and wait until it is gone
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PID_FILE = VAR / "run.pid"
LOCK_FILE = VAR / "run.lock"
API_URL_FILE = VAR / "api-url"  # read by cli/context.py
# gunicorn's --graceful-timeout in the Procfile, plus the time to exit after it.
STOP_TIMEOUT = 12.0
# On SIGTERM the worker hands its running executions back (QUEUED, next attempt) at their
# next step boundary, or mid-call after this many seconds: well inside STOP_TIMEOUT.
DEV_WORKER_SHUTDOWN_GRACE = "2"
COLORS = ["36", "33", "32", "35", "34", "31"]


def _port(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        sys.exit(f"{name}={os.environ[name]!r} is not a port number")


def _bind_address(name: str) -> str:
    return os.environ.get(name) or "127.0.0.1"


def api_url() -> str:
    """The URL this checkout's API answers on (WEB_BIND, PORT)."""
    host = _bind_address("WEB_BIND")
    if host in ("0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{_port('PORT', 8000)}"


# --------------------------------------------------------------------------- who runs here


def _lock_held(lock: Path) -> bool:
    """Whether a supervisor holds this lock file (another open file description than ours)."""
    if not lock.exists():
        return False
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _running_in(var: Path) -> tuple[int, str] | None:
    """(pid, API URL) of the stack running from the checkout whose var/ this is."""
    if not _lock_held(var / "run.lock"):
        return None
    pid = _read(var / "run.pid")
    return (int(pid) if pid.isdigit() else 0), _read(var / "api-url") or "?"


def _listener_pid(port: int) -> int | None:
    """The pid of a process listening on TCP `port` (Linux /proc; None when unknown)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def _port_taken(host: str, port: int) -> bool:
    """Whether binding host:port fails as the server's own bind would (SO_REUSEADDR, like gunicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host != "*" else "0.0.0.0", port))
        except OSError:
            return True
    return False


def _describe_holder(port: int, variable: str) -> str:
    pid = _listener_pid(port)
    if pid is None:
        return f"port {port} ({variable}) is already in use; set {variable} to a free port"
    with contextlib.suppress(OSError):
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        other = _running_in(cwd / "var")
        if other is not None:
            return (
                f"agentexec is already running in {cwd}: {other[1]} (pid {other[0]}); "
                f"stop it there with make stop, or set {variable} to a free port"
            )
    name = _read(Path(f"/proc/{pid}/comm")) or "?"
    return f"port {port} ({variable}) is already in use by pid {pid} ({name}); set {variable} to a free port"


def refusal(*, ports_only: bool = False) -> str | None:
    """Why the stack cannot start in this checkout now, in one line (None: it can)."""
    here = None if ports_only else _running_in(VAR)
    if here is not None:
        pid, url = here
        return f"agentexec is already running in this checkout: {url} (pid {pid}); stop it with make stop"
    for variable, default, address in (("PORT", 8000, "WEB_BIND"), ("FLOWER_PORT", 5555, "FLOWER_ADDRESS")):
        port = _port(variable, default)
        if _port_taken(_bind_address(address), port):
            return _describe_holder(port, variable)
    return None


def check() -> int:
    reason = refusal()
    if reason:
        print(reason)
        return 1
    return 0


# --------------------------------------------------------------------------- stop


def stop() -> int:
    """Stop this checkout's stack (SIGTERM to its supervisor) and wait until it is gone."""
    here = _running_in(VAR)
    if here is None:
        print("agentexec is not running in this checkout")
        return 0
    pid, url = here
    started = time.monotonic()
    print(f"stopping agentexec at {url} (pid {pid})...", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = started + STOP_TIMEOUT + 5
    while _lock_held(LOCK_FILE):
        if time.monotonic() > deadline:
            print(f"agentexec (pid {pid}) did not stop within {STOP_TIMEOUT + 5:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"stopped in {time.monotonic() - started:.1f} s")
    return 0


# --------------------------------------------------------------------------- start


def procfile() -> list[tuple[str, str]]:
    """(name, command) of every Procfile line."""
    entries = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            entries.append((name.strip(), command.strip()))
    return entries


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL, so that
    nothing is left serving (each process is in a session of its own: no terminal reaches it)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Output:
    """Prefixed, line-buffered output of every process; once stdout is gone, lines are dropped."""

    def __init__(self, names: list[str]):
        self.width = max(len(n) for n in [*names, "system"]) + 2
        self.color = sys.stdout.isatty()
        self.lock = threading.Lock()
        self.broken = False

    def line(self, name: str, text: bytes | str, color: str = "") -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        prefix = f"{stamp} {name:<{self.width}}| "
        if self.color and color:
            prefix = f"\033[{color}m{prefix}\033[0m"
        body = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        with self.lock:
            if self.broken:
                return
            try:
                sys.stdout.buffer.write(prefix.encode() + body.rstrip(b"\r\n") + b"\n")
                sys.stdout.buffer.flush()
            except Exception:  # never let a pump die: its process would block on a full pipe
                self.broken = True  # e.g. `make run | tee log`, and tee died of the same Ctrl-C
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def pump(self, name: str, stream: IO[bytes], color: str) -> None:
        """Copy a process's output, line by line, until it closes (runs in a thread)."""
        for raw in iter(stream.readline, b""):
            self.line(name, raw, color)


class Supervisor:
    """The Procfile's processes, each in its own session; stops them together."""

    def __init__(self) -> None:
        self.entries = [(f"{name}.1", command) for name, command in procfile()]
        self.out = Output([name for name, _ in self.entries])
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pumps: list[threading.Thread] = []
        self.stop_requested: str | None = None
        self.wake = threading.Event()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name
        else:  # a second Ctrl-C: do not wait any more
            self.stop_requested = "again"
        self.wake.set()

    def system(self, text: str) -> None:
        self.out.line("system", text)

    def spawn(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("WORKER_SHUTDOWN_GRACE", DEV_WORKER_SHUTDOWN_GRACE)
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        for name, command in self.entries:
            self.procs[name] = subprocess.Popen(
                [shell, "-c", f"exec {command}"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        for i, (name, _) in enumerate(self.entries):
            proc = self.procs[name]
            self.system(f"{name} started (pid={proc.pid})")
            pump = threading.Thread(
                target=self.out.pump, args=(name, proc.stdout, COLORS[i % len(COLORS)]), daemon=True
            )
            pump.start()
            self.pumps.append(pump)

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def _groups_alive(self) -> list[int]:
        alive = []
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            alive.append(proc.pid)
        return alive

    def _kill_all(self) -> None:
        for pgid in self._groups_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def terminate(self, why: str) -> None:
        """SIGTERM to every process (each passes it on to its own children: gunicorn's workers,
        Celery's pool), then wait up to STOP_TIMEOUT for every process group to be gone."""
        names = self.alive()
        self.system(f"{why}: stopping {', '.join(names) or 'nothing'} (up to {STOP_TIMEOUT:.0f} s)")
        for name in names:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.procs[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        reported: set[str] = set()
        while self._groups_alive():
            for name, proc in self.procs.items():
                if name not in reported and proc.poll() is not None:
                    reported.add(name)
                    self.system(f"{name} stopped (rc={proc.returncode})")
            if self.stop_requested == "again":
                self.system("stopping now (second signal): SIGKILL")
                break
            if time.monotonic() > deadline:
                self.system(f"still running after {STOP_TIMEOUT:.0f} s: SIGKILL")
                break
            self.wake.wait(0.05)
            self.wake.clear()
        self._kill_all()
        for name, proc in self.procs.items():
            proc.wait()
            if name not in reported:
                self.system(f"{name} stopped (rc={proc.returncode})")
        for pump in self.pumps:  # the last lines of each process (its pipe is closed by now)
            pump.join(1)

    def announce_ready(self, started: float) -> None:
        """Say once when the API answers /healthz and Flower listens (runs in a thread): the URLs
        printed before the start are not yet serving, and a curl at once would be refused."""
        api = api_url()
        flower = (_bind_address("FLOWER_ADDRESS"), _port("FLOWER_PORT", 5555))
        if flower[0] in ("0.0.0.0", "::", "*"):
            flower = ("127.0.0.1", flower[1])
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via http_proxy
        while self.stop_requested is None and len(self.alive()) == len(self.procs):
            try:
                with direct.open(f"{api}/healthz", timeout=1) as answer:
                    healthy = answer.status == 200
                socket.create_connection(flower, timeout=1).close()  # Flower listens
            except OSError:
                healthy = False
            if healthy:
                self.system(
                    f"ready in {time.monotonic() - started:.1f} s: API {api}, Flower port {flower[1]}"
                )
                return
            time.sleep(0.1)

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        started = time.monotonic()
        self.spawn()
        threading.Thread(target=self.announce_ready, args=(started,), daemon=True).start()
        failed = ""
        while self.stop_requested is None:
            exited = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if exited:
                failed = exited[0]
                break
            self.wake.wait(0.2)
        if failed:
            rc = self.procs[failed].returncode
            self.terminate(f"{failed} exited (rc={rc})")
            return rc or 1
        self.terminate(f"{self.stop_requested} received")
        return 0


def start() -> int:
    VAR.mkdir(exist_ok=True)
    lock = LOCK_FILE.open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(refusal() or "agentexec is already running in this checkout", file=sys.stderr)
        return 1
    # Holding the lock, only the ports can be in the way now.
    reason = refusal(ports_only=True)
    if reason:
        print(reason, file=sys.stderr)
        return 1
    PID_FILE.write_text(f"{os.getpid()}\n")
    API_URL_FILE.write_text(api_url() + "\n")
    try:
        return Supervisor().run()
    finally:
        with contextlib.suppress(OSError):
            PID_FILE.unlink()
        lock.close()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "start"
    if command == "start":
        return start()
    if command == "check":
        return check()
    if command == "stop":
        return stop()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
