"""The Python client and the CLI reach schedules, delayed starts and the metadata filter."""

from __future__ import annotations

from typing import Any

import pytest
from agentexec_client import AsyncClient, Client, Schedule

from tests.integration.test_cli import Cli, api_url  # noqa: F401  (the fixture)


@pytest.fixture
def cli(api_url, clean_db) -> Cli:  # type: ignore[no-untyped-def]  # noqa: F811
    return Cli(api_url)


def test_the_client_manages_schedules_and_delays_a_start(cli: Cli) -> None:
    with Client(cli.url) as client:
        agent = client.agents.create("scheduled")
        made = client.schedules.create(
            agent.name, "30 7 * * 1-5", input="morning", timezone="Europe/Berlin", task_id=None
        )
        assert isinstance(made, Schedule) and made.next_run_at is not None and made.enabled
        assert client.schedules.get(made.id) == made
        off = client.schedules.update(made, enabled=False, on_conflict="reject")
        assert off.enabled is False and off.next_run_at is None and off.on_conflict == "reject"
        cleared = client.schedules.update(made, on_conflict=None)
        assert cleared.on_conflict is None
        assert [s.id for s in client.schedules.list()] == [made.id]
        client.schedules.delete(made)
        assert client.schedules.list_page().total == 0

        later = client.executions.create(agent, input="x", delay_seconds=30, metadata={"batch": 7})
        assert later.state == "PENDING" and later.scheduled_at is not None
        assert [e.id for e in client.executions.list(metadata={"batch": 7})] == [later.id]
        assert client.executions.list_page(metadata={"batch": "8"}).items == []
        assert client.executions.cancel(later).state == "CANCELLED"


async def _async_round(url: str) -> list[Any]:
    async with AsyncClient(url) as client:
        agent = await client.agents.create("async-scheduled")
        made = await client.schedules.create(agent.id, "0 * * * *", {"input": "hourly"})
        seen = [s.id async for s in client.schedules.list()]
        await client.schedules.delete(made.id)
        return [made.id, seen]


def test_the_async_client_has_schedules_too(cli: Cli) -> None:
    import asyncio

    made, seen = asyncio.run(_async_round(cli.url))
    assert seen == [made]


def test_the_cli_lists_executions_by_metadata(cli: Cli) -> None:
    with Client(cli.url) as client:
        agent = client.agents.create("tagged")
        mine = client.executions.create(agent, input="x", start=False, metadata={"env": "prod", "team": "a"})
        client.executions.create(agent, input="y", start=False, metadata={"env": "dev"})
    listed = cli.json("list", "--metadata", "env=prod", "-m", "team=a")
    assert [item["id"] for item in listed["items"]] == [str(mine.id)]
    assert cli.json("list", "--metadata", "env=staging")["items"] == []
    assert "KEY=VALUE" in cli("list", "--metadata", "env", code=2).output


def test_the_cli_creates_lists_updates_and_deletes_schedules(cli: Cli) -> None:
    cli.json("agents", "create", "cron-writer")
    made = cli.json(
        "schedules", "create", "cron-writer", "30 7 * * 1-5", "-i", "report", "-z", "Europe/Berlin"
    )
    assert made["cron"] == "30 7 * * 1-5" and made["timezone"] == "Europe/Berlin" and made["next_run_at"]
    assert [s["id"] for s in cli.json("schedules", "list")["items"]] == [made["id"]]
    assert "30 7 * * 1-5" in cli("schedules", "list").stdout
    off = cli.json("schedules", "update", made["id"], "--disable")
    assert off["enabled"] is False and off["next_run_at"] is None
    assert cli.json("schedules", "show", made["id"])["enabled"] is False
    assert "5 fields" in cli("schedules", "create", "cron-writer", "* * *", code=1).output
    cli("schedules", "delete", made["id"])
    assert cli.json("schedules", "list")["items"] == []
