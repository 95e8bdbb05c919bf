"""Slack's own failures in the ``ImageBotError`` tree (everything else is ``adapters.common.lifecycle``'s)."""

from __future__ import annotations

from slack_sdk.errors import SlackApiError

from bot.errors import ImageBotError, UnexpectedError
from bot.text import N_

_NOT_A_MEMBER = ("not_in_channel", "channel_not_found")


class NotInChannelError(ImageBotError):
    """Slack refused a post or upload because the bot is not a member of the conversation."""

    kind = "not_in_channel"
    default_message = N_(
        "I can't post in this channel yet: invite me to this channel (/invite @imagebot), then try again."
    )


def translate(error: BaseException) -> ImageBotError | None:
    """A Slack Web API error as an ``ImageBotError`` (None: not Slack's, the lifecycle wraps it)."""
    if not isinstance(error, SlackApiError):
        return None
    code = str(error.response.get("error") or "")
    if code in _NOT_A_MEMBER:
        return NotInChannelError(detail=f"slack api: {code}")
    return UnexpectedError(detail=f"slack api error: {code or error.response.status_code}")
