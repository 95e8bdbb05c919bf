"""The one place where any failure becomes the text a Slack user sees (always an ``ImageBotError.friendly()``)."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.errors import ImageBotError, UnexpectedError

log = logging.getLogger(__name__)

_NOT_A_MEMBER = ("not_in_channel", "channel_not_found")


class NotInChannelError(ImageBotError):
    """Slack refused a post or upload because the bot is not a member of the conversation."""

    kind = "not_in_channel"
    default_message = "I can't post in this channel yet: invite me to this channel (/invite @imagebot), then try again."


def translate(error: BaseException) -> ImageBotError:
    """Slack and unexpected exceptions into the ``ImageBotError`` tree (ImageBotErrors pass through)."""
    if isinstance(error, ImageBotError):
        return error
    if isinstance(error, SlackApiError):
        code = str(error.response.get("error") or "")
        if code in _NOT_A_MEMBER:
            return NotInChannelError(detail=f"slack api: {code}")
        return UnexpectedError(detail=f"slack api error: {code or error.response.status_code}")
    return UnexpectedError(detail=f"{type(error).__name__}: {error}")


def user_text(error: BaseException) -> str:
    """Log the failure once (redacted, with its ref) and return the friendly line for the user."""
    translated = translate(error)
    if isinstance(translated, UnexpectedError) and translated is not error:
        log.error("%s", translated.log_line(), exc_info=error)
    else:
        log.warning("%s", translated.log_line())
    return translated.friendly()
