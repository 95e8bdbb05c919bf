"""``/imagebot-admin usage`` on Discord and Slack, through the fakes: a non-admin is refused, an admin sees this
month's spend of their own server or workspace from the ledger, privately, per channel and per user."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.common.admin import MAX_ROWS, MonthUsage, usage_text
from adapters.discord.admin import NOT_AN_ADMIN as DISCORD_REFUSAL
from adapters.slack.admin import NOT_AN_ADMIN as SLACK_REFUSAL
from bot.models import JobContext, JobStatus, UsageRow
from bot.ports import JobStore
from tests.fakes.discord_server import CHANNEL_ID, GUILD_ID, MEMBER_PERMISSIONS, FakeDiscord, make_user
from tests.fakes.slack_server import CHANNEL_ID as SLACK_CHANNEL
from tests.fakes.slack_server import TEAM_ID, USER_ID, FakeSlack
from tests.slack_harness import slack_bot
from tests.test_discord import fake, running, settings_for  # noqa: F401
from tests.test_store_contract import job, put

MANAGE_SERVER = 0x20
ADMIN_PERMISSIONS = str(int(MEMBER_PERMISSIONS) | MANAGE_SERVER)
BOB = make_user("1185000000000000999", "bob")
OTHER_CHANNEL = "1185000000000000777"


async def seed(store: JobStore, platform: str, workspace: str, alice: str, bob: str, here: str, there: str) -> None:
    """This month: alice $0.50 (2 images) in ``here``, bob $0.25 in ``there``; plus what must not be counted."""
    now = time.time()
    await put(
        store,
        job(JobContext(platform, alice, workspace, here), prompt="a", images=2, status=JobStatus.DELIVERED,
            actual_cost=0.5, paid_at=now, at=now),
        job(JobContext(platform, bob, workspace, there), prompt="b", status=JobStatus.DELIVERED,
            actual_cost=0.25, paid_at=now, at=now),
        job(JobContext(platform, bob, workspace, there), prompt="never paid", status=JobStatus.FAILED, at=now),
        job(JobContext(platform, alice, "elsewhere", here), prompt="another server", status=JobStatus.DELIVERED,
            actual_cost=9.0, paid_at=now, at=now),
        job(JobContext(platform, alice, workspace, here), prompt="last month", status=JobStatus.DELIVERED,
            actual_cost=7.0, paid_at=now - 40 * 86_400, at=now - 40 * 86_400),
    )  # fmt: skip


def assert_ledger_numbers(text: str, alice: str, bob: str, here: str, there: str) -> None:
    assert "$0.7500 for 3 images in 2 jobs" in text, text
    assert f"<#{here}>: $0.5000 · 2 images" in text
    assert f"<#{there}>: $0.2500 · 1 image" in text
    assert f"<@{alice}>: $0.5000" in text and f"<@{bob}>: $0.2500" in text
    assert "$9" not in text and "$7" not in text  # another server, last month


# --- Discord ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def discord_bot(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[JobStore]:  # noqa: F811
    async with running(settings_for(fake, tmp_path)) as adapter:
        await seed(adapter.core.jobs.store, "discord", GUILD_ID, fake.user["id"], BOB["id"], CHANNEL_ID, OTHER_CHANNEL)
        yield adapter.core.jobs.store
    fake.assert_no_errors()


async def test_discord_registers_the_admin_group_for_manage_server_only(
    fake: FakeDiscord,  # noqa: F811
    discord_bot: JobStore,
) -> None:
    (admin,) = [c for c in fake.commands if c["name"] == "imagebot-admin"]
    assert str(admin["default_member_permissions"]) == str(
        MANAGE_SERVER
    )  # Discord answers a string, discord.py sends an int
    assert [(o["name"], o["type"]) for o in admin["options"]] == [("usage", 1)]  # a subcommand of the group
    assert admin.get("contexts") in (None, [0]) and admin.get("dm_permission") in (None, False)  # servers only
    assert len(admin["description"]) <= 100 and len(admin["options"][0]["description"]) <= 100


async def test_discord_syncs_again_when_who_may_see_the_admin_command_changes(
    fake: FakeDiscord,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = settings_for(fake, tmp_path)
    async with running(settings) as first:
        assert first.synced is True
    (admin,) = [c for c in fake.commands if c["name"] == "imagebot-admin"]
    admin["default_member_permissions"] = str(MANAGE_SERVER)  # as Discord answers it: a string
    async with running(settings) as second:
        assert second.synced is False
    admin["default_member_permissions"] = "8"  # someone changed it to Administrator: ours must win again
    async with running(settings) as third:
        assert third.synced is True
    fake.assert_no_errors()


async def test_discord_refuses_a_member_without_manage_server(fake: FakeDiscord, discord_bot: JobStore) -> None:  # noqa: F811
    inter = await fake.dispatch_slash_command("imagebot-admin usage", member_permissions=MEMBER_PERMISSIONS)
    callback = await fake.next_callback(inter.id)
    assert callback.type == 4 and callback.data["flags"] == 64  # at once, and only to them
    assert callback.data["content"] == str(DISCORD_REFUSAL)


async def test_discord_shows_an_admin_this_servers_spend(fake: FakeDiscord, discord_bot: JobStore) -> None:  # noqa: F811
    inter = await fake.dispatch_slash_command("imagebot-admin usage", member_permissions=ADMIN_PERMISSIONS)
    callback = await fake.next_callback(inter.id)
    assert (callback.type, callback.data.get("flags")) == (5, 64)  # deferred, ephemeral
    assert callback.latency < 3.0
    sent = await fake.next_webhook_message(inter.id)
    assert_ledger_numbers(sent.content or "", fake.user["id"], BOB["id"], CHANNEL_ID, OTHER_CHANNEL)


# --- Slack -----------------------------------------------------------------------------------------------------

SLACK_BOB, SLACK_OTHER_CHANNEL = "U0HUMAN002", "C0RANDOM01"
WORKSPACE_ADMIN, LISTED_ADMIN = "U0ADMIN001", "U0LISTED01"


@pytest.fixture
async def slack(tmp_path: Path) -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_user(SLACK_BOB, "bob")
        server.add_user(WORKSPACE_ADMIN, "carol", is_admin=True)
        server.add_user(LISTED_ADMIN, "dan")
        async with slack_bot(server, tmp_path / "data", slack={"admins": [LISTED_ADMIN]}) as bot:
            await seed(bot.core.jobs.store, "slack", TEAM_ID, USER_ID, SLACK_BOB, SLACK_CHANNEL, SLACK_OTHER_CHANNEL)
            yield server
        await server.settle()
        server.assert_no_errors()


async def _slack_admin_answer(server: FakeSlack, user: str) -> dict[str, object]:
    before = len(server.responses)
    envelope = await server.send_slash_command("/imagebot-admin", "usage", user_id=user)
    post = await server.wait_for(lambda: server.responses[before] if len(server.responses) > before else None)
    assert envelope.ack is not None and envelope.latency is not None and envelope.latency < 3.0
    assert isinstance(post.body, dict)
    assert post.body["response_type"] == "ephemeral"
    return post.body


async def test_slack_refuses_a_member_who_is_not_an_admin(slack: FakeSlack) -> None:
    answer = await _slack_admin_answer(slack, USER_ID)
    assert answer["text"] == str(SLACK_REFUSAL)
    assert "$" not in str(answer)


@pytest.mark.parametrize("admin", [WORKSPACE_ADMIN, LISTED_ADMIN])
async def test_slack_shows_an_admin_this_workspaces_spend(slack: FakeSlack, admin: str) -> None:
    answer = await _slack_admin_answer(slack, admin)
    assert_ledger_numbers(str(answer["text"]), USER_ID, SLACK_BOB, SLACK_CHANNEL, SLACK_OTHER_CHANNEL)


async def test_slack_admin_command_without_a_known_subcommand_shows_help(slack: FakeSlack) -> None:
    envelope = await slack.send_slash_command("/imagebot-admin", "delete everything", user_id=WORKSPACE_ADMIN)
    post = await slack.wait_for(lambda: slack.responses[-1] if slack.responses else None)
    assert envelope.ack is not None
    assert isinstance(post.body, dict) and "/imagebot-admin usage" in str(post.body["text"])


# --- the text ----------------------------------------------------------------------------------------------------


def test_a_long_list_is_cut_with_a_count_of_the_rest() -> None:
    import datetime as dt

    rows = [UsageRow(f"slack:C{i:03d}", 1, 1, 0.01) for i in range(MAX_ROWS + 5)]
    text = usage_text(MonthUsage(dt.datetime(2026, 11, 1, tzinfo=dt.UTC), rows, rows[:1]))
    assert "and 6 more" in text
    assert text.count("<#C") == MAX_ROWS - 1
    assert len(text) < 2000


def test_nothing_spent_says_so() -> None:
    import datetime as dt

    text = usage_text(MonthUsage(dt.datetime(2026, 11, 1, tzinfo=dt.UTC), [], []))
    assert text == "No images made here in November 2026 (UTC) yet: nothing spent."
