"""RFC 9457 problem+json responses, including the one for invalid input."""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from pydantic import ValidationError

PROBLEM_JSON = "application/problem+json"
_LOCATIONS = (("Body", "body"), ("Query", "query"), ("Path", "path"), ("Header", "header"))


def problem(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A problem+json response with type, title, status, detail and any extra members."""
    body = {
        "type": f"https://agentexec.dev/problems/{status}",
        "title": title,
        "status": status,
        "detail": detail,
    } | extra
    return Response(json.dumps(body, default=str), status=status, mimetype=PROBLEM_JSON, headers=headers)


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """The invalid fields of a pydantic error, each located (body, query, path, header)."""
    where = next((loc for suffix, loc in _LOCATIONS if (exc.title or "").endswith(suffix)), None)
    errors = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        errors.append(
            {"loc": ([where] if where else []) + loc, "msg": err.get("msg", ""), "type": err.get("type", "")}
        )
    return errors


def validation_problem(exc: ValidationError) -> Response:
    """422 listing every invalid field (flask-openapi3 calls this for parameters and bodies)."""
    errors = field_errors(exc)
    fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(request)" for e in errors[:5])
    return problem(422, "Unprocessable Content", f"the request is invalid: {fields}", errors=errors)
