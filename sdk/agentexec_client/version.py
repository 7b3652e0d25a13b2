"""The client's version: the API version it was written against (`info.version` of /openapi.json)."""

__version__ = "1.1.0"
USER_AGENT = f"agentexec-client/{__version__}"
