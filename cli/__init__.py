"""The `agentexec` command-line client of the HTTP API (see cli.main)."""
