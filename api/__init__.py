"""The HTTP API: a Flask app factory over ExecutionService.

`create_app` is imported on first use, not with the package: gunicorn's master imports the
worker class (`api.server`) before it forks, and the gevent worker must import the app only
after its monkey-patching, so that the app's locks and sockets are gevent's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
