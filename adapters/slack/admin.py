"""``/imagebot-admin usage`` on Slack: this month's spend in this workspace per channel and per user, privately, for
workspace admins and owners (``users.info``) and the user ids listed in the ``slack.admins`` setting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.common import i18n
from adapters.common.admin import month_usage, usage_text
from adapters.common.i18n import _
from adapters.common.lifecycle import friendly
from adapters.slack.errors import translate
from adapters.slack.payloads import reply_to
from adapters.slack.render import escape
from adapters.slack.replies import ACK_WAIT, Outbox, ReplyTo
from bot.ports import JobStore
from bot.text import N_, Text

log = logging.getLogger(__name__)

COMMAND = "/imagebot-admin"
HELP = N_("Admin tools: `{command} usage` shows this month's spend per channel and per user (only you see it).")
NOT_AN_ADMIN = N_("Only workspace admins and owners (or the bot's configured admins) can see the bot's usage.")


class SlackAdmin:
    """The admin command's listener: acknowledge, check the user, answer privately."""

    def __init__(self, store: JobStore, outbox: Outbox, admins: Sequence[str], busy: set[asyncio.Task[Any]]):
        """``busy``: where the answers being made are tracked (the adapter's stop lets them finish)."""
        self.store = store
        self.outbox = outbox
        self.admins = frozenset(admins)
        self.busy = busy

    def register(self, app: AsyncApp) -> None:
        app.command(COMMAND)(self.command)

    async def command(
        self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, context: dict[str, Any]
    ) -> None:
        await ack()  # first, always: the answer follows through the response_url
        task = asyncio.create_task(self._respond(body, client, context))  # bolt sends the ack when this returns
        self.busy.add(task)
        task.add_done_callback(self.busy.discard)

    async def _respond(self, body: dict[str, Any], client: AsyncWebClient, context: dict[str, Any]) -> None:
        to = reply_to(body)
        try:
            text = await self._answer(str(body.get("text") or "").strip().lower(), to, client)
        except Exception as exc:  # nothing may leave a listener after its ack: one friendly line instead
            text = escape(friendly(exc, translate))
        acked = context.get("acked")
        if isinstance(acked, asyncio.Event):  # the answer never overtakes the acknowledgement
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acked.wait(), ACK_WAIT)
        try:
            await self.outbox.say(to, text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])
        except Exception as exc:
            log.warning("could not answer %s (%s)", COMMAND, type(exc).__name__)

    async def _answer(self, subcommand: str, to: ReplyTo, client: AsyncWebClient) -> str:
        """The text to show (Slack mrkdwn): the usage, a refusal, or the help."""
        admin = await self.is_admin(to.user or "", client)  # also sets the user's language
        if subcommand not in ("", "usage"):
            return _(Text(HELP.template, {"command": COMMAND}))
        if not admin:
            log.info("refused %s usage to %s in %s", COMMAND, to.user, to.team)
            return _(NOT_AN_ADMIN)
        return usage_text(await month_usage(self.store, "slack", to.team or ""))

    async def is_admin(self, user: str, client: AsyncWebClient) -> bool:
        """A configured admin, or a workspace admin or owner as Slack says now (``users.info``, which also tells
        the user's language: the answer is in it)."""
        if not user:
            return False
        info = await client.users_info(user=user, include_locale=True)
        profile = info.get("user") or {}
        i18n.use(str(profile.get("locale") or "") or None)
        if user in self.admins:
            return True
        return any(bool(profile.get(flag)) for flag in ("is_admin", "is_owner", "is_primary_owner"))
