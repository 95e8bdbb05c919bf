"""How the Slack adapter answers: ephemeral notes (response_url or chat.postEphemeral) and results
(files_upload_v2 then a buttons message), and ``SlackReply``, the lifecycle's ``Reply`` for Slack."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.common.access import Requester
from adapters.common.i18n import _
from adapters.slack import render
from adapters.slack.state import SlackState
from bot.jobs import JobOutcome, JobService
from bot.models import ImageResult, Job, JobContext, JobStatus, Progress

log = logging.getLogger(__name__)

WEB_API_TIMEOUT = 30  # seconds per Web API call, upload or response_url post
ACK_WAIT = 3.5  # seconds a reply waits for its request's acknowledgement to be sent (bolt polls every 10 ms)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Who acted and where answers go (a response_url when Slack gave one)."""

    team: str | None = None
    user: str | None = None
    channel: str | None = None
    thread: str | None = None
    response_url: str | None = None

    def context(self) -> JobContext:
        return JobContext("slack", self.user or "unknown", self.team, self.channel, self.thread)

    def requester(self) -> Requester:
        return Requester("slack", self.user or "unknown", workspace=self.team, channel=self.channel)


class Outbox:
    """Everything the adapter posts to Slack. ``store`` is the adapter's state, open while it runs."""

    def __init__(self, jobs: JobService, client: AsyncWebClient, session: aiohttp.ClientSession):
        self.jobs = jobs
        self.client = client
        self.session = session
        self.store: SlackState | None = None

    def reply(self, to: ReplyTo, acked: asyncio.Event | None = None) -> SlackReply:
        return SlackReply(self, to, acked)

    async def say(
        self, to: ReplyTo, text: str, *, replace: bool = False, blocks: Any = None, mentions: tuple[str, ...] = ()
    ) -> None:
        """An ephemeral message to the user: via response_url when there is one, else chat.postEphemeral."""
        message = render.notice(text, mentions=mentions) if blocks is None else {"text": text, "blocks": blocks}
        if to.response_url:
            webhook = AsyncWebhookClient(to.response_url, session=self.session, timeout=WEB_API_TIMEOUT)
            await webhook.send(response_type="ephemeral", replace_original=replace, **message)
        elif to.channel and to.user:
            await self.client.chat_postEphemeral(channel=to.channel, user=to.user, thread_ts=to.thread, **message)

    async def deliver(self, job: Job, result: ImageResult) -> None:
        """Record the attempt, upload the images into the job's conversation, mark it delivered, then the buttons."""
        await self.jobs.begin_delivery(job.id)
        uploaded = await self.client.files_upload_v2(**render.upload_args(job, result))
        await self.jobs.mark_delivered(job.id)
        files = uploaded.get("files") or []
        if files and not job.context.thread:
            await self._remember_upload(job.context.channel or "", str(files[0].get("id")), job.id)
        await self.post_controls(job, result)

    async def open_dm(self, user: str) -> str:
        """The id of the bot's DM with ``user`` (conversations.open: needs the im:write scope)."""
        opened = await self.client.conversations_open(users=user)
        return str((opened.get("channel") or {}).get("id") or "")

    async def upload_copy(self, job: Job, channel: str) -> None:
        """The images of a finished job uploaded again, to ``channel`` (a Share, or an Open from /history)."""
        result = await self.jobs.result_of(job)
        copy = dataclasses.replace(job, context=dataclasses.replace(job.context, channel=channel, thread=None))
        await self.client.files_upload_v2(**render.upload_args(copy, result))

    async def post_controls(self, job: Job, result: ImageResult) -> None:
        """The buttons under a result (the job id in their values and in the message metadata)."""
        channel = job.context.channel or ""
        if self.store is not None and job.context.thread:
            await self.store.remember(channel, job.context.thread, job.id)
        posted = await self.client.chat_postMessage(**render.controls_message(job, result))
        if self.store is not None:
            await self.store.remember(channel, str(posted["ts"]), job.id)

    async def post_upscale(self, job: Job, index: int, to: ReplyTo) -> None:
        """U<index>: that image on its own, titled with its story, then its tools (Vary, Zoom out, Pan, Remix)."""
        image = await self.jobs.result_image(job.id, index)
        channel = to.channel or job.context.channel or ""
        await self.client.files_upload_v2(**render.upscale_upload_args(job, index, image, channel, to.thread))
        posted = await self.client.chat_postMessage(**render.upscale_controls(job, index, channel, to.thread))
        if self.store is not None:
            await self.store.remember(channel, str(posted["ts"]), job.id)

    async def _remember_upload(self, channel: str, file_id: str, job_id: str) -> None:
        """The image message's ts (the SDK doesn't return it): from the file's shares, best effort."""
        if self.store is None:
            return
        try:
            info = await self.client.files_info(file=file_id)
        except SlackApiError as exc:
            log.info("no ts for uploaded file %s: %s", file_id, exc.response.get("error"))
            return
        data: dict[str, Any] = info.data if isinstance(info.data, dict) else {}
        shares = (data.get("file") or {}).get("shares") or {}
        for kind in ("public", "private"):
            for share in shares.get(kind, {}).get(channel, []):
                await self.store.remember(channel, str(share.get("ts")), job_id)


class SlackReply:
    """The lifecycle's ``Reply`` on Slack: progress and failures privately, results in the conversation."""

    def __init__(self, outbox: Outbox, to: ReplyTo, acked: asyncio.Event | None = None):
        self._outbox = outbox
        self._to = to
        self._acked = acked  # set once the request's acknowledgement is on its way
        self._told_place = False
        self.where: str | None = None  # where the images will appear (None: the channel; a private request: the DM)

    async def _after_ack(self) -> None:
        """Nothing reaches the user before the acknowledgement (its message would come after the answer)."""
        if self._acked is not None and not self._acked.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), ACK_WAIT)

    async def progress(self, update: Progress) -> None:
        """The place in line, once (a response_url takes five posts), in place of "Working on it"."""
        if update.status is JobStatus.QUEUED and update.position and not self._told_place:
            self._told_place = True
            await self._after_ack()
            queued = render.queued_message(update.position, update.eta_seconds, update.job_id, where=self.where)
            await self._outbox.say(self._to, queued["text"], blocks=queued["blocks"], replace=True)

    async def finish(self, outcome: JobOutcome) -> None:
        await self._after_ack()
        if outcome.needs_confirmation:
            await self._outbox.say(self._to, **render.confirmation_message(outcome.job))
        elif outcome.duplicate:
            await self._outbox.say(
                self._to, _("You asked for exactly this a moment ago; those images are on their way.")
            )
        elif outcome.result is not None:
            await self._outbox.deliver(outcome.job, outcome.result)

    async def fail(self, text: str) -> None:
        await self._after_ack()
        # after the place in line was told, the failure (or "Cancelled") takes its place and its Cancel button
        await self._outbox.say(self._to, text, replace=self._told_place)

    async def say_blocks(self, text: str, blocks: list[dict[str, Any]]) -> None:
        """The final answer as Block Kit, in place of the acknowledgement's note."""
        await self._after_ack()
        await self._outbox.say(self._to, text, blocks=blocks, replace=True)

    async def note(self, message: dict[str, Any]) -> None:
        """A note on the way as Block Kit (``text`` and ``blocks``: "Working on it…"), replaced by what follows."""
        await self._after_ack()
        await self._outbox.say(self._to, message["text"], blocks=message["blocks"])

    async def say(self, text: str, *, replace: bool = False, mentions: tuple[str, ...] = ()) -> None:
        """A note on the way (a refusal, "making variations…"): not the final answer."""
        await self._after_ack()
        await self._outbox.say(self._to, text, replace=replace, mentions=mentions)
