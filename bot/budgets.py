"""Spending limits: images and dollars per user per day, per workspace and overall per month (UTC).

A request that would cross a limit is refused before any API call, saying which limit and when it resets.
"""

from __future__ import annotations

import datetime as dt
import math

from bot.errors import ImageBotError
from bot.models import JobContext
from bot.ports import JobStore
from bot.settings import BudgetSettings
from bot.text import N_, NP_, Text


class BudgetExceededError(ImageBotError):
    """A configured spending limit would be crossed by this request."""

    kind = "quota_exceeded"

    def __init__(self, message: Text | str, *, resets_at: dt.datetime, detail: str = ""):
        self.resets_at = resets_at
        super().__init__(message, detail=detail)


def format_dollars(amount: float) -> str:
    """Money for people: "$12.50", "$0.06"; under a cent with two significant digits ("$0.001", "$0.0042").

    Every message that states an amount uses this, so a tenth of a cent is never shown as "$0.00".
    """
    if amount < 0:
        return "-" + format_dollars(-amount)
    if amount == 0 or amount >= 0.01:
        return f"${amount:,.2f}"
    decimals = 1 - math.floor(math.log10(amount))  # two significant digits
    text = f"{amount:.{decimals}f}".rstrip("0")
    return "$" + (text + "0" if text.endswith(".0") else text)


def day_window(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Start of today and of tomorrow, UTC."""
    start = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + dt.timedelta(days=1)


def month_window(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Start of this month and of the next, UTC."""
    start = now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start + dt.timedelta(days=32)).replace(day=1)
    return start, following


def _when(reset: dt.datetime, now: dt.datetime) -> Text:
    left = reset - now
    hours, rest = divmod(int(left.total_seconds()), 3600)
    minutes = rest // 60
    span = (
        N_("{hours} h {minutes} min", hours=hours, minutes=minutes)
        if hours
        else N_("{minutes} min", minutes=max(1, minutes))
    )
    if reset - now <= dt.timedelta(days=1):
        return N_("at {time} UTC (in {span})", time=f"{reset:%H:%M}", span=span)
    return N_("on {date} at {time} UTC", date=f"{reset:%Y-%m-%d}", time=f"{reset:%H:%M}")


async def check_budgets(
    store: JobStore,
    limits: BudgetSettings,
    context: JobContext,
    *,
    images: int,
    estimate: float | None,
    now: dt.datetime,
) -> None:
    """Raise ``BudgetExceededError`` if this request would cross any configured limit."""
    cost = estimate or 0.0
    day_start, day_end = day_window(now)
    month_start, month_end = month_window(now)

    if limits.images_per_user_per_day or limits.dollars_per_user_per_day:
        spent = await store.spend(day_start.timestamp(), context=context, per="user")
        cap = limits.images_per_user_per_day
        if cap and spent.images + images > cap:
            left = max(0, cap - spent.images)
            raise BudgetExceededError(
                NP_(
                    "You've reached your limit of {count} image per day ({left} left, this request needs {images}). "
                    "It resets {when}.",
                    "You've reached your limit of {count} images per day ({left} left, this request needs {images}). "
                    "It resets {when}.",
                    cap,
                    left=left,
                    images=images,
                    when=_when(day_end, now),
                ),
                resets_at=day_end,
                detail=f"{context.requester}: {spent.images} images today, asked {images}, cap {cap}",
            )
        dollars = limits.dollars_per_user_per_day
        if dollars and spent.dollars + cost > dollars:
            raise BudgetExceededError(
                N_(
                    "This would go over your daily image budget of {budget} (used {used}, this request ≈ {cost}). "
                    "It resets {when}.",
                    budget=format_dollars(dollars),
                    used=format_dollars(spent.dollars),
                    cost=format_dollars(cost),
                    when=_when(day_end, now),
                ),
                resets_at=day_end,
                detail=f"{context.requester}: ${spent.dollars:.4f} today + ${cost:.4f} > ${dollars}",
            )
    if limits.dollars_per_workspace_per_month and context.workspace:
        spent = await store.spend(month_start.timestamp(), context=context, per="workspace")
        dollars = limits.dollars_per_workspace_per_month
        if spent.dollars + cost > dollars:
            raise BudgetExceededError(
                N_(
                    "This server or workspace has used its monthly image budget ({budget}). It resets {when}.",
                    budget=format_dollars(dollars),
                    when=_when(month_end, now),
                ),
                resets_at=month_end,
                detail=f"{context.platform}:{context.workspace}: ${spent.dollars:.4f} + ${cost:.4f} > ${dollars}",
            )
    if limits.dollars_per_month:
        spent = await store.spend(month_start.timestamp())
        dollars = limits.dollars_per_month
        if spent.dollars + cost > dollars:
            raise BudgetExceededError(
                N_(
                    "The bot has used its monthly image budget ({budget}). It resets {when}.",
                    budget=format_dollars(dollars),
                    when=_when(month_end, now),
                ),
                resets_at=month_end,
                detail=f"all: ${spent.dollars:.4f} + ${cost:.4f} > ${dollars}",
            )
