"""The console's answer to an agent waiting for tool outputs (REQUIRES_ACTION): the execution
page shows a form with one field per pending call; it posts here (CSRF-checked like every
console form) and goes through the same service call as POST /v1/executions/{id}/input.

The page's script posts it in the background after a confirmation (Accept: application/json,
answered with the new state like the control buttons); without script the post redirects."""

from __future__ import annotations

import uuid

from flask import Response, jsonify, redirect, render_template, request, url_for
from pydantic import ValidationError

from api.console.views import Page, bp
from api.deps import service, tenant
from app.errors import ConflictError, InvalidExecutionStateError, UnprocessableError
from app.schemas import ExecutionState, ToolOutputsSubmit


def _refused(title: str, detail: str, status: int) -> Page:
    if request.accept_mimetypes.best == "application/json":
        return Response(jsonify({"error": detail}).get_data(), status=status, mimetype="application/json")
    return render_template("error.html", title=title, detail=detail), status


@bp.post("/executions/<uuid:execution_id>/input")
def tool_outputs(execution_id: uuid.UUID) -> Page:
    svc = service()
    row = svc.get_execution(execution_id, tenant=tenant())  # another tenant's: 404
    calls = (row.required_action or {}).get("tool_calls") or []
    if row.state != ExecutionState.REQUIRES_ACTION.value or not calls:
        return _refused(
            "Not possible now", f"execution {execution_id} is {row.state}: it waits for no tool outputs", 409
        )
    outputs = [{"tool_call_id": c["id"], "output": request.form.get(f"output-{c['id']}", "")} for c in calls]
    try:
        body = ToolOutputsSubmit.model_validate({"tool_outputs": outputs})
        row = svc.submit_tool_outputs(execution_id, body, tenant=tenant())
    except (InvalidExecutionStateError, ConflictError) as exc:
        return _refused("Not possible now", str(exc), 409)
    except (ValidationError, UnprocessableError) as exc:
        return _refused("Not accepted", str(exc), 422)
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"state": row.state, "attempt": row.attempt})
    return redirect(url_for("console.execution", execution_id=execution_id), code=303)
