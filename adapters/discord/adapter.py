"""DiscordAdapter: a discord.Client + CommandTree on the process's event loop, driving the core's JobService.

Every interaction is acknowledged first (``defer`` or a modal, before any I/O), attachments are downloaded at
once from Discord's own hosts only, and results replace the deferred response (or, past the 15-minute
interaction token, arrive as a channel message that mentions the user). Errors become a reply in one place:
``report_error``.

Intents are the defaults (no privileged intent). Replies to the bot's results are seen because a reply pings
its author; a reply with the ping turned off only arrives with its text and images if the application has the
Message Content intent (then add ``intents.message_content = True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord
import yarl
from discord import app_commands

from adapters.base import AdapterState
from adapters.common.access import NOT_IN_DMS, AccessPolicy
from adapters.discord import render
from adapters.discord.commands import MAX_COUNT, install_commands
from adapters.discord.components import ConfirmButton, EditModal, RemixModal, ResultButton
from adapters.discord.registration import ensure_commands
from bot.bootstrap import Core
from bot.errors import (
    BusyError,
    ConfigurationError,
    ImageBotError,
    InvalidImageError,
    UnexpectedError,
)
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import EditRequest, GenerateRequest, Job, JobContext, JobStatus, Progress, VaryRequest
from bot.ports import ProgressSink
from bot.settings import Settings

log = logging.getLogger(__name__)

CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net", "cdn.discord.com", "media.discord.net"})
TOKEN_LIFETIME = 15 * 60.0 - 30.0  # seconds an interaction token can still edit its response (with a margin)
PROGRESS_INTERVAL = 1.5  # seconds between two progress edits of one message (webhook rate limits)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_MENTION = re.compile(r"<@!?\d+>")
_PICK = re.compile(r"^\s*[vVuU]?([1-9])\b")
Work = Callable[[ProgressSink], Awaitable[JobOutcome]]


def apply_endpoints(settings: Settings) -> None:
    """Point discord.py at DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL (each only when set)."""
    if settings.discord_api_base_url:
        discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def context_of(user: discord.abc.User, guild_id: int | None, channel_id: int | None) -> JobContext:
    return JobContext(
        platform="discord",
        user=str(user.id),
        workspace=str(guild_id) if guild_id else None,
        channel=str(channel_id) if channel_id else None,
    )


def is_image(attachment: discord.Attachment) -> bool:
    kind = attachment.content_type or ""
    return kind.startswith("image/") or attachment.filename.lower().endswith(_IMAGE_EXTENSIONS)


def friendly(error: BaseException) -> str:
    """The only text a user sees for a failure: ``ImageBotError.friendly()``, logged with its reference."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if not isinstance(error, ImageBotError):
        wrapped = UnexpectedError(detail=f"{type(error).__name__}: {error}")
        log.error("discord: unexpected %s (ref %s)", wrapped.detail, wrapped.ref, exc_info=error)
        return wrapped.friendly()
    log.warning("discord: %s", error.log_line())
    return error.friendly()


# --- where a job's messages go ---------------------------------------------------------------------------------


class Target(Protocol):
    """Where one job's progress, result or error is shown."""

    size_limit: int

    async def progress(self, text: str, preview: bytes | None = None) -> None:
        """Show a status line (and, if given, a preview image in place of any earlier one)."""
        ...

    async def finish(self, rendered: render.Rendered) -> None: ...

    async def fail(self, text: str) -> None: ...


class InteractionTarget:
    """The deferred response of an interaction; after the token expires, a channel message mentioning the user."""

    def __init__(self, adapter: DiscordAdapter, interaction: discord.Interaction) -> None:
        self.adapter = adapter
        self.interaction = interaction
        self.size_limit = interaction.filesize_limit

    @property
    def expired(self) -> bool:
        """The token lives 15 minutes from the interaction's creation (its snowflake's time)."""
        age = (discord.utils.utcnow() - self.interaction.created_at).total_seconds()
        return age > self.adapter.token_lifetime

    async def progress(self, text: str, preview: bytes | None = None) -> None:
        if self.expired:
            return
        if preview is None:
            await self.interaction.edit_original_response(content=text)
            return
        file = await render.preview_file(preview, self.size_limit)
        await self.interaction.edit_original_response(content=text, attachments=[file])

    async def finish(self, rendered: render.Rendered) -> None:
        if not self.expired:
            try:
                await self.interaction.edit_original_response(
                    content=rendered.content,
                    attachments=rendered.files,
                    view=rendered.view,
                    allowed_mentions=discord.AllowedMentions.none(),
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
        await self.adapter.post_to_channel(self.interaction.channel_id, rendered, self.interaction.user.id)

    async def fail(self, text: str) -> None:
        if not self.interaction.response.is_done():
            await self.interaction.response.send_message(text, ephemeral=True)
        elif not self.expired:
            await self.interaction.edit_original_response(content=text, attachments=[], view=None)
        else:
            rendered = render.Rendered(f"<@{self.interaction.user.id}> {text}", [], None)
            await self.adapter.post_to_channel(self.interaction.channel_id, rendered, self.interaction.user.id)


class MessageTarget:
    """A reply to a user's message. It is posted once, when the result (or an error) is ready: no progress
    edits, which keeps the bot's channel traffic (and its global rate limit) low."""

    def __init__(self, message: discord.Message) -> None:
        self.message = message
        guild = message.guild
        self.size_limit = guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def progress(self, text: str, preview: bytes | None = None) -> None:
        return None

    async def finish(self, rendered: render.Rendered) -> None:
        options: dict[str, Any] = {"view": rendered.view} if rendered.view is not None else {}
        await self.message.reply(
            rendered.content,
            files=rendered.files,
            mention_author=False,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )

    async def fail(self, text: str) -> None:
        await self.message.reply(text, mention_author=False, allowed_mentions=discord.AllowedMentions.none())


class ProgressUpdater:
    """A ProgressSink that edits the target with the latest status, at most once per ``interval`` seconds.

    The core awaits it inline, so it never waits on Discord: edits happen in a background task. Previews
    ride on the same edits: when several arrive within one interval, only the latest is shown.
    """

    def __init__(self, target: Target, header: str, interval: float) -> None:
        self.target = target
        self.header = header
        self.interval = interval
        self._latest: str | None = None
        self._preview: bytes | None = None
        self._shown: str | None = None
        # the first edit also waits an interval: "thinking…" is shown meanwhile, and a burst of new
        # interactions gets its defers out before any progress edit competes with them
        self._last = asyncio.get_running_loop().time()
        self._task: asyncio.Task[None] | None = None
        self._sending = False
        self._closed = False

    async def __call__(self, update: Progress) -> None:
        if update.status is JobStatus.QUEUED and update.position:
            text = f"Queued — #{update.position} in line"
        elif update.status is JobStatus.RUNNING:
            text = "Generating…"
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
            wait = self._last + self.interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            text, self._latest = self._latest, None
            preview, self._preview = self._preview, None
            if text is None or (text == self._shown and preview is None) or self._closed:
                continue
            self._last, self._shown, self._sending = loop.time(), text, True
            try:
                await self.target.progress(render.with_note(self.header, f"-# {text}"), preview)
            except discord.HTTPException as exc:
                log.debug("discord: progress edit failed: %s", exc.status)
            except ImageBotError as exc:  # a preview that cannot be shown is skipped, the job goes on
                log.debug("discord: preview not shown: %s", exc.log_line())
            finally:
                self._sending = False

    async def close(self) -> None:
        """Stop updating; an edit already on its way finishes first (so it cannot overwrite the result)."""
        self._closed = True
        task = self._task
        if task is None or task.done():
            return
        if not self._sending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the client ----------------------------------------------------------------------------------------------


class ImageClient(discord.Client):
    """discord.Client with the adapter reachable from every interaction (``interaction.client.handlers``)."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(intents=discord.Intents.default(), **options)
        self.handlers = adapter
        self.adapter = adapter

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ResultButton, ConfirmButton)

    async def on_ready(self) -> None:
        self.adapter.connected = True

    async def on_resumed(self) -> None:
        self.adapter.connected = True

    async def on_disconnect(self) -> None:
        self.adapter.connected = False

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)


class ImageTree(app_commands.CommandTree[ImageClient]):
    """Refuses users the operator did not allow, and routes command errors to ``report_error``."""

    async def interaction_check(self, interaction: discord.Interaction[ImageClient]) -> bool:
        reason = interaction.client.adapter.refusal(interaction)
        if reason is None:
            return True
        if interaction.type is not discord.InteractionType.autocomplete:
            await interaction.response.send_message(reason, ephemeral=True)
        return False

    async def on_error(
        self, interaction: discord.Interaction[ImageClient], error: app_commands.AppCommandError
    ) -> None:
        adapter = interaction.client.adapter
        await adapter.report_error(InteractionTarget(adapter, interaction), error)


# --- the adapter ---------------------------------------------------------------------------------------------


class DiscordAdapter:
    """The Discord adapter: ``start()`` logs in, connects, syncs commands if needed and redelivers results."""

    def __init__(
        self,
        core: Core,
        settings: Settings,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
        token_lifetime: float = TOKEN_LIFETIME,
        ready_timeout: float = 60.0,
        **client_options: Any,
    ) -> None:
        self.core = core
        self.settings = settings
        self.progress_interval = progress_interval
        self.token_lifetime = token_lifetime
        self.ready_timeout = ready_timeout
        self.client = ImageClient(self, **client_options)
        self.tree = ImageTree(self.client)
        install_commands(self.tree, self, settings)
        self.connected = False
        self.synced: bool | None = None  # whether start() had to sync the commands
        self._state = AdapterState.STOPPED
        self._connection: asyncio.Task[None] | None = None
        self._allowed_hosts = set(CDN_HOSTS)
        if settings.discord_api_base_url:
            host = urllib.parse.urlsplit(settings.discord_api_base_url).hostname
            if host:
                self._allowed_hosts.add(host)

    # --- Adapter protocol ----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "discord"

    @property
    def state(self) -> AdapterState:
        if self._state is AdapterState.CONNECTED and not self.connected:
            return AdapterState.DISCONNECTED
        return self._state

    async def start(self) -> None:
        self._state = AdapterState.STARTING
        apply_endpoints(self.settings)
        await self.login()
        self._connection = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        await asyncio.wait({ready, self._connection}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            failure = self._connection.exception() if self._connection.done() else None
            await self.stop()
            raise ConfigurationError(
                "Couldn't connect to Discord. Check DISCORD_TOKEN and the network.", detail=repr(failure)
            )
        self._state = AdapterState.CONNECTED
        try:
            self.synced = await ensure_commands(self.tree)
        except discord.HTTPException as exc:
            log.warning("discord: could not check the registered commands (%s %s)", exc.status, exc.code)
        await self.redeliver()

    async def stop(self) -> None:
        self._state = AdapterState.STOPPING
        await self.client.close()
        if self._connection is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._connection
            self._connection = None
        self.connected = False
        self._state = AdapterState.STOPPED

    async def login(self) -> None:
        token = self.settings.discord_token
        if token is None:
            raise ConfigurationError("DISCORD_TOKEN is not set", detail="the Discord adapter needs DISCORD_TOKEN")
        try:
            await self.client.login(token.get_secret_value())
        except discord.LoginFailure:
            await self.client.close()
            self._state = AdapterState.STOPPED
            raise ConfigurationError(
                "Discord rejected DISCORD_TOKEN. Copy the bot token again from the Developer Portal.",
                detail="discord login failed (401)",
            ) from None

    # --- delivery --------------------------------------------------------------------------------------------

    async def redeliver(self) -> int:
        """Post results a previous process finished but never delivered, into their channels."""
        delivered = 0
        for job, result in await self.core.jobs.undelivered("discord"):
            if not job.context.channel:
                continue
            try:
                rendered = await render.render_result(
                    job, result, job.context.user, discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
                )
                await self.post_to_channel(int(job.context.channel), rendered, int(job.context.user))
                await self.core.jobs.mark_delivered(job.id)
                delivered += 1
            except (discord.HTTPException, ImageBotError) as exc:
                log.warning("discord: could not redeliver job %s: %s", job.id, getattr(exc, "status", exc))
        if delivered:
            log.info("discord: delivered %d result(s) left over from before the restart", delivered)
        return delivered

    async def post_to_channel(self, channel_id: int | None, rendered: render.Rendered, user_id: int) -> None:
        if channel_id is None:
            raise BusyError("I couldn't post the result here.", detail="no channel to post to")
        channel = self.client.get_partial_messageable(int(channel_id))
        content = rendered.content
        if f"<@{user_id}>" not in content:
            content = f"<@{user_id}> {content}"[: render.MESSAGE_LIMIT]
        options: dict[str, Any] = {"files": rendered.files} if rendered.files else {}
        if rendered.view is not None:
            options["view"] = rendered.view
        await channel.send(
            content, allowed_mentions=discord.AllowedMentions(users=[discord.Object(user_id)]), **options
        )

    async def run_job(self, target: Target, user_id: int, header: str, work: Work) -> None:
        """Run one job with progress shown on ``target``, then show its result (or its confirmation)."""
        updater = ProgressUpdater(target, header, self.progress_interval)
        try:
            outcome = await work(updater)
        finally:
            await updater.close()
        await self.deliver(target, outcome, user_id)

    async def deliver(self, target: Target, outcome: JobOutcome, user_id: int) -> None:
        job = outcome.job
        if outcome.needs_confirmation:
            await target.finish(render.render_confirmation(job, str(user_id)))
            return
        if outcome.result is None:
            raise BusyError("I'm already working on that same request; its result will appear there.")
        rendered = await render.render_result(job, outcome.result, str(user_id), target.size_limit)
        await target.finish(rendered)
        await self.core.jobs.mark_delivered(job.id)

    async def report_error(self, target: Target, error: BaseException) -> None:
        """The one place a failure becomes a reply: friendly text with a reference, nothing else."""
        if self.client.is_closed():  # stopping: the job was cut short, there is no connection to answer on
            log.info("discord: stopped before a reply could be sent (%s)", type(error).__name__)
            return
        text = friendly(error)
        try:
            await target.fail(text[: render.MESSAGE_LIMIT])
        except discord.HTTPException as exc:
            log.warning("discord: could not show an error to the user (%s %s)", exc.status, exc.code)

    async def guarded(self, target: Target, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:
            await self.report_error(target, exc)

    # --- access ----------------------------------------------------------------------------------------------

    def refusal(self, interaction: discord.Interaction[Any]) -> str | None:
        channel = interaction.channel
        parent = getattr(channel, "parent_id", None)
        return self._refusal(interaction.guild_id, interaction.channel_id, parent, interaction.user)

    def _refusal(
        self, guild_id: int | None, channel_id: int | None, parent_id: int | None, user: discord.abc.User
    ) -> str | None:
        rules = self.settings.discord
        if guild_id is None:
            return None if AccessPolicy(rules, self.settings.slack).dms_allowed() else NOT_IN_DMS
        if rules.allowed_guilds and str(guild_id) not in rules.allowed_guilds:
            return "I'm not enabled on this server."
        if rules.allowed_channels and not {str(channel_id), str(parent_id)} & set(rules.allowed_channels):
            return "I'm not enabled in this channel. Try another one."
        if rules.allowed_roles:
            roles = {str(role.id) for role in getattr(user, "roles", [])}
            if not roles & set(rules.allowed_roles):
                return "You need one of the roles allowed to make images here."
        return None

    def _may_press(self, interaction: discord.Interaction, job: Job) -> str | None:
        if job.context.user == str(interaction.user.id) or self.settings.discord.others_may_press:
            return None
        return f"Only <@{job.context.user}> can use these buttons. Make your own with /imagine."

    async def download(self, attachment: discord.Attachment) -> bytes:
        """An attachment's bytes, fetched at once and only from Discord's own hosts."""
        host = urllib.parse.urlsplit(attachment.url).hostname or ""
        if host not in self._allowed_hosts:
            raise InvalidImageError(
                "I can only use images uploaded to Discord.", detail=f"refused attachment host {host!r}"
            )
        if not is_image(attachment):
            raise InvalidImageError("That file isn't an image. Send a PNG, JPEG, WebP or GIF.")
        if attachment.size > self.settings.imaging.max_input_bytes:
            raise InvalidImageError(detail=f"attachment of {attachment.size} bytes")
        try:
            return await attachment.read()
        except discord.HTTPException as exc:
            raise InvalidImageError(
                "I couldn't download that image (its link may have expired). Please upload it again.",
                detail=f"CDN answered {exc.status}",
            ) from None

    # --- commands ----------------------------------------------------------------------------------------------

    def _interaction_job(self, interaction: discord.Interaction, header: str, start: Work) -> Awaitable[None]:
        target = InteractionTarget(self, interaction)
        return self.run_job(target, interaction.user.id, header, start)

    def _context(self, interaction: discord.Interaction) -> JobContext:
        return context_of(interaction.user, interaction.guild_id, interaction.channel_id)

    def _count(self, count: int | None) -> int:
        return count if count is not None else min(self.settings.default_n, MAX_COUNT)

    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        count: int | None,
        size: str | None,
        quality: str | None,
        model: str | None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        request = GenerateRequest(prompt=prompt, n=self._count(count), size=size, quality=quality, model=model)
        context = self._context(interaction)
        header = render.result_text(prompt, str(interaction.user.id))
        await self._interaction_job(interaction, header, lambda sink: self.core.jobs.submit(context, request, sink))

    async def vary(
        self, interaction: discord.Interaction, image: discord.Attachment, count: int | None, prompt: str | None
    ) -> None:
        await interaction.response.defer(thinking=True)
        data = await self.download(image)
        await self._vary_bytes(interaction, data, self._count(count), prompt)

    async def _vary_bytes(self, interaction: discord.Interaction, data: bytes, n: int, prompt: str | None) -> None:
        request = VaryRequest(image=data, n=n, prompt=prompt)
        context = self._context(interaction)
        header = render.result_text(prompt or "Variations", str(interaction.user.id))
        await self._interaction_job(interaction, header, lambda sink: self.core.jobs.submit(context, request, sink))

    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None,
        region: str | None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        data = await self.download(image)
        mask_data = await self.download(mask) if mask is not None else None
        await self._edit_bytes(interaction, data, prompt, mask_data, region)

    async def _edit_bytes(
        self, interaction: discord.Interaction, data: bytes, prompt: str, mask: bytes | None, region: str | None
    ) -> None:
        request = EditRequest(images=(data,), prompt=prompt, mask=mask, region=region)
        context = self._context(interaction)
        header = render.result_text(prompt, str(interaction.user.id))
        await self._interaction_job(interaction, header, lambda sink: self.core.jobs.submit(context, request, sink))

    async def vary_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.defer(thinking=True)
        image = _first_image(message)
        found = render.job_in_components(message.components) if _is_mine(self.client, message) else None
        if image is not None:
            await self._vary_bytes(interaction, await self.download(image), self._count(None), None)
            return
        if found is None:
            raise InvalidImageError("That message has no image I can vary.")
        job_id, indexes = found
        await self._vary_result(interaction, job_id, indexes[0] if indexes else 1, None)

    async def edit_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        if _first_image(message) is None:
            raise InvalidImageError("That message has no image I can edit.")
        await interaction.response.send_modal(EditModal(message))  # a modal must be the first response

    # --- buttons and modals ----------------------------------------------------------------------------------

    async def _pressable_job(self, interaction: discord.Interaction, job_id: str) -> Job | None:
        """The job behind a button, or None after telling the presser (ephemerally) why not."""
        reason = self.refusal(interaction)
        job = None if reason else await self.core.jobs.find(job_id)
        if reason is None and job is None:
            reason = JobNotFoundError().friendly()
        if reason is None and job is not None:
            reason = self._may_press(interaction, job)
        if reason is not None:
            await interaction.response.send_message(reason, ephemeral=True)
            return None
        return job

    async def result_button(self, interaction: discord.Interaction, action: str, job_id: str, index: int) -> None:
        await self.guarded(
            InteractionTarget(self, interaction), self._result_button(interaction, action, job_id, index)
        )

    async def _result_button(self, interaction: discord.Interaction, action: str, job_id: str, index: int) -> None:
        job = await self._pressable_job(interaction, job_id)
        if job is None:
            return
        if action == "x":
            await interaction.response.send_modal(RemixModal(job.id, job.prompt))
            return
        await interaction.response.defer(thinking=True)
        context = self._context(interaction)
        user = str(interaction.user.id)
        if action == "u":
            if job.results_pruned or not 1 <= index <= len(job.results):
                raise JobNotFoundError(detail=f"job {job.id} has no image {index}")
            result = await self.core.jobs.result_of(job)
            target = InteractionTarget(self, interaction)
            await target.finish(await render.render_result(job, result, user, target.size_limit, only=index))
        elif action == "v":
            await self._vary_result(interaction, job.id, index, None)
        else:
            header = render.result_text(job.prompt, user)
            await self._interaction_job(interaction, header, lambda sink: self.core.jobs.reroll(job.id, context, sink))

    async def _vary_result(self, interaction: discord.Interaction, job_id: str, index: int, prompt: str | None) -> None:
        context = self._context(interaction)
        header = render.result_text(prompt or f"Variations of image #{index}", str(interaction.user.id))
        await self._interaction_job(
            interaction,
            header,
            lambda sink: self.core.jobs.vary_result(job_id, index, context, sink, prompt=prompt),
        )

    async def confirm_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        await self.guarded(InteractionTarget(self, interaction), self._confirm_button(interaction, action, job_id))

    async def _confirm_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        job = await self._pressable_job(interaction, job_id)
        if job is None:
            return
        await interaction.response.defer()  # the confirmation message itself becomes the result
        if action == "no":
            await self.core.jobs.cancel(job.id)
            await interaction.edit_original_response(content="Cancelled — nothing was spent.", view=None)
            return
        context = self._context(interaction)
        header = render.result_text(job.prompt, str(interaction.user.id))
        await self._interaction_job(interaction, header, lambda sink: self.core.jobs.confirm(job.id, context, sink))

    async def remix_submit(self, interaction: discord.Interaction, job_id: str, prompt: str) -> None:
        await self.guarded(InteractionTarget(self, interaction), self._remix_submit(interaction, job_id, prompt))

    async def _remix_submit(self, interaction: discord.Interaction, job_id: str, prompt: str) -> None:
        await interaction.response.defer(thinking=True)
        context = self._context(interaction)
        header = render.result_text(prompt, str(interaction.user.id))
        await self._interaction_job(
            interaction, header, lambda sink: self.core.jobs.remix(job_id, prompt, context, sink)
        )

    async def edit_submit(
        self,
        interaction: discord.Interaction,
        target: discord.Message,
        prompt: str,
        region: str | None,
        masks: list[discord.Attachment],
    ) -> None:
        await self.guarded(
            InteractionTarget(self, interaction), self._edit_submit(interaction, target, prompt, region, masks)
        )

    async def _edit_submit(
        self,
        interaction: discord.Interaction,
        target: discord.Message,
        prompt: str,
        region: str | None,
        masks: list[discord.Attachment],
    ) -> None:
        await interaction.response.defer(thinking=True)
        image = _first_image(target)
        if image is None:
            raise InvalidImageError("That message has no image I can edit.")
        data = await self.download(image)
        mask = await self.download(masks[0]) if masks else None
        await self._edit_bytes(interaction, data, prompt, mask, region)

    # --- replies ---------------------------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """A reply to one of our results (or to an image, mentioning us) gets variations, as a reply."""
        me = self.client.user
        if me is None or message.author.bot or message.reference is None or message.reference.message_id is None:
            return
        channel = message.channel
        if self._refusal(message.guild.id if message.guild else None, channel.id, getattr(channel, "parent_id", None),
                         message.author):  # fmt: skip
            return
        target = MessageTarget(message)
        await self.guarded(target, self._reply(message, target, me))

    async def _reply(self, message: discord.Message, target: MessageTarget, me: discord.ClientUser) -> None:
        reference = message.reference
        referenced = reference.resolved if reference is not None else None
        if not isinstance(referenced, discord.Message):
            if reference is None or reference.message_id is None:
                return
            try:
                referenced = await message.channel.fetch_message(reference.message_id)
            except discord.HTTPException:
                return
        found = render.job_in_components(referenced.components) if referenced.author.id == me.id else None
        mentioned = any(user.id == me.id for user in message.mentions)
        text = _MENTION.sub("", message.content).strip()
        own_image = _first_image(message)
        if found is None and not (mentioned and (own_image or _first_image(referenced))):
            return
        context = context_of(message.author, message.guild.id if message.guild else None, message.channel.id)
        user = str(message.author.id)
        if own_image is None and found is not None:
            job_id, indexes = found
            pick = _PICK.match(text)
            index = int(pick[1]) if pick and int(pick[1]) in indexes else (indexes[0] if indexes else 1)
            text = _PICK.sub("", text, count=1).strip() if pick else text
            prompt = text or None
            header = render.result_text(prompt or f"Variations of image #{index}", user)
            await self.run_job(
                target,
                message.author.id,
                header,
                lambda sink: self.core.jobs.vary_result(job_id, index, context, sink, prompt=prompt),
            )
            return
        image = own_image or _first_image(referenced)
        if image is None:
            return
        request = VaryRequest(image=await self.download(image), n=self._count(None), prompt=text or None)
        header = render.result_text(text or "Variations", user)
        await self.run_job(
            target, message.author.id, header, lambda sink: self.core.jobs.submit(context, request, sink)
        )


def _first_image(message: discord.Message) -> discord.Attachment | None:
    return next((a for a in message.attachments if is_image(a)), None)


def _is_mine(client: discord.Client, message: discord.Message) -> bool:
    return client.user is not None and message.author.id == client.user.id
