"""The admin's view on every platform: this month's spend in one workspace (a Discord server or a Slack workspace)
per channel and per user, as one short text. Discord and Slack write mentions the same way (``<#C>``, ``<@U>``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from babel.dates import format_date

from adapters.common import i18n
from adapters.common.i18n import _
from bot.budgets import month_window
from bot.models import UsageRow
from bot.ports import JobStore
from bot.text import N_, NP_, Text

MAX_ROWS = 10  # per table: the message stays short (Discord's limit is 2000 characters)


@dataclass(frozen=True, slots=True)
class MonthUsage:
    since: dt.datetime
    by_channel: list[UsageRow]
    by_user: list[UsageRow]


async def month_usage(
    store: JobStore, platform: str, workspace: str, *, now: Callable[[], dt.datetime] | None = None
) -> MonthUsage:
    """Paid jobs of this calendar month (UTC) in ``workspace`` of ``platform``, per channel and per user."""
    since = month_window((now or _utc_now)())[0]
    where = (platform, workspace)
    by_channel = await store.usage(since.timestamp(), by="channel", workspace=where)
    by_user = await store.usage(since.timestamp(), by="user", workspace=where)
    return MonthUsage(since, by_channel, by_user)


def usage_text(usage: MonthUsage) -> str:
    """The admin's message: totals, then the biggest spenders per channel and per user."""
    jobs = sum(row.jobs for row in usage.by_user)
    images = sum(row.images for row in usage.by_user)
    dollars = sum(row.dollars for row in usage.by_user)
    month = format_date(usage.since, "MMMM y", locale=i18n.current())  # "November 2026", "novembre 2026"
    if not jobs:
        return _(N_("No images made here in {month} (UTC) yet: nothing spent.", month=month))
    spent = N_(
        "Spend in {month} (UTC) here: {dollars} for {images} in {jobs}.",
        month=month,
        dollars=_money(dollars),
        images=_images(images),
        jobs=NP_("{count} job", "{count} jobs", jobs),
    )
    lines = [_(spent)]
    lines += ["", _("By channel:"), *_rows(usage.by_channel, _channel)]
    lines += ["", _("By user:"), *_rows(usage.by_user, _user)]
    return "\n".join(lines)


def _rows(rows: Sequence[UsageRow], label: Callable[[str], str]) -> list[str]:
    shown = [f"• {label(_id(row.key))}: {_money(row.dollars)} · {_(_images(row.images))}" for row in rows]
    if len(shown) > MAX_ROWS:
        hidden = len(shown) - MAX_ROWS + 1
        more = N_("and {hidden} more (`imagebot usage` on the server lists them all)", hidden=hidden)
        shown = [*shown[: MAX_ROWS - 1], f"• {_(more)}"]
    return shown


def _id(key: str) -> str:
    """``discord:123`` -> ``123`` (the store's keys carry the platform)."""
    return key.partition(":")[2]


def _channel(channel: str) -> str:
    return _("direct messages") if channel in ("", "-") else f"<#{channel}>"


def _user(user: str) -> str:
    return f"<@{user}>"


def _money(dollars: float) -> str:
    return f"${dollars:,.2f}" if dollars >= 1 else f"${dollars:.4f}"


def _images(number: int) -> Text:
    return NP_("{count} image", "{count} images", number)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
