"""What every command shares: where the API is and a lazily created SDK client for it.

Where the API is, first found first: `--api-url`; `AGENTEXEC_API_URL`; the URL `make run`
wrote to `var/api-url` of the checkout the command runs in (the current directory or one
above it, up to the git root), so a stack on another PORT, or in another checkout, is
found; `http://127.0.0.1:$PORT`; `http://127.0.0.1:8000`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import typer
from agentexec_client import Client

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_FILE = Path("var") / "api-url"  # written by scripts/run.py (`make run`)


@dataclass(frozen=True)
class ApiLocation:
    """An API URL and where it came from, in words for --help and errors."""

    url: str
    source: str  # "--api-url", "AGENTEXEC_API_URL", the file, "PORT"; "" for the default

    def origin(self) -> str:
        """'came from PORT', or why the default is used."""
        if self.source:
            return f"came from {self.source}"
        return "is the default (no make run stack found from this directory, and PORT is not set)"


def _stack_url_file(cwd: Path) -> Path | None:
    """var/api-url of the checkout `cwd` is in (never the filesystem root's /var)."""
    for folder in (cwd, *cwd.parents):
        if folder.parent == folder:
            return None
        candidate = folder / API_URL_FILE
        if candidate.is_file():
            return candidate
        if (folder / ".git").exists():
            return None
    return None


def locate_api(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> ApiLocation:
    """The API URL to use when --api-url is not given (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if environ.get("AGENTEXEC_API_URL"):
        return ApiLocation(environ["AGENTEXEC_API_URL"], "AGENTEXEC_API_URL")
    found = _stack_url_file(Path.cwd() if cwd is None else cwd)
    if found is not None:
        try:
            url = found.read_text().strip().splitlines()[0]
        except (OSError, IndexError):
            url = ""
        if url:
            return ApiLocation(url, f"{found} (written by make run)")
    port = environ.get("PORT", "").strip()
    if port.isdigit():
        return ApiLocation(f"http://127.0.0.1:{port}", "PORT")
    return ApiLocation(DEFAULT_API_URL, "")


class Context:
    """The API location, key and timeout given on the command line or in the environment."""

    def __init__(self, location: ApiLocation, api_key: str | None, timeout: float):
        self.location, self.api_key, self.timeout = location, api_key, timeout
        self.api_url = location.url
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The API client, created on first use."""
        if self._client is None:
            self._client = Client(self.api_url, self.api_key, self.timeout)
        return self._client

    def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None


def client_of(ctx: typer.Context) -> Client:
    """The API client of the running command."""
    root = ctx.find_root()
    if not isinstance(root.obj, Context):  # pragma: no cover - the callback always sets it
        raise RuntimeError("agentexec CLI context missing")
    return root.obj.client
