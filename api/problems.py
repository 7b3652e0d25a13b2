"""RFC 9457 problem+json responses."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """A problem+json response with type, title, status, detail and any extra members."""
    body = {"type": f"https://agentexec.dev/problems/{status}", "title": title, "status": status,
            "detail": detail} | extra
    return Response(json.dumps(body, default=str), status=status, mimetype=PROBLEM_JSON)
