"""Every entry point — slash commands, message menus, modals, buttons, replies and mentions — turned into a core
request and a ``Reply``, then run to exactly one answer by ``adapters.common.lifecycle.answer``.

Order on every interaction: the access policy (a refusal is the ephemeral first response), then the
acknowledgement (``defer`` or a modal) before any I/O, then the work.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from adapters.common import i18n
from adapters.common.access import AccessPolicy, Requester
from adapters.common.ackgate import AckGate
from adapters.common.i18n import _
from adapters.common.lifecycle import answer
from adapters.common.story import tool_title
from adapters.discord import render
from adapters.discord.commands import MAX_COUNT
from adapters.discord.components import EditModal, RemixModal
from adapters.discord.files import Attachments, first_image
from adapters.discord.replies import Address, Delivery, InteractionReply, MessageReply, nonce_for
from bot.bootstrap import Core
from bot.errors import BusyError, ImageBotError, InvalidImageError, JobCancelledError, TooLateToCancelError
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import EditRequest, GenerateRequest, Job, JobContext, JobStatus, Origin, VaryRequest
from bot.ports import ProgressSink
from bot.text import N_

log = logging.getLogger(__name__)

_MENTION = re.compile(r"<@!?\d+>")
_PICK = re.compile(r"^\s*[vVuU]?([1-9])\b")
Submit = Callable[[JobContext, ProgressSink], Awaitable[JobOutcome]]
# the buttons under an upscaled image: custom_id action -> variation strength, zoom factor or pan direction
_UPSCALE_TOOLS = {
    "vs": "subtle",
    "vt": "strong",
    "z15": "1.5",
    "z2": "2",
    "pl": "left",
    "pr": "right",
    "pu": "up",
    "pd": "down",
}


def translate(error: BaseException) -> ImageBotError | None:
    """discord.py wraps a command's exception; the user sees the original's words."""
    if isinstance(error, app_commands.CommandInvokeError) and isinstance(error.original, ImageBotError):
        return error.original
    return None


def requester_of(user: discord.abc.User, guild_id: int | None, channel: object, channel_id: int | None) -> Requester:
    parent = getattr(channel, "parent_id", None)
    roles = frozenset(str(role.id) for role in getattr(user, "roles", []))
    return Requester(
        platform="discord",
        user=str(user.id),
        workspace=str(guild_id) if guild_id else None,
        channel=str(channel_id) if channel_id else None,
        parent_channel=str(parent) if parent else None,
        roles=roles,
        direct=guild_id is None,
    )


def interaction_requester(interaction: discord.Interaction) -> Requester:
    return requester_of(interaction.user, interaction.guild_id, interaction.channel, interaction.channel_id)


class Listeners:
    """Handlers for every entry point (commands.CommandHandlers and components.Handlers)."""

    def __init__(self, core: Core, policy: AccessPolicy, delivery: Delivery) -> None:
        self.core = core
        self.policy = policy
        self.delivery = delivery
        self.attachments: Attachments | None = None  # set by the adapter at start (it owns the HTTP session)
        self.undeferred = AckGate()  # interactions whose defer has not gone yet: the work waits for none

    @property
    def client(self) -> discord.Client:
        return self.delivery.client

    # --- helpers ---------------------------------------------------------------------------------------------

    async def refused(self, interaction: discord.Interaction) -> bool:
        """Whether the access policy refuses this interaction (then it has been told, ephemerally)."""
        i18n.use(interaction.locale.value)  # every interaction passes here or reply_for first: answer in its language
        reason = self.policy.refusal(interaction_requester(interaction))
        if reason is None:
            return False
        if interaction.type is not discord.InteractionType.autocomplete:
            await interaction.response.send_message(_(reason), ephemeral=True)
        return True

    async def read(self, attachment: discord.Attachment) -> bytes:
        if self.attachments is None:
            raise ImageBotError(
                N_("I'm still starting up. Please try again in a moment."), detail="no download session"
            )
        return await self.attachments.read(attachment)

    def count(self, count: int | None) -> int:
        return count if count is not None else min(self.core.settings.default_n, MAX_COUNT)

    def reply_for(self, interaction: discord.Interaction, heading: str, *, private: bool = False) -> InteractionReply:
        i18n.use(interaction.locale.value)
        header = render.result_text(heading, str(interaction.user.id))
        return InteractionReply(self.delivery, interaction, header, private=private)

    def private_by_default(self, interaction: discord.Interaction) -> bool:
        """The server's default for ``/imagine``'s ``private`` option (settings: discord.private_*)."""
        settings = self.core.settings.discord
        guild = interaction.guild_id
        return settings.private_by_default or (guild is not None and str(guild) in settings.private_guilds)

    def context_for(
        self, reply: InteractionReply | MessageReply, user: int, guild: int | None, channel: int | None
    ) -> JobContext:
        return JobContext(
            platform="discord",
            user=str(user),
            workspace=str(guild) if guild else None,
            channel=str(channel) if channel else None,
            reply=reply.address.to_json(),
        )

    async def run(
        self,
        interaction: discord.Interaction,
        heading: str,
        prepare: Callable[[], Awaitable[Submit]],
        *,
        thinking: bool = True,
        private: bool = False,
    ) -> None:
        """The one path of an interaction that makes images: defer, prepare (downloads), submit, answer."""
        reply = self.reply_for(interaction, heading, private=private)

        async def work(sink: ProgressSink) -> JobOutcome:
            self.undeferred.enter()
            try:
                await reply.defer(thinking=thinking)
            finally:
                self.undeferred.leave()
            await self.undeferred.quiet()  # a burst's defers go out before the jobs' work takes the loop
            submit = await prepare()
            context = self.context_for(reply, interaction.user.id, interaction.guild_id, interaction.channel_id)
            return await submit(context, sink)

        await answer(reply, work, translate=translate)

    # --- slash commands and menus (already checked by the tree's interaction_check) ---------------------------

    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        count: int | None,
        size: str | None,
        quality: str | None,
        model: str | None,
        private: bool | None = None,
    ) -> None:
        request = GenerateRequest(prompt=prompt, n=self.count(count), size=size, quality=quality, model=model)
        hidden = self.private_by_default(interaction) if private is None else private
        await self.run(interaction, prompt, self._submitting(request), private=hidden)

    async def history(self, interaction: discord.Interaction) -> None:
        """``/history``: the user's last jobs, only to them, with links and Open buttons."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        reply = self.reply_for(interaction, "", private=True)

        async def work(sink: ProgressSink) -> None:
            jobs = await self.core.jobs.history(user=f"discord:{interaction.user.id}", limit=render.HISTORY_SIZE)
            rendered = render.render_history(jobs, message_link)
            options: dict[str, Any] = {"view": rendered.view} if rendered.view is not None else {}
            await interaction.edit_original_response(content=rendered.content, **options)

        await answer(reply, work, translate=translate)

    async def vary(
        self, interaction: discord.Interaction, image: discord.Attachment, count: int | None, prompt: str | None
    ) -> None:
        async def prepare() -> Submit:
            data = await self.read(image)
            return await self._submitting(VaryRequest(image=data, n=self.count(count), prompt=prompt))()

        await self.run(interaction, prompt or _("Variations"), prepare)

    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None,
        region: str | None,
    ) -> None:
        async def prepare() -> Submit:
            data = await self.read(image)
            mask_data = await self.read(mask) if mask is not None else None
            request = EditRequest(images=(data,), prompt=prompt, mask=mask_data, region=region)
            return await self._submitting(request)()

        await self.run(interaction, prompt, prepare)

    async def vary_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        image = first_image(message)
        mine = self.client.user is not None and message.author.id == self.client.user.id
        found = render.job_in_components(message.components) if mine else None
        if image is None and found is not None:
            job_id, indexes = found
            await self._vary_result(interaction, job_id, indexes[0] if indexes else 1, None)
            return

        async def prepare() -> Submit:
            if image is None:
                raise InvalidImageError(N_("That message has no image I can vary."))
            data = await self.read(image)
            return await self._submitting(VaryRequest(image=data, n=self.count(None)))()

        await self.run(interaction, _("Variations"), prepare)

    async def edit_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        reply = self.reply_for(interaction, _("Edit image"))

        async def work(sink: ProgressSink) -> None:
            if first_image(message) is None:
                raise InvalidImageError(N_("That message has no image I can edit."))
            await interaction.response.send_modal(EditModal(message))  # a modal must be the first response

        await answer(reply, work, translate=translate)

    def _submitting(self, request: GenerateRequest | VaryRequest | EditRequest) -> Callable[[], Awaitable[Submit]]:
        async def prepare() -> Submit:
            return lambda context, sink: self.core.jobs.submit(context, request, sink)

        return prepare

    async def _vary_result(self, interaction: discord.Interaction, job_id: str, index: int, prompt: str | None) -> None:
        async def prepare() -> Submit:
            return lambda context, sink: self.core.jobs.vary_result(job_id, index, context, sink, prompt=prompt)

        await self.run(interaction, prompt or _(N_("Variations of image #{index}", index=index)), prepare)

    # --- buttons and modals ----------------------------------------------------------------------------------

    async def _pressable(
        self, interaction: discord.Interaction, job_id: str, *, owner_only: bool = False
    ) -> Job | None:
        """The job behind a button, or None after telling the presser (ephemerally) why not."""
        who = interaction_requester(interaction)
        reason = self.policy.refusal(who)
        job = None if reason else await self.core.jobs.find(job_id)
        if reason is None and job is None:
            reason = JobNotFoundError().friendly_text()
        if reason is None and job is not None:
            reason = self.policy.may_press(job, who, owner_only=owner_only)
        if reason is not None:
            await interaction.response.send_message(_(reason), ephemeral=True)
            return None
        return job

    async def result_button(self, interaction: discord.Interaction, action: str, job_id: str, index: int) -> None:
        reply = self.reply_for(interaction, "")

        async def work(sink: ProgressSink) -> None:
            job = await self._pressable(interaction, job_id)
            if job is not None:
                await self._press(interaction, job, action, index)

        await answer(reply, work, translate=translate)

    async def _press(self, interaction: discord.Interaction, job: Job, action: str, index: int) -> None:
        if action == "x":
            await interaction.response.send_modal(RemixModal(job.id, job.prompt))
        elif action == "v":
            await self._vary_result(interaction, job.id, index, None)
        elif action in _UPSCALE_TOOLS:
            await self._upscale_tool(interaction, job, action, index)
        elif action == "r":
            reroll = job.id

            async def prepare() -> Submit:
                return lambda context, sink: self.core.jobs.reroll(reroll, context, sink)

            await self.run(interaction, job.prompt, prepare)
        else:
            await self._upscale(interaction, job, index)

    async def _upscale_tool(self, interaction: discord.Interaction, job: Job, action: str, index: int) -> None:
        """Vary (Subtle/Strong), Zoom out or Pan under an upscaled image: a new job made from image ``index``."""
        tool = _UPSCALE_TOOLS[action]
        source = job.id

        async def prepare() -> Submit:
            jobs = self.core.jobs
            if tool in ("subtle", "strong"):
                return lambda context, sink: jobs.vary_result(source, index, context, sink, strength=tool)
            if tool in ("1.5", "2"):
                return lambda context, sink: jobs.outpaint(source, index, context, sink, zoom=float(tool))
            return lambda context, sink: jobs.outpaint(source, index, context, sink, pan=tool)

        await self.run(interaction, tool_title(tool, index), prepare)

    async def _upscale(self, interaction: discord.Interaction, job: Job, index: int) -> None:
        reply = self.reply_for(interaction, job.prompt)

        async def work(sink: ProgressSink) -> None:
            await reply.defer()
            if job.results_pruned or not 1 <= index <= len(job.results):
                raise JobNotFoundError(detail=f"job {job.id} has no image {index}")
            result = await self.core.jobs.result_of(job)
            user = str(interaction.user.id)
            await reply.show(await render.render_result(job, result, user, reply.size_limit, only=index), job.id)

        await answer(reply, work, translate=translate)

    async def confirm_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        reply = self.reply_for(interaction, "")

        async def work(sink: ProgressSink) -> None:
            job = await self._pressable(interaction, job_id, owner_only=True)  # their money, their call
            if job is None:
                return
            if action == "no":
                await self._cancel(interaction, job)
                return
            confirmed = job.id

            async def prepare() -> Submit:
                return lambda context, sink: self.core.jobs.confirm(confirmed, context, sink)

            # the confirmation message itself becomes the result
            await self.run(interaction, job.prompt, prepare, thinking=False)

        await answer(reply, work, translate=translate)

    async def job_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        """Publish (a private result, to the channel) or Open (a result from /history, again, privately)."""
        reply = self.reply_for(interaction, "", private=True)

        async def work(sink: ProgressSink) -> None:
            job = await self._pressable(interaction, job_id, owner_only=True)
            if job is None:
                return
            if action == "pub":
                await self._publish(interaction, job)
            else:
                await reply.defer()
                result = await self.core.jobs.result_of(job)
                user = str(interaction.user.id)
                await reply.show(await render.render_result(job, result, user, reply.size_limit), job.id)

        await answer(reply, work, translate=translate)

    async def _publish(self, interaction: discord.Interaction, job: Job) -> None:
        """Post a private result to the channel it was asked in, crediting its requester; the private copy
        loses its Publish button (one post per result: the nonce is the job's)."""
        await interaction.response.defer()
        channel = interaction.channel_id
        if channel is None:
            raise BusyError(N_("I can't post here."), detail="publish without a channel")
        result = await self.core.jobs.result_of(job)
        rendered = await render.render_result(job, result, job.context.user, interaction.filesize_limit)
        user = int(job.context.user)  # the post credits (and may mention) its requester
        await self.delivery.post_to_channel(channel, rendered, user, nonce_for(job.id, None, "publish"))
        private = await render.render_result(job, result, job.context.user, interaction.filesize_limit)
        await interaction.edit_original_response(view=private.view)
        await interaction.followup.send(_("Published to the channel."), ephemeral=True)

    async def _cancel(self, interaction: discord.Interaction, job: Job) -> None:
        """Cancel on a held or queued job. A queued job's own request answers on its message ("Cancelled");
        a held one has no request running, so this press says it."""
        await interaction.response.defer()
        held = job.status is JobStatus.AWAITING_CONFIRMATION
        try:
            await self.core.jobs.cancel(job.id)
        except TooLateToCancelError as exc:
            await interaction.followup.send(_(exc.text), ephemeral=True)
            return
        if held:
            await interaction.edit_original_response(content=_(JobCancelledError().text), view=None)

    async def stale_form(self, interaction: discord.Interaction, kind: str, reference: str) -> None:
        """The submit of a form opened before a restart: a remix runs from what it carries (the job id and the
        prompt); an edit needs the message it was opened on, which the form no longer has: ask to reopen it."""
        data: dict[str, Any] = dict(interaction.data or {})
        prompt = submitted_value(data.get("components"), "prompt")
        if kind == "remix" and prompt and prompt.strip():
            await self.remix_submit(interaction, reference, prompt.strip())
            return
        i18n.use(interaction.locale.value)
        await interaction.response.send_message(
            _("That form was opened before I restarted, so I lost what it was for. Please open it again."),
            ephemeral=True,
        )

    async def remix_submit(self, interaction: discord.Interaction, job_id: str, prompt: str) -> None:
        async def prepare() -> Submit:
            return lambda context, sink: self.core.jobs.remix(job_id, prompt, context, sink)

        if not await self.refused(interaction):
            await self.run(interaction, prompt, prepare)

    async def edit_submit(
        self,
        interaction: discord.Interaction,
        target: discord.Message,
        prompt: str,
        region: str | None,
        masks: list[discord.Attachment],
    ) -> None:
        async def prepare() -> Submit:
            image = first_image(target)
            if image is None:
                raise InvalidImageError(N_("That message has no image I can edit."))
            data = await self.read(image)
            mask = await self.read(masks[0]) if masks else None
            origin = self._edit_origin(target, region)
            request = EditRequest(images=(data,), prompt=prompt, mask=mask, region=region, origin=origin)
            return await self._submitting(request)()

        if not await self.refused(interaction):
            await self.run(interaction, prompt, prepare)

    def _edit_origin(self, target: discord.Message, region: str | None) -> Origin | None:
        """An edit of one of our results (its first image) says so in its title: "Edit of image 1 (top-half)"."""
        mine = self.client.user is not None and target.author.id == self.client.user.id
        found = render.job_in_components(target.components) if mine else None
        if found is None:
            return None
        job_id, indexes = found
        return Origin(job_id, indexes[0] if indexes else 1, "edit", region or "")

    # --- replies and mentions --------------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """A reply to one of our results (or to an image, mentioning us) gets variations, as a reply."""
        me = self.client.user
        reference = message.reference
        if me is None or message.author.bot or reference is None or reference.message_id is None:
            return
        guild = message.guild.id if message.guild else None
        if self.policy.refusal(requester_of(message.author, guild, message.channel, message.channel.id)):
            return  # silently: a reply in a channel the bot isn't enabled in is just conversation
        referenced = reference.resolved
        if not isinstance(referenced, discord.Message):
            try:
                referenced = await message.channel.fetch_message(reference.message_id)
            except discord.HTTPException:
                return
        found = render.job_in_components(referenced.components) if referenced.author.id == me.id else None
        mentioned = any(user.id == me.id for user in message.mentions)
        own_image = first_image(message)
        if found is None and not (mentioned and (own_image or first_image(referenced))):
            return
        await self._reply(message, referenced, found)

    async def _reply(
        self, message: discord.Message, referenced: discord.Message, found: tuple[str, list[int]] | None
    ) -> None:
        text = _MENTION.sub("", message.content).strip()
        own_image = first_image(message)
        user = str(message.author.id)
        submit: Submit
        if own_image is None and found is not None:
            job_id, indexes = found
            pick = _PICK.match(text)
            index = int(pick[1]) if pick and int(pick[1]) in indexes else (indexes[0] if indexes else 1)
            prompt = (_PICK.sub("", text, count=1).strip() if pick else text) or None
            heading = prompt or _(N_("Variations of image #{index}", index=index))

            def submit(context: JobContext, sink: ProgressSink) -> Awaitable[JobOutcome]:
                return self.core.jobs.vary_result(job_id, index, context, sink, prompt=prompt)
        else:
            heading = text or _("Variations")
            submit = self._vary_upload(own_image or first_image(referenced), text)
        reply = MessageReply(self.delivery, message, render.result_text(heading, user))
        guild = message.guild.id if message.guild else None
        context = self.context_for(reply, message.author.id, guild, message.channel.id)
        await answer(reply, lambda sink: submit(context, sink), translate=translate)

    def _vary_upload(self, image: discord.Attachment | None, text: str) -> Submit:
        async def submit(context: JobContext, sink: ProgressSink) -> JobOutcome:
            if image is None:
                raise InvalidImageError(N_("That message has no image I can vary."))
            request = VaryRequest(image=await self.read(image), n=self.count(None), prompt=text or None)
            return await self.core.jobs.submit(context, request, sink)

        return submit


def submitted_value(components: object, custom_id: str) -> str | None:
    """The value a modal submit carries for ``custom_id`` (text inputs may sit in rows or labels)."""
    if isinstance(components, list):
        for component in components:
            found = submitted_value(component, custom_id)
            if found is not None:
                return found
    elif isinstance(components, dict):
        if components.get("custom_id") == custom_id and isinstance(components.get("value"), str):
            return str(components["value"])
        for key in ("components", "component"):
            found = submitted_value(components.get(key), custom_id)
            if found is not None:
                return found
    return None


def message_link(job: Job) -> str | None:
    """The Discord link to a job's result message, when it was the response to an interaction in a server."""
    address = Address.from_json(job.context.reply)
    if address is None or address.message_id is None or address.ephemeral or not job.context.channel:
        return None
    return f"https://discord.com/channels/{job.context.workspace or '@me'}/{job.context.channel}/{address.message_id}"
