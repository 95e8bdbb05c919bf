"""Slack payloads -> requests for the core, each answered exactly once through ``adapters.common.lifecycle``.

Every listener acknowledges first — /imagine and the buttons with nothing in the ack, their refusals, form
errors and "Working on it" following privately; /history with its refusal; a form (modal) with its field
errors, the one place Slack shows them — then starts its work in a task of its own, through ``answer()``, and
returns: the app runs with ``process_before_response``, so bolt sends the acknowledgement the moment the
listener returns (without it, bolt polls for it every 10 ms), and no exception ever leaves a listener after its
ack (bolt would un-send the ack: Slack shows "dispatch_failed" / "operation_timeout"). Nothing before the ack
waits on I/O, and the work waits until no other request is left to acknowledge (``AckGate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from adapters.common import i18n
from adapters.common.access import AccessPolicy
from adapters.common.ackgate import AckGate
from adapters.common.flags import USAGE, parse_imagine
from adapters.common.i18n import _
from adapters.common.lifecycle import answer
from adapters.common.story import tool_title
from adapters.slack import render
from adapters.slack.errors import translate
from adapters.slack.files import SlackFiles, image_files
from adapters.slack.locale import UserLocales
from adapters.slack.payloads import (
    event_reply_to,
    input_value,
    job_value,
    message_reply_to,
    metadata,
    reply_to,
    result_reply_to,
)
from adapters.slack.replies import ACK_WAIT, Outbox, ReplyTo, SlackReply
from bot.bootstrap import Core
from bot.errors import InvalidRequestError, JobCancelledError, TooLateToCancelError
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import EditRequest, GenerateRequest, Job, JobStatus, Origin, VaryRequest
from bot.ports import ProgressSink
from bot.text import N_, Text

log = logging.getLogger(__name__)

_VARY_ACTION = re.compile(rf"^{render.VARY}_\d+$")
_UPSCALE_ACTION = re.compile(rf"^{render.UPSCALE}_\d+$")
_TOOL_ACTION = re.compile("^(" + "|".join(render.UPSCALE_TOOLS) + ")$")
_INDEX = re.compile(r"\b([1-9])\b")

Work = Callable[[SlackReply, ProgressSink], Awaitable[JobOutcome | None]]
Handler = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], Awaitable[None]]  # body, action, context
Listener = Callable[[AsyncAck, dict[str, Any], dict[str, Any], dict[str, Any]], Awaitable[None]]


class Listeners:
    """Registers the adapter's listeners on a bolt app; ``busy`` holds the ones still working after their ack."""

    def __init__(self, core: Core, policy: AccessPolicy, outbox: Outbox, files: SlackFiles):
        self.core = core
        self.policy = policy
        self.outbox = outbox
        self.files = files
        self.locales = UserLocales(outbox.client)
        self.busy: set[asyncio.Task[Any]] = set()

    def register(self, app: AsyncApp) -> None:
        app.error(self._unanswered)
        app.command("/imagine")(self.imagine)
        app.command("/history")(self.history)
        app.action(render.SHARE)(self._button(self._share_button))
        app.action(render.OPEN)(self._button(self._open_button))
        app.action(_VARY_ACTION)(self._button(self._vary_button))
        app.action(_UPSCALE_ACTION)(self._button(self._upscale_button))
        app.action(_TOOL_ACTION)(self._button(self._tool_button))
        app.action(render.REROLL)(self._button(self._reroll_button))
        app.action(render.REMIX)(self._button(self._remix_button))
        app.action(render.CONFIRM)(self._button(self._confirm_button))
        app.action(render.CANCEL)(self._button(self._cancel_button))
        app.view(render.REMIX_VIEW)(self.remix_submit)
        app.view(render.EDIT_VIEW)(self.edit_submit)
        app.message_shortcut("vary_image")(self._shortcut(self._vary_shortcut))
        app.message_shortcut("edit_image")(self._shortcut(self._edit_shortcut))
        app.event("app_mention")(self.mention)
        app.event("message")(self.message)

    async def _unanswered(self, error: Exception, body: dict[str, Any]) -> None:
        """bolt's last resort: only reached if something failed before a listener could even start."""
        log.error("slack listener failed before answering (%s)", type(error).__name__, exc_info=error)

    async def _run(self, to: ReplyTo, work: Work, context: Mapping[str, Any]) -> None:
        """Start ``work`` (after the ack, in a task of its own) and return: bolt sends the acknowledgement as soon as
        the listener returns (``process_before_response``). The work is carried to exactly one answer (never
        raises) and tracked in ``busy`` so that ``stop`` can let it finish."""
        task = asyncio.create_task(self._work(to, work, context))
        self.busy.add(task)
        task.add_done_callback(self.busy.discard)

    async def _work(self, to: ReplyTo, work: Work, context: Mapping[str, Any]) -> None:
        acked = context.get("acked")
        acked = acked if isinstance(acked, asyncio.Event) else None
        reply = self.outbox.reply(to, acked)
        unacked = context.get("unacked")
        if isinstance(unacked, AckGate):  # work waits until no request is left to acknowledge, this one's too:
            await unacked.quiet()  # a burst's acks don't queue behind the jobs of those acknowledged before them
        if acked is not None and not acked.is_set():  # (a long busy spell: QUIET_WAIT passed first)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acked.wait(), ACK_WAIT)
        i18n.use(await self.locales.lookup(to.user))  # after the ack: answer in the user's language
        await answer(reply, lambda progress: work(reply, progress), translate=translate)

    async def _admitted(self, reply: SlackReply, to: ReplyTo) -> bool:
        """The access policy; a refusal is said privately (it is the request's one answer)."""
        refusal = self.policy.refusal(to.requester())
        if refusal is not None:
            log.info("refused slack user %s in %s/%s", to.user, to.team, to.channel)
            await reply.say(_(refusal))
        return refusal is None

    async def _may_press(self, reply: SlackReply, to: ReplyTo, job_id: str, *, owner_only: bool = False) -> Job | None:
        """The job behind a result's button, if ``to`` may use it (else a private refusal and None)."""
        if not await self._admitted(reply, to):
            return None
        job = await self.core.jobs.find(job_id)
        if job is None:
            raise JobNotFoundError(detail=f"button of unknown job {job_id}")
        refusal = self.policy.may_press(job, to.requester(), owner_only=owner_only)
        if refusal is not None:
            await reply.say(_(refusal), mentions=(job.context.user,))  # names the owner: a real mention
            return None
        return job

    # --- /imagine ---------------------------------------------------------------------------------------------

    async def imagine(self, ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        await ack()  # nothing before it: a burst's acks go out as fast as a bare bolt app's (see the docstring)
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            read = self._read_imagine(to, body)  # a bad option raises: answer() tells the user, privately
            if not isinstance(read, tuple):
                await reply.say(_(read))
                return None
            request, private = read
            admission = self.core.admission  # where the job will wait, if it waits
            busy = admission.running >= self.core.settings.limits.max_concurrent
            await reply.note(render.working_message(request.prompt, admission.queue_length + 1 if busy else None))
            job_context = to.context()
            if private:  # the result goes to the requester's DM with the bot, with a Share button for this channel
                dm = await self.outbox.open_dm(to.user or "")
                reply.where = _("your DM with me")
                job_context = dataclasses.replace(
                    job_context, channel=dm, thread=None, reply=render.share_to(to.channel)
                )
            return await self.core.jobs.submit(job_context, request, progress)

        await self._run(to, work, context)

    def _read_imagine(self, to: ReplyTo, body: Mapping[str, Any]) -> tuple[GenerateRequest, bool] | Text:
        """The request and whether it is private, or the refusal to say (bad options raise
        ``InvalidRequestError``)."""
        refusal = self.policy.refusal(to.requester())
        if refusal is not None:
            return refusal
        command = parse_imagine(str(body.get("text") or ""))
        if not command.prompt:
            raise InvalidRequestError(N_("Tell me what to draw. {usage}", usage=USAGE))
        request = GenerateRequest(
            prompt=command.prompt, n=command.n or 1, size=command.size, quality=command.quality, model=command.model
        )
        settings = self.core.settings.slack
        default = settings.private_by_default or (to.team or "") in settings.private_workspaces
        return request, default if command.private is None else command.private

    # --- /history ---------------------------------------------------------------------------------------------

    async def history(self, ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        """``/history``: the requester's last jobs, only to them, each with an Open button."""
        to = reply_to(body)
        refusal = self.policy.refusal(to.requester())
        notice = _(refusal) if refusal is not None else _("Looking up your last requests…")
        await ack(**render.notice(notice), response_type="ephemeral")
        if refusal is not None:
            return

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            jobs = await self.core.jobs.history(user=f"slack:{to.user}", limit=render.HISTORY_SIZE)
            store = self.outbox.store
            links: dict[str, str] = {}
            for job in jobs if store is not None else []:
                found = await store.message_of(job.id) if store is not None else None
                if found is not None:
                    links[job.id] = render.archive_link(*found)
            listed = render.history_message(jobs, links)
            await reply.say_blocks(listed["text"], listed["blocks"])

        await self._run(to, work, context)

    # --- buttons ----------------------------------------------------------------------------------------------

    def _button(self, work: Handler) -> Listener:
        async def listener(
            ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]
        ) -> None:
            await ack()
            await work(body, action, context)

        return listener

    async def _vary_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        to = result_reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            job_id, index = job_value(action, "vary", with_index=True)
            if await self._may_press(reply, to, job_id) is None:
                return None
            await reply.say(_(N_("Making variations of image {index}…", index=index)))
            return await self.core.jobs.vary_result(job_id, index, to.context())

        await self._run(to, work, context)

    async def _upscale_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        to = result_reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            job_id, index = job_value(action, "upscale", with_index=True)
            job = await self._may_press(reply, to, job_id)
            if job is not None:
                await self.outbox.post_upscale(job, index, to)

        await self._run(to, work, context)

    async def _tool_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        """Vary (Subtle/Strong), Zoom out or Pan under an upscaled image: a new job made from that image."""
        to = result_reply_to(body)
        _label, tool = render.UPSCALE_TOOLS[str(action.get("action_id"))]

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            job_id, index = job_value(action, "upscale", with_index=True)
            if await self._may_press(reply, to, job_id) is None:
                return None
            await reply.say(f"{tool_title(tool, index)}…")
            jobs = self.core.jobs
            if tool in ("subtle", "strong"):
                return await jobs.vary_result(job_id, index, to.context(), progress, strength=tool)
            if tool in ("1.5", "2"):
                return await jobs.outpaint(job_id, index, to.context(), progress, zoom=float(tool))
            return await jobs.outpaint(job_id, index, to.context(), progress, pan=tool)

        await self._run(to, work, context)

    async def _reroll_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        to = result_reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            job_id = job_value(action, "reroll")[0]
            if await self._may_press(reply, to, job_id) is None:
                return None
            await reply.say(_("Rerolling…"))
            return await self.core.jobs.reroll(job_id, to.context(), progress)

        await self._run(to, work, context)

    async def _remix_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        to = result_reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            job_id = job_value(action, "remix")[0]
            job = await self._may_press(reply, to, job_id)  # local reads only: the trigger_id is still fresh
            if job is not None:
                view = render.remix_modal(job, to.channel or "", to.thread)
                await self.outbox.client.views_open(trigger_id=body["trigger_id"], view=view)

        await self._run(to, work, context)

    async def _confirm_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            job_id = job_value(action, "confirm")[0]
            if await self._may_press(reply, to, job_id, owner_only=True) is None:
                return None
            await reply.say(_("Confirmed — working on it."), replace=True)
            return await self.core.jobs.confirm(job_id, to.context(), progress)

        await self._run(to, work, context)

    async def _cancel_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            job_id = job_value(action, "cancel")[0]
            job = await self._may_press(reply, to, job_id, owner_only=True)
            if job is None:
                return
            try:
                await self.core.jobs.cancel(job_id)
            except TooLateToCancelError as exc:
                await reply.say(_(exc.text))
                return
            if job.status is JobStatus.AWAITING_CONFIRMATION:  # a queued job's own request says "Cancelled"
                await reply.say(_(JobCancelledError().text), replace=True)

        await self._run(to, work, context)

    async def _share_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        """Share a private result (in the requester's DM) to the channel it was asked in, crediting them."""
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            job_id = job_value(action, "share")[0]
            job = await self._may_press(reply, to, job_id, owner_only=True)
            if job is None:
                return
            channel = render.shared_to(job)
            if channel is None:
                raise InvalidRequestError(N_("That result has no channel to share to."), detail=f"job {job_id}")
            await self.outbox.upload_copy(job, channel)
            await reply.say(_(N_("Shared to {channel}.", channel=f"<#{channel}>")))

        await self._run(to, work, context)

    async def _open_button(self, body: dict[str, Any], action: dict[str, Any], context: dict[str, Any]) -> None:
        """Open a result listed by /history again: its images, in the requester's DM with the bot."""
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            job_id = job_value(action, "open")[0]
            job = await self._may_press(reply, to, job_id, owner_only=True)
            if job is None:
                return
            await self.outbox.upload_copy(job, await self.outbox.open_dm(to.user or ""))
            await reply.say(_("Sent to our DM."))

        await self._run(to, work, context)

    # --- modals -----------------------------------------------------------------------------------------------

    async def remix_submit(
        self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], context: dict[str, Any]
    ) -> None:
        i18n.use(self.locales.known(reply_to(body).user))  # no I/O before the ack
        prompt = input_value(view, render.PROMPT_BLOCK, render.PROMPT_ACTION).strip()
        if not prompt:
            await ack(response_action="errors", errors={render.PROMPT_BLOCK: _("Write a prompt.")})
            return
        await ack()
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            job_id = str(metadata(view).get("job") or "")
            if await self._may_press(reply, to, job_id) is None:
                return None
            return await self.core.jobs.remix(job_id, prompt, to.context(), progress)

        await self._run(to, work, context)

    async def edit_submit(
        self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], context: dict[str, Any]
    ) -> None:
        i18n.use(self.locales.known(reply_to(body).user))  # no I/O before the ack
        prompt = input_value(view, render.PROMPT_BLOCK, render.PROMPT_ACTION).strip()
        if not prompt:
            await ack(response_action="errors", errors={render.PROMPT_BLOCK: _("Say what should change.")})
            return
        await ack()
        to = reply_to(body)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            if not await self._admitted(reply, to):
                return None
            values = view.get("state", {}).get("values", {})
            option = values.get(render.REGION_BLOCK, {}).get(render.REGION_ACTION, {}).get("selected_option") or {}
            region = str(option.get("value") or render.WHOLE_IMAGE)
            masks = image_files(values.get(render.MASK_BLOCK, {}).get(render.MASK_ACTION, {}).get("files"))
            file = metadata(view).get("file")
            if not isinstance(file, dict):
                raise InvalidRequestError(detail="edit modal without a file in its metadata")
            image = await self.files.image(file)
            mask = await self.files.image(masks[0]) if masks else None
            chosen = None if region == render.WHOLE_IMAGE else region
            origin = _edit_origin(metadata(view).get("source"), chosen)
            request = EditRequest(images=(image,), prompt=prompt, mask=mask, region=chosen, origin=origin)
            return await self.core.jobs.submit(to.context(), request, progress)

        await self._run(to, work, context)

    # --- message shortcuts ------------------------------------------------------------------------------------

    def _shortcut(self, work: Handler) -> Listener:
        async def listener(
            ack: AsyncAck, body: dict[str, Any], shortcut: dict[str, Any], context: dict[str, Any]
        ) -> None:
            await ack()
            await work(body, shortcut, context)

        return listener

    async def _vary_shortcut(self, body: dict[str, Any], shortcut: dict[str, Any], context: dict[str, Any]) -> None:
        to = message_reply_to(body, shortcut)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            if not await self._admitted(reply, to):
                return None
            images = image_files(shortcut.get("message", {}).get("files"))
            if not images:
                await reply.say(_("That message has no image I can vary."))
                return None
            await reply.say(_("Making variations…"))
            data = await self.files.image(images[0])
            return await self.core.jobs.submit(to.context(), VaryRequest(image=data), progress)

        await self._run(to, work, context)

    async def _edit_shortcut(self, body: dict[str, Any], shortcut: dict[str, Any], context: dict[str, Any]) -> None:
        to = message_reply_to(body, shortcut)

        async def work(reply: SlackReply, progress: ProgressSink) -> None:
            if not await self._admitted(reply, to):
                return
            images = image_files(shortcut.get("message", {}).get("files"))
            if not images:
                await reply.say(_("That message has no image I can edit."))
                return
            file = {key: images[0].get(key) for key in ("id", "url_private", "url_private_download", "size")}
            source = render.result_file(images[0]) if shortcut.get("message", {}).get("bot_id") else None
            modal = render.edit_modal({"channel": to.channel, "thread": to.thread, "file": file, "source": source})
            await self.outbox.client.views_open(trigger_id=body["trigger_id"], view=modal)  # the trigger lives 3 s

        await self._run(to, work, context)

    # --- events (bolt acknowledges them before the listener runs) --------------------------------------------

    async def message(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        """An image posted in a result's thread, or with a mention of the bot: variations in that thread."""
        if event.get("subtype") != "file_share" or event.get("bot_id"):
            return
        to = event_reply_to(body, event)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            images = image_files(event.get("files"))
            store = self.outbox.store
            if not images or store is None:
                return None
            mentioned = f"<@{context.get('bot_user_id')}>" in str(event.get("text") or "")
            mentioned = mentioned or event.get("channel_type") == "im"  # in a DM every image is meant for the bot
            thread_ts = event.get("thread_ts")
            in_result_thread = bool(thread_ts) and thread_ts != event.get("ts")
            if in_result_thread and not mentioned:
                in_result_thread = await store.job_at(to.channel or "", str(thread_ts)) is not None
            if not (mentioned or in_result_thread) or not await self._first_time(event):
                return None
            return await self._vary_posted(reply, to, images[0], progress)

        await self._run(to, work, context)

    async def mention(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        """A mention with an image: its variations; in a result's thread without one: variations of the result."""
        to = event_reply_to(body, event)

        async def work(reply: SlackReply, progress: ProgressSink) -> JobOutcome | None:
            store = self.outbox.store
            if store is None or not await self._first_time(event):
                return None
            images = image_files(event.get("files"))
            if images:
                return await self._vary_posted(reply, to, images[0], progress)
            thread_ts = event.get("thread_ts")
            job_id = await store.job_at(to.channel or "", str(thread_ts)) if thread_ts else None
            if job_id is None:
                if await self._admitted(reply, to):
                    await reply.say(_("Send me an image with the mention for variations, or use /imagine <prompt>."))
                return None
            if await self._may_press(reply, to, job_id) is None:
                return None
            match = _INDEX.search(re.sub(r"<[^>]*>", " ", str(event.get("text") or "")))
            return await self.core.jobs.vary_result(job_id, int(match.group(1)) if match else 1, to.context())

        await self._run(to, work, context)

    async def _vary_posted(
        self, reply: SlackReply, to: ReplyTo, file: Mapping[str, Any], progress: ProgressSink
    ) -> JobOutcome | None:
        if not await self._admitted(reply, to):
            return None
        data = await self.files.image(file)
        return await self.core.jobs.submit(to.context(), VaryRequest(image=data), progress)

    async def _first_time(self, event: Mapping[str, Any]) -> bool:
        """Once per message: the same message comes as ``message`` and ``app_mention``, and retries repeat it."""
        store = self.outbox.store
        if store is None:
            return False
        return await store.first_time(f"{event.get('channel')}:{event.get('ts') or event.get('event_ts')}")


def _edit_origin(source: object, region: str | None) -> Origin | None:
    """An edit of one of our results (job and image from the modal's metadata) says so in its title."""
    if not (isinstance(source, list) and len(source) == 2 and isinstance(source[1], int)):
        return None
    return Origin(str(source[0]), source[1], "edit", region or "")
