"""agentexec's domain: executions, their state machine, events and the model service.

Nothing in this package imports Flask or Celery; the entry points in `api/` and
`workers/` build the service through `app.bootstrap.build_service`.
"""
