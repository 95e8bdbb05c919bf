"""The Discord ``Reply`` implementations: an interaction's response, and a reply to a user's message.

Each reply shows rate-limited progress (at most one edit per interval, the latest status wins), shows the final
answer once, records a delivery attempt before posting a result (``begin_delivery``) and marks it delivered
after. Channel posts carry a nonce derived from the job (``enforce_nonce``), so a post repeated after a crash
is not shown twice. Mentions are off client-wide; a result allows exactly its requester.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from adapters.common import i18n
from adapters.common.i18n import _
from adapters.common.lifecycle import queue_text
from adapters.discord import render
from bot.errors import BusyError
from bot.jobs import JobOutcome, JobService
from bot.metrics import acknowledged
from bot.models import JobStatus, Progress
from bot.text import N_

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60.0 - 30.0  # seconds an interaction token can still edit its response (with a margin)
PROGRESS_INTERVAL = 1.5  # seconds between two progress edits of one message (webhook rate limits)
NONCE_LENGTH = 25  # Discord's limit for a message nonce


@dataclass(frozen=True, slots=True)
class Address:
    """Where a job's answer goes, kept in ``JobContext.reply`` so that a restart can still answer there.

    For an interaction: the application id, the interaction token (a secret for 15 minutes: never logged, kept
    out of ``repr``), the response message and when the interaction was created. For a message reply: the
    user's message.
    """

    kind: str  # "interaction" or "message"
    key: str  # the interaction id or the user's message id: with the job id, it makes the post's nonce
    application_id: int | None = None
    token: str | None = field(default=None, repr=False)
    created_at: float | None = None
    message_id: int | None = None  # the interaction's response message, once known
    locale: str | None = None  # the requester's language: a restart answers in it too
    ephemeral: bool = False  # a private result: only its requester sees it (never posted to the channel)

    def to_json(self) -> str:
        fields = {"kind": self.kind, "key": self.key, "app": self.application_id, "token": self.token}
        private = {"ephemeral": True} if self.ephemeral else {}
        return json.dumps(
            fields | {"created": self.created_at, "message": self.message_id, "locale": self.locale} | private
        )

    @classmethod
    def from_json(cls, text: str | None) -> Address | None:
        try:
            raw = json.loads(text or "")
            return cls(
                str(raw["kind"]), str(raw["key"]), raw.get("app"), raw.get("token"), raw.get("created"),
                raw.get("message"), raw.get("locale"), bool(raw.get("ephemeral", False)),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def token_alive(self, lifetime: float) -> bool:
        return self.token is not None and self.created_at is not None and time.time() - self.created_at < lifetime


def nonce_for(job_id: str, address: Address | None, purpose: str = "result") -> str:
    """The same nonce for the same post of the same job, in this process or after a restart."""
    key = f"{purpose}:{job_id}:{address.key if address else ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:NONCE_LENGTH]


def requester_only(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(users=[discord.Object(user_id)])


@dataclass(slots=True)
class Delivery:
    """What every reply needs: the client to post with, the core's jobs, and the timings."""

    client: discord.Client
    jobs: JobService
    token_lifetime: float = TOKEN_LIFETIME
    progress_interval: float = PROGRESS_INTERVAL

    async def post_to_channel(self, channel_id: int, rendered: render.Rendered, user_id: int, nonce: str) -> None:
        """A channel message naming (and allowing a mention of) the requester only."""
        channel = self.client.get_partial_messageable(channel_id)
        content = rendered.content
        if f"<@{user_id}>" not in content:
            content = f"<@{user_id}> {content}"[: render.MESSAGE_LIMIT]
        options: dict[str, Any] = {"files": rendered.files} if rendered.files else {}
        if rendered.view is not None:
            options["view"] = rendered.view
        await channel.send(content, allowed_mentions=requester_only(user_id), nonce=nonce, **options)

    async def post_privately(self, rendered: render.Rendered, user_id: int, nonce: str) -> None:
        """A private result whose interaction expired goes to the requester's DM, never to the channel."""
        channel = await self.client.create_dm(discord.Object(user_id))
        options: dict[str, Any] = {"files": rendered.files} if rendered.files else {}
        if rendered.view is not None:
            options["view"] = rendered.view
        await channel.send(rendered.content, nonce=nonce, **options)


Show = Callable[[str, bytes | None, str | None], Awaitable[None]]  # text, preview, job a Cancel button names


class Throttle:
    """Progress edits at most once per ``interval`` (the latest status and preview win), never waiting on Discord:
    the core awaits progress inline, so edits run in a background task."""

    def __init__(self, show: Show, header: str, interval: float) -> None:
        self._show = show
        self._header = header
        self._interval = interval
        self._latest: str | None = None
        self._preview: bytes | None = None
        self._shown: str | None = None
        # the first edit also waits an interval: "thinking…" is shown meanwhile, and a burst of new
        # interactions gets its defers out before any progress edit competes with them
        self._last = asyncio.get_running_loop().time()
        self._task: asyncio.Task[None] | None = None
        self._cancellable: str | None = None  # the queued job a Cancel button under the status may take back
        self._sending = False
        self._closed = False
        self._locale = i18n.current()  # the core may report progress from another task: keep the reader's language

    async def __call__(self, update: Progress) -> None:
        if update.status is JobStatus.QUEUED and update.position:
            text = queue_text(update.position, update.eta_seconds, self._locale)
            self._cancellable = update.job_id
        elif update.status is JobStatus.RUNNING:
            text = _("Generating…", self._locale)
            self._cancellable = None
        else:
            return
        self._latest = text
        if update.preview is not None:
            self._preview = update.preview
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._flush(), name="discord-progress")

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._latest is not None and not self._closed:
            wait = self._last + self._interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            text, self._latest = self._latest, None
            preview, self._preview = self._preview, None
            if text is None or (text == self._shown and preview is None) or self._closed:
                continue
            self._last, self._shown, self._sending = loop.time(), text, True
            try:
                await self._show(render.with_note(self._header, f"-# {text}"), preview, self._cancellable)
            except Exception as exc:  # a status line or preview that can't be shown must not cost the job
                log.debug("discord: progress not shown (%s)", type(exc).__name__)
            finally:
                self._sending = False

    async def close(self) -> None:
        """Stop updating; an edit already on its way finishes first (so it cannot overwrite the answer)."""
        self._closed = True
        task = self._task
        if task is None or task.done():
            return
        if not self._sending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _JobReply:
    """The part both replies share: progress through a throttle, the result recorded around its post."""

    private = False  # results only the requester sees, with a Publish button

    def __init__(self, delivery: Delivery, header: str, user_id: int, size_limit: int) -> None:
        self.delivery = delivery
        self.user_id = user_id
        self.size_limit = size_limit
        self._throttle = Throttle(self._show_progress, header, delivery.progress_interval)

    async def progress(self, update: Progress) -> None:
        await self._throttle(update)

    async def finish(self, outcome: JobOutcome) -> None:
        await self._throttle.close()
        job, user = outcome.job, str(self.user_id)
        if outcome.needs_confirmation:
            await self.show(render.render_confirmation(job, user), job.id)
            return
        if outcome.result is None:
            raise BusyError(N_("I'm already working on that same request; its result will appear there."))
        rendered = await render.render_result(job, outcome.result, user, self.size_limit, publish=self.private)
        jobs = self.delivery.jobs
        await jobs.begin_delivery(job.id)
        await self.show(rendered, job.id)
        await jobs.mark_delivered(job.id)

    async def fail(self, text: str) -> None:
        await self._throttle.close()
        await self._fail(text[: render.MESSAGE_LIMIT])

    async def show(self, rendered: render.Rendered, job_id: str) -> None:
        raise NotImplementedError

    async def _show_progress(self, text: str, preview: bytes | None, cancellable: str | None) -> None:
        return None

    async def _fail(self, text: str) -> None:
        raise NotImplementedError


class InteractionReply(_JobReply):
    """The interaction's response (deferred first); once the token has expired, a channel message naming the user."""

    def __init__(
        self, delivery: Delivery, interaction: discord.Interaction, header: str, *, private: bool = False
    ) -> None:
        super().__init__(delivery, header, interaction.user.id, interaction.filesize_limit)
        self.interaction = interaction
        self.response_message: int | None = None
        self.private = private

    @property
    def address(self) -> Address:
        inter = self.interaction
        return Address(
            "interaction", str(inter.id), inter.application_id, inter.token, inter.created_at.timestamp(),
            self.response_message, i18n.negotiate(inter.locale.value), self.private,
        )  # fmt: skip

    @property
    def expired(self) -> bool:
        """The token lives 15 minutes from the interaction's creation (its snowflake's time)."""
        age = (discord.utils.utcnow() - self.interaction.created_at).total_seconds()
        return age > self.delivery.token_lifetime

    async def defer(self, *, thinking: bool = True) -> None:
        """Acknowledge now; remember the response message (a restart edits it)."""
        if thinking:
            callback = await self.interaction.response.defer(thinking=True, ephemeral=self.private)
            self.response_message = callback.message_id if callback is not None else None
        else:
            await self.interaction.response.defer()
            message = self.interaction.message
            self.response_message = message.id if message is not None else None
        acknowledged()

    async def _show_progress(self, text: str, preview: bytes | None, cancellable: str | None) -> None:
        if self.expired:
            return
        # a queued job shows a Cancel button; once it runs, the button goes (it would only say "too late")
        view = render.cancel_view(cancellable) if cancellable is not None else None
        if preview is None:
            await self.interaction.edit_original_response(content=text, view=view)
            return
        file = await render.preview_file(preview, self.size_limit)
        await self.interaction.edit_original_response(content=text, attachments=[file], view=view)

    async def show(self, rendered: render.Rendered, job_id: str) -> None:
        if not self.expired:
            try:
                await self.interaction.edit_original_response(
                    content=rendered.content,
                    attachments=rendered.files,
                    view=rendered.view,
                    allowed_mentions=requester_only(self.user_id),
                )
                return
            except (discord.NotFound, discord.Forbidden) as exc:  # the token died early: fall back
                log.warning("discord: cannot edit interaction response (%s); posting to the channel", exc.status)
            except discord.HTTPException as exc:
                if exc.status != 401:
                    raise
                log.warning("discord: interaction token rejected; posting to the channel")
        for file in rendered.files:
            file.reset()
        await self._to_channel(rendered, nonce_for(job_id, self.address))

    async def _fail(self, text: str) -> None:
        if not self.interaction.response.is_done():
            await self.interaction.response.send_message(text, ephemeral=True)
        elif not self.expired:
            await self.interaction.edit_original_response(content=text, attachments=[], view=None)
        else:
            rendered = render.Rendered(text, [], None)
            await self._to_channel(rendered, nonce_for(str(self.interaction.id), None, "failure"))

    async def _to_channel(self, rendered: render.Rendered, nonce: str) -> None:
        if self.private:
            await self.delivery.post_privately(rendered, self.user_id, nonce)
            return
        channel = self.interaction.channel_id
        if channel is None:
            raise BusyError(N_("I couldn't post the result here."), detail="no channel to post to")
        await self.delivery.post_to_channel(channel, rendered, self.user_id, nonce)


class MessageReply(_JobReply):
    """A reply to a user's message, posted once when the answer is ready: no progress edits, which keeps the
    bot's channel traffic (and its global rate limit) low."""

    def __init__(self, delivery: Delivery, message: discord.Message, header: str) -> None:
        guild = message.guild
        limit = guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        super().__init__(delivery, header, message.author.id, limit)
        self.message = message

    @property
    def address(self) -> Address:
        return Address("message", str(self.message.id), message_id=self.message.id)

    async def show(self, rendered: render.Rendered, job_id: str) -> None:
        options: dict[str, Any] = {"view": rendered.view} if rendered.view is not None else {}
        await self.message.reply(
            rendered.content,
            files=rendered.files,
            mention_author=False,
            allowed_mentions=requester_only(self.user_id),
            nonce=nonce_for(job_id, self.address),
            **options,
        )

    async def _fail(self, text: str) -> None:
        await self.message.reply(text, mention_author=False, nonce=nonce_for(str(self.message.id), None, "failure"))
