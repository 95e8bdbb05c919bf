"""After a restart, or after this process took over the jobs of one that died: results finished but never
delivered are posted once, and users whose job was cut off are told once.

A job with a delivery attempt may already be on Discord (the process died between the post and marking it
delivered): look first — the interaction's response while its token lives, else the channel's recent messages —
for a component carrying the job id, and post only if it isn't there. Channel posts carry the job's nonce with
``enforce_nonce``, so Discord itself drops a repeat made within its dedupe window.
"""

from __future__ import annotations

import logging

import discord

from adapters.common import i18n
from adapters.common.lifecycle import cut_off_text
from adapters.common.redelivery import Coalesced
from adapters.discord import render
from adapters.discord.replies import Address, Delivery, nonce_for, requester_only
from bot.errors import ImageBotError
from bot.models import ImageResult, Job

log = logging.getLogger(__name__)

HISTORY_DEPTH = 50  # recent channel messages searched for an earlier post of a result


class Recovery:
    """Start-up work of the Discord adapter."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.woken = Coalesced(self.run)  # at start, and whenever the core took over jobs of a process that died

    def watch(self) -> None:
        """Be woken while running too: jobs taken over from a process that died are posted (or told) here."""
        self.delivery.jobs.add_deliverer("discord", self.woken)

    def unwatch(self) -> None:
        self.delivery.jobs.remove_deliverer("discord")

    async def run(self) -> None:
        with i18n.speaking(None):  # each job is answered in its requester's language, none leaks out
            delivered = await self.redeliver()
            told = await self.tell_cut_off()
        if delivered or told:
            log.info("discord: after the restart, delivered %d result(s) and told %d user(s)", delivered, told)

    # --- results finished but not delivered ------------------------------------------------------------------

    async def redeliver(self) -> int:
        delivered = 0
        jobs = self.delivery.jobs
        for job, result in await jobs.undelivered("discord"):
            try:
                if job.delivery_attempts > 0 and await self.already_posted(job):
                    log.info("discord: job %s was already on Discord; not posting it again", job.id)
                else:
                    await jobs.begin_delivery(job.id)
                    if not await self._post(job, result):
                        continue
                await jobs.mark_delivered(job.id)
                delivered += 1
            except (discord.HTTPException, ImageBotError) as exc:
                log.warning("discord: could not redeliver job %s (%s)", job.id, type(exc).__name__)
        return delivered

    async def already_posted(self, job: Job) -> bool:
        address = Address.from_json(job.context.reply)
        live = address is not None and address.token_alive(self.delivery.token_lifetime)
        if address is not None and live and address.message_id is not None:
            try:
                original = await self._webhook(address).fetch_message(address.message_id)
            except discord.NotFound:
                original = None
            if original is not None and _carries(original, job.id):
                return True
        if not job.context.channel:
            return False
        me = self.delivery.client.user
        channel = self.delivery.client.get_partial_messageable(int(job.context.channel))
        async for message in channel.history(limit=HISTORY_DEPTH):
            if me is not None and message.author.id == me.id and _carries(message, job.id):
                return True
        return False

    async def _post(self, job: Job, result: ImageResult) -> bool:
        address = Address.from_json(job.context.reply)
        i18n.use(address.locale if address else None)  # the requester's language, as before the restart
        user = int(job.context.user)
        limit = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        private = address is not None and address.ephemeral
        rendered = await render.render_result(job, result, job.context.user, limit, publish=private)
        if address is not None and address.message_id is not None and address.token_alive(self.delivery.token_lifetime):
            await self._webhook(address).edit_message(
                address.message_id,
                content=rendered.content,
                attachments=rendered.files,
                view=rendered.view,
                allowed_mentions=requester_only(user),
            )
            return True
        if private:  # a private result never goes to the channel: to the requester's DM instead
            await self.delivery.post_privately(rendered, user, nonce_for(job.id, address))
            return True
        if not job.context.channel:
            log.warning("discord: job %s has nowhere to be delivered", job.id)
            return False
        await self.delivery.post_to_channel(int(job.context.channel), rendered, user, nonce_for(job.id, address))
        return True

    # --- jobs a restart cut off ----------------------------------------------------------------------------

    async def tell_cut_off(self) -> int:
        told = 0
        jobs = self.delivery.jobs
        for job in await jobs.cut_off("discord"):
            try:
                if await self._tell(job):
                    told += 1
                await jobs.mark_notified(job.id)
            except (discord.HTTPException, ImageBotError) as exc:
                log.warning("discord: could not tell the user of job %s (%s)", job.id, type(exc).__name__)
        return told

    async def _tell(self, job: Job) -> bool:
        address = Address.from_json(job.context.reply)
        i18n.use(address.locale if address else None)
        user = int(job.context.user)
        if address is not None and address.message_id is not None and address.token_alive(self.delivery.token_lifetime):
            try:
                await self._webhook(address).edit_message(
                    address.message_id, content=cut_off_notice(job), attachments=[], view=None
                )
                return True
            except (discord.NotFound, discord.Forbidden):
                log.info("discord: the response of job %s is gone; telling the user in the channel", job.id)
        notice = render.Rendered(cut_off_notice(job), [], None)
        nonce = nonce_for(job.id, address, "cut-off")
        if address is not None and address.ephemeral:
            await self.delivery.post_privately(notice, user, nonce)
            return True
        if not job.context.channel:
            log.info("discord: job %s was cut off with no channel to tell its user in", job.id)
            return False
        await self.delivery.post_to_channel(int(job.context.channel), notice, user, nonce)
        return True

    def _webhook(self, address: Address) -> discord.Webhook:
        """The interaction's webhook: it edits and reads the response while the token lives."""
        return discord.Webhook.partial(address.application_id or 0, address.token or "", client=self.delivery.client)


def cut_off_notice(job: Job) -> str:
    """The shared wording, with the prompt's markdown escaped (mentions are off client-wide)."""
    return discord.utils.escape_markdown(cut_off_text(job))[: render.MESSAGE_LIMIT]


def _carries(message: discord.Message, job_id: str) -> bool:
    found = render.job_in_components(message.components)
    return found is not None and found[0] == job_id
