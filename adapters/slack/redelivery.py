"""After a restart, or after this process took over the jobs of one that died: post what was finished but never
delivered (looking on Slack first when a post may already be there), and tell the requesters of jobs cut off."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from adapters.common import i18n
from adapters.common.lifecycle import cut_off_text, friendly_detail
from adapters.common.redelivery import Coalesced
from adapters.slack import render
from adapters.slack.locale import UserLocales
from adapters.slack.replies import Outbox
from bot.models import ImageResult, Job

log = logging.getLogger(__name__)

LOOK_BACK_MESSAGES = 200  # recent messages only: a result is posted within minutes of its job
_SLACK_TIME_SLACK = 60.0  # seconds: Slack's clock vs ours, when reading messages since the job started


def watch(outbox: Outbox) -> Coalesced:
    """``recover``, run now and whenever the core takes over Slack jobs of a process that died."""

    async def run() -> None:
        await recover(outbox)

    woken = Coalesced(run)
    outbox.jobs.add_deliverer("slack", woken)
    return woken


async def recover(outbox: Outbox) -> None:
    """Tell whoever was cut off, then redeliver; one bad job or channel never stops the others."""
    locales = UserLocales(outbox.client)  # each requester is told in their own language
    for job in await outbox.jobs.cut_off("slack"):
        with i18n.speaking(await locales.lookup(job.context.user)):
            await _tell_cut_off(outbox, job)
    for job, result in await outbox.jobs.undelivered("slack"):
        try:
            with i18n.speaking(await locales.lookup(job.context.user)):
                await _redeliver(outbox, job, result)
        except Exception as exc:
            log.warning("redelivery of job %s failed: %s", job.id, friendly_detail(exc))


async def _tell_cut_off(outbox: Outbox, job: Job) -> None:
    context = job.context
    if not context.channel:
        await outbox.jobs.mark_notified(job.id)
        return
    try:
        await outbox.client.chat_postEphemeral(
            channel=context.channel,
            user=context.user,
            thread_ts=context.thread,
            **render.notice(cut_off_text(job)),
        )
    except SlackApiError as exc:  # gone for good (channel archived, user left): telling again won't help
        log.warning("could not tell %s about interrupted job %s: %s", context.user, job.id, exc.response.get("error"))
    except Exception as exc:  # Slack unreachable: try again at the next start
        log.warning("could not tell %s about interrupted job %s: %s", context.user, job.id, friendly_detail(exc))
        return
    await outbox.jobs.mark_notified(job.id)


async def _redeliver(outbox: Outbox, job: Job, result: ImageResult) -> None:
    if job.delivery_attempts == 0:
        await outbox.deliver(job, result)
        log.info("redelivered job %s to %s", job.id, job.context.channel)
        return
    images, controls = await _already_posted(outbox, job)
    if not images:
        await outbox.deliver(job, result)
        log.info("redelivered job %s to %s (not found on Slack)", job.id, job.context.channel)
        return
    await outbox.jobs.mark_delivered(job.id)
    if not controls:
        await outbox.post_controls(job, result)
    log.info("job %s was already on Slack: marked delivered", job.id)


async def _already_posted(outbox: Outbox, job: Job) -> tuple[bool, bool]:
    """Whether the job's images and its buttons message are among the recent messages of its conversation.

    If Slack can't be asked (e.g. the app lacks a history scope), the answer is "not there": a result posted
    twice is better than one never posted.
    """
    context = job.context
    channel, oldest = context.channel or "", f"{max(job.created_at - _SLACK_TIME_SLACK, 0):.6f}"
    client, limit = outbox.client, LOOK_BACK_MESSAGES
    try:
        if context.thread:
            found = await client.conversations_replies(
                channel=channel, ts=context.thread, oldest=oldest, include_all_metadata=True, limit=limit
            )
        else:
            found = await client.conversations_history(
                channel=channel, oldest=oldest, include_all_metadata=True, limit=limit
            )
    except SlackApiError as exc:
        log.warning("cannot look for job %s on Slack (%s): posting it", job.id, exc.response.get("error"))
        return False, False
    messages = [m for m in found.get("messages") or [] if isinstance(m, dict)]
    images = any(render.shows_images_of(job, m) for m in messages)
    controls = any(render.shows_controls_of(job, m) for m in messages)
    return images, controls
