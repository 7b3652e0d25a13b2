"""Process helpers shared by the tests: free ports, Procfile commands, process groups."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def procfile_command(name: str) -> str:
    """The shell command of one Procfile process."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(f"no {name!r} process in the Procfile")


def start_procfile_process(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Run a Procfile line with bash (as honcho does) in its own process group, output to a file."""
    full_env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"} | env
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["bash", "-c", f"exec {procfile_command(name)}"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
