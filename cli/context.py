"""What every command shares: where the API is and a lazily created SDK client for it."""

from __future__ import annotations

import typer
from agentexec_client import Client


class Context:
    """The API location, key and timeout given on the command line or in the environment."""

    def __init__(self, api_url: str, api_key: str | None, timeout: float):
        self.api_url, self.api_key, self.timeout = api_url, api_key, timeout
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
