"""The operator console at /console: server-rendered pages over the same service and tenant
scoping as /v1, signed in with an API key, live through a console-side SSE route."""

from __future__ import annotations

from api.console import tools  # noqa: F401 - its route joins the blueprint before it is registered
from api.console.views import bp, init_console

__all__ = ["bp", "init_console"]
