"""The request-body guard: what a JSON body must be before any model sees it.

Runs before every POST, PUT and PATCH view. A body, when present, must be
application/json (else 415), parse (else 400), be a JSON object (else 422) and hold
only values PostgreSQL can store (no NUL characters, no lone surrogates, no NaN or
Infinity, nested at most MAX_DEPTH levels; else 422), and match the view's body
model with JSON's own types (strict: "5" is not an integer, "yes" not a boolean; else
422). Its size is bounded by MAX_CONTENT_LENGTH (413). So malformed input is refused
here with a 4xx, never reaching the database as a 500.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, TypeVar, get_type_hints

from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from api.problems import problem, validation_problem

MAX_DEPTH = 32
M = TypeVar("M", bound=BaseModel)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def storable_problems(document: Any) -> list[dict[str, Any]]:
    """Values of a parsed JSON document that PostgreSQL text/jsonb cannot store, located."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack and len(errors) < 20:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            errors.append(
                {"loc": ["body", *loc], "msg": f"nested deeper than {MAX_DEPTH} levels", "type": "too_deep"}
            )
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                why = _bad_string(key)
                if why:
                    errors.append({"loc": ["body", *loc], "msg": f"a key {why}", "type": "invalid_string"})
                stack.append((item, [*loc, key]))
        elif isinstance(value, list):
            stack.extend((item, [*loc, i]) for i, item in enumerate(value))
        elif isinstance(value, str):
            why = _bad_string(value)
            if why:
                errors.append({"loc": ["body", *loc], "msg": why, "type": "invalid_string"})
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append({"loc": ["body", *loc], "msg": "must be a finite number", "type": "finite_number"})
    return errors


def check_json_body() -> Response | None:
    """before_request: refuse a body that is not a storable JSON object; None lets the view run.

    The JSON API's guard: routes outside /v1 (the console's urlencoded forms) are not its."""
    if request.method not in _BODY_METHODS or request.endpoint is None or not request.path.startswith("/v1/"):
        return None
    data = request.get_data(cache=True)  # raises 413 when Content-Length is beyond MAX_CONTENT_LENGTH
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()  # a chunked body is cut at the limit, not refused, by Werkzeug
    if not data:
        return None
    if not _is_json(request.mimetype):
        return problem(
            415,
            "Unsupported Media Type",
            f"the body must be application/json, not {request.mimetype or 'unspecified'}",
        )
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return problem(400, "Bad Request", f"the body is not valid JSON: {str(exc)[:200]}")
    if not isinstance(document, dict):
        return problem(
            422,
            "Unprocessable Content",
            "the body must be a JSON object",
            errors=[{"loc": ["body"], "msg": "must be a JSON object", "type": "dict_type"}],
        )
    errors = storable_problems(document)
    if errors:
        return problem(
            422, "Unprocessable Content", "the body holds values that cannot be stored", errors=errors
        )
    model = _body_model(current_app.view_functions.get(request.endpoint))
    if model is not None:
        try:
            model.model_validate_json(data, strict=True)
        except ValidationError as exc:
            return validation_problem(exc)
    return None


@lru_cache(maxsize=256)
def _body_model(view: object) -> type[BaseModel] | None:
    """The pydantic model of a view's `body` argument (flask-openapi3 views wrap the function)."""
    func = getattr(view, "__wrapped__", None)
    if func is None:
        return None
    model = get_type_hints(func).get("body")
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def strict_body(model: type[M]) -> M:
    """An optional body (already guarded) validated with JSON's own types; {} when there is none."""
    data = request.get_data(cache=True)
    return model.model_validate_json(data or b"{}", strict=True)
