"""The Slack adapter: slack-bolt (async) over Socket Mode or HTTP, on the shared core and HTTP session.

Every listener acknowledges first (the 3 s rule), then works. Results are uploaded with ``files_upload_v2``
into the conversation (and thread) recorded in the job, followed by a message with buttons whose values
carry the job id, so they keep working after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.middleware.authorization.async_single_team_authorization import AsyncSingleTeamAuthorization
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.base import AdapterState
from adapters.slack import render
from adapters.slack.commands import parse_imagine
from adapters.slack.errors import user_text
from adapters.slack.files import SlackFiles, image_files
from adapters.slack.state import SlackState
from bot.bootstrap import Core
from bot.errors import InvalidRequestError
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import EditRequest, ImageResult, Job, JobContext, JobStatus, Progress, VaryRequest
from bot.ports import ProgressSink
from bot.settings import Settings, SettingsError

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 3
STOP_GRACE_SECONDS = 10.0
WEB_API_TIMEOUT = 30  # seconds per Web API call, upload or response_url post
_VARY_ACTION = re.compile(rf"^{render.VARY}_\d+$")
_INDEX = re.compile(r"\b([1-9])\b")


@dataclass(frozen=True, slots=True)
class Target:
    """Who acted and where answers go (a response_url when Slack gave one)."""

    team: str | None = None
    user: str | None = None
    channel: str | None = None
    thread: str | None = None
    response_url: str | None = None

    def context(self) -> JobContext:
        return JobContext("slack", self.user or "unknown", self.team, self.channel, self.thread)


class SlackAdapter:
    """The ``Adapter`` for Slack: Socket Mode with an app token, else HTTP mode at ``/slack/events``."""

    def __init__(self, core: Core, settings: Settings, session: aiohttp.ClientSession):
        if settings.slack_bot_token is None:
            raise SettingsError("setting SLACK_BOT_TOKEN: the Slack adapter needs the bot token (xoxb-...)")
        if settings.slack_app_token is None and settings.slack_signing_secret is None:
            raise SettingsError(
                "setting SLACK_APP_TOKEN: set it for Socket Mode (or SLACK_SIGNING_SECRET for HTTP mode)"
            )
        self.core = core
        self.settings = settings
        self.session = session
        self.mode = "socket" if settings.slack_app_token is not None else "http"
        base_url = settings.slack_api_url or DEFAULT_API_URL
        base_url = base_url if base_url.endswith("/") else base_url + "/"
        token = settings.slack_bot_token.get_secret_value()
        self.client = AsyncWebClient(token=token, base_url=base_url, session=session, timeout=WEB_API_TIMEOUT)
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES))
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        self.app = AsyncApp(
            name="imagebot",
            client=self.client,
            signing_secret=secret,
            request_verification_enabled=self.mode == "http",
            process_before_response=False,
        )
        self.files = SlackFiles(
            session, token, api_url=settings.slack_api_url, max_bytes=settings.imaging.max_input_bytes
        )
        self._state = AdapterState.STOPPED
        self._store: SlackState | None = None
        self._handler: AsyncSocketModeHandler | None = None
        self._redelivery: asyncio.Task[None] | None = None
        self._busy: set[asyncio.Task[Any]] = set()  # listeners still working after their ack
        self._register()

    # --- the Adapter protocol ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "slack"

    @property
    def state(self) -> AdapterState:
        if self._state is AdapterState.CONNECTED and self._handler is not None:
            socket = getattr(self._handler.client, "current_session", None)
            if socket is None or socket.closed:  # the SDK reconnects on its own; /healthz shows the gap
                return AdapterState.DISCONNECTED
        return self._state

    async def start(self) -> None:
        """Open the adapter's state, connect (Socket Mode) and post results a previous process never delivered."""
        self._state = AdapterState.STARTING
        await self._authorize()
        self._store = await SlackState.open(self.settings.data_dir / "slack.sqlite3")
        app_token = self.settings.slack_app_token
        if self.mode == "socket" and app_token is not None:
            self._handler = AsyncSocketModeHandler(self.app, app_token.get_secret_value())
            await self._handler.connect_async()  # type: ignore[no-untyped-call]
        self._state = AdapterState.CONNECTED
        log.info("slack adapter started in %s mode", "Socket Mode" if self.mode == "socket" else "HTTP")
        self._redelivery = asyncio.create_task(self._redeliver(), name="slack-redelivery")

    async def _authorize(self) -> None:
        """Check the bot token once at start, and hand the answer to bolt: otherwise a burst of first requests
        each calls auth.test before it can be acknowledged."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            self._state = AdapterState.STOPPED
            raise SettingsError(
                f"setting SLACK_BOT_TOKEN: Slack refused the bot token ({exc.response.get('error')})"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._state = AdapterState.STOPPED
            raise SettingsError(
                f"setting SLACK_API_URL: cannot reach Slack's Web API at {self.client.base_url} ({type(exc).__name__})"
            ) from None
        for middleware in getattr(self.app, "_async_middleware_list", []):
            if isinstance(middleware, AsyncSingleTeamAuthorization) and middleware.auth_test_result is None:
                middleware.auth_test_result = auth

    async def stop(self) -> None:
        """Disconnect; listeners still working get ``STOP_GRACE_SECONDS`` to finish, then are cancelled."""
        self._state = AdapterState.STOPPING
        if self._busy:
            _, late = await asyncio.wait(set(self._busy), timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()
        if self._redelivery is not None:
            self._redelivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redelivery
        if self._handler is not None:
            await self._handler.close_async()  # type: ignore[no-untyped-call]
            self._handler = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        self._state = AdapterState.STOPPED

    async def redelivered(self) -> None:
        """Wait until the start-up redelivery has finished (tests, and the run loop if it cares)."""
        if self._redelivery is not None:
            await asyncio.shield(self._redelivery)

    async def idle(self) -> None:
        """Wait until no listener is working (tests and benchmarks)."""
        while self._busy:
            await asyncio.wait(set(self._busy))

    @staticmethod
    def configured(settings: Settings) -> bool:
        """True when the settings hold what the adapter needs: the bot token, and an app token or signing secret."""
        has_mode = settings.slack_app_token is not None or settings.slack_signing_secret is not None
        return settings.slack_bot_token is not None and has_mode

    def install_routes(self, app: web.Application, path: str = EVENTS_PATH) -> None:
        """Mount the HTTP-mode endpoint on the process's web server (bolt verifies the signature: 401 if bad).

        In Socket Mode nothing is mounted: requests arrive over the websocket, and an endpoint without
        signature checks must not exist.
        """
        if self.mode != "http":
            return

        async def events(request: web.Request) -> web.Response:
            if self._state is not AdapterState.CONNECTED:
                return web.Response(status=503, text="starting")
            response = await self.app.async_dispatch(await to_bolt_request(request))
            return await to_aiohttp_response(response)

        app.router.add_post(path, events)

    # --- listeners --------------------------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app

        @app.error
        async def on_error(error: Exception, body: dict[str, Any]) -> None:
            await self._report(error, _target(body))

        @app.command("/imagine")
        async def imagine(ack: AsyncAck, body: dict[str, Any]) -> None:
            await self._work(self._imagine(ack, body))

        @app.action(_VARY_ACTION)
        async def vary_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
            await ack()
            await self._work(self._vary_button(body, action))

        @app.action(render.REROLL)
        async def reroll_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
            await ack()
            await self._work(self._reroll_button(body, action))

        @app.action(render.REMIX)
        async def remix_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
            await ack()
            await self._work(self._remix_button(body, action))

        @app.action(render.CONFIRM)
        async def confirm_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
            await ack()
            await self._work(self._confirm_button(body, action))

        @app.action(render.CANCEL)
        async def cancel_button(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
            await ack()
            await self._work(self._cancel_button(body, action))

        @app.view(render.REMIX_VIEW)
        async def remix_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
            await self._work(self._remix_submit(ack, body, view))

        @app.message_shortcut("vary_image")
        async def vary_shortcut(ack: AsyncAck, body: dict[str, Any], shortcut: dict[str, Any]) -> None:
            await ack()
            await self._work(self._vary_shortcut(body, shortcut))

        @app.message_shortcut("edit_image")
        async def edit_shortcut(ack: AsyncAck, body: dict[str, Any], shortcut: dict[str, Any]) -> None:
            await ack()
            await self._work(self._edit_shortcut(body, shortcut))

        @app.view(render.EDIT_VIEW)
        async def edit_submit(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
            await self._work(self._edit_submit(ack, body, view))

        @app.event("app_mention")
        async def mention(body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
            await self._work(self._mention(body, event, context))

        @app.event("message")
        async def message(body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
            await self._work(self._message(body, event, context))

    async def _work(self, work: Awaitable[None]) -> None:
        """Run a listener's work as tracked, so ``stop`` can let it finish (errors go on to ``@app.error``)."""
        task = asyncio.current_task()
        if task is not None:
            self._busy.add(task)
        try:
            await work
        finally:
            if task is not None:
                self._busy.discard(task)

    # --- /imagine ---------------------------------------------------------------------------------------------

    async def _imagine(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        target = _target(body)
        refusal = self._refusal(target)
        if refusal is not None:
            await ack(**render.notice(refusal), response_type="ephemeral")
            return
        try:
            request = parse_imagine(str(body.get("text") or ""))
        except InvalidRequestError as exc:
            await ack(**render.notice(user_text(exc)), response_type="ephemeral")
            return
        admission = self.core.admission  # read without I/O: the ack can already say where the job will wait
        busy = admission.running >= self.settings.limits.max_concurrent
        await ack(**render.working_message(request.prompt, admission.queue_length + 1 if busy else None))
        outcome = await self.core.jobs.submit(target.context(), request, self._progress(target))
        await self._finish(outcome, target)

    # --- buttons ----------------------------------------------------------------------------------------------

    async def _vary_button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        target = _result_target(body)
        if await self._refused(target):
            return
        job_id, index = _job_value(action, "vary", with_index=True)
        await self._say(target, f"Making variations of image {index}…")
        outcome = await self.core.jobs.vary_result(job_id, index, target.context())
        await self._finish(outcome, target)

    async def _reroll_button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        target = _result_target(body)
        if await self._refused(target):
            return
        job_id, _ = _job_value(action, "reroll")
        await self._say(target, "Rerolling…")
        outcome = await self.core.jobs.reroll(job_id, target.context())
        await self._finish(outcome, target)

    async def _remix_button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        target = _result_target(body)
        if await self._refused(target):
            return
        job_id, _ = _job_value(action, "remix")
        job = await self.core.jobs.find(job_id)  # one local read: the trigger_id is still fresh
        if job is None:
            raise JobNotFoundError(detail=f"remix of unknown job {job_id}")
        view = render.remix_modal(job, target.channel or "", target.thread)
        await self.client.views_open(trigger_id=body["trigger_id"], view=view)

    async def _remix_submit(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        prompt = _input_value(view, render.PROMPT_BLOCK, render.PROMPT_ACTION)
        if not prompt.strip():
            await ack(response_action="errors", errors={render.PROMPT_BLOCK: "Write a prompt."})
            return
        await ack()
        target = _target(body)
        if await self._refused(target):
            return
        job_id = str(_metadata(view).get("job") or "")
        outcome = await self.core.jobs.remix(job_id, prompt.strip(), target.context())
        await self._finish(outcome, target)

    async def _confirm_button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        target = _target(body)
        if await self._refused(target):
            return
        job_id, _ = _job_value(action, "confirm")
        await self._say(target, "Confirmed — working on it.", replace=True)
        outcome = await self.core.jobs.confirm(job_id, target.context())
        await self._finish(outcome, target)

    async def _cancel_button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        target = _target(body)
        job_id, _ = _job_value(action, "cancel")
        await self.core.jobs.cancel(job_id)
        await self._say(target, "Cancelled: nothing was made or charged.", replace=True)

    # --- message shortcuts ------------------------------------------------------------------------------------

    async def _vary_shortcut(self, body: dict[str, Any], shortcut: dict[str, Any]) -> None:
        target = _message_target(body, shortcut)
        if await self._refused(target):
            return
        images = image_files(shortcut.get("message", {}).get("files"))
        if not images:
            await self._say(target, "That message has no image I can vary.")
            return
        await self._say(target, "Making variations…")
        data = await self.files.image(images[0])
        outcome = await self.core.jobs.submit(target.context(), VaryRequest(image=data))
        await self._finish(outcome, target)

    async def _edit_shortcut(self, body: dict[str, Any], shortcut: dict[str, Any]) -> None:
        target = _message_target(body, shortcut)
        images = image_files(shortcut.get("message", {}).get("files"))
        if images and self._refusal(target) is None:  # the modal first: the trigger_id lives 3 s
            file = {key: images[0].get(key) for key in ("id", "url_private", "url_private_download", "size")}
            metadata = {"channel": target.channel, "thread": target.thread, "file": file}
            await self.client.views_open(trigger_id=body["trigger_id"], view=render.edit_modal(metadata))
            return
        if not await self._refused(target):
            await self._say(target, "That message has no image I can edit.")

    async def _edit_submit(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        prompt = _input_value(view, render.PROMPT_BLOCK, render.PROMPT_ACTION).strip()
        if not prompt:
            await ack(response_action="errors", errors={render.PROMPT_BLOCK: "Say what should change."})
            return
        await ack()
        target = _target(body)
        if await self._refused(target):
            return
        values = view.get("state", {}).get("values", {})
        option = values.get(render.REGION_BLOCK, {}).get(render.REGION_ACTION, {}).get("selected_option") or {}
        region = str(option.get("value") or render.WHOLE_IMAGE)
        masks = image_files(values.get(render.MASK_BLOCK, {}).get(render.MASK_ACTION, {}).get("files"))
        file = _metadata(view).get("file")
        if not isinstance(file, dict):
            raise InvalidRequestError(detail="edit modal without a file in its metadata")
        image = await self.files.image(file)
        mask = await self.files.image(masks[0]) if masks else None
        request = EditRequest(
            images=(image,), prompt=prompt, mask=mask, region=None if region == render.WHOLE_IMAGE else region
        )
        outcome = await self.core.jobs.submit(target.context(), request)
        await self._finish(outcome, target)

    # --- events -----------------------------------------------------------------------------------------------

    async def _message(self, body: dict[str, Any], event: dict[str, Any], context: Mapping[str, Any]) -> None:
        """An image posted in a result's thread, or with a mention of the bot: variations in that thread."""
        if event.get("subtype") != "file_share" or event.get("bot_id"):
            return
        images = image_files(event.get("files"))
        if not images or self._store is None:
            return
        target = _event_target(body, event)
        mentioned = f"<@{context.get('bot_user_id')}>" in str(event.get("text") or "")
        mentioned = mentioned or event.get("channel_type") == "im"  # in a DM every image is meant for the bot
        thread_ts = event.get("thread_ts")
        in_result_thread = bool(thread_ts) and thread_ts != event.get("ts")
        if in_result_thread and not mentioned:
            in_result_thread = await self._store.job_at(target.channel or "", str(thread_ts)) is not None
        if not (mentioned or in_result_thread) or not await self._first_time(event):
            return
        await self._vary_posted(target, images[0])

    async def _mention(self, body: dict[str, Any], event: dict[str, Any], context: Mapping[str, Any]) -> None:
        """A mention with an image: its variations; in a result's thread without one: variations of the result."""
        if self._store is None or not await self._first_time(event):
            return
        target = _event_target(body, event)
        images = image_files(event.get("files"))
        if images:
            await self._vary_posted(target, images[0])
            return
        thread_ts = event.get("thread_ts")
        job_id = await self._store.job_at(target.channel or "", str(thread_ts)) if thread_ts else None
        if await self._refused(target):
            return
        if job_id is None:
            await self._say(target, "Send me an image with the mention for variations, or use /imagine <prompt>.")
            return
        match = _INDEX.search(re.sub(r"<[^>]*>", " ", str(event.get("text") or "")))
        outcome = await self.core.jobs.vary_result(job_id, int(match.group(1)) if match else 1, target.context())
        await self._finish(outcome, target)

    async def _vary_posted(self, target: Target, file: Mapping[str, Any]) -> None:
        if await self._refused(target):
            return
        data = await self.files.image(file)
        outcome = await self.core.jobs.submit(target.context(), VaryRequest(image=data))
        await self._finish(outcome, target)

    async def _first_time(self, event: Mapping[str, Any]) -> bool:
        """Once per message: the same message comes as ``message`` and ``app_mention``, and retries repeat it."""
        if self._store is None:
            return False
        return await self._store.first_time(f"{event.get('channel')}:{event.get('ts') or event.get('event_ts')}")

    # --- results ----------------------------------------------------------------------------------------------

    async def _finish(self, outcome: JobOutcome, target: Target) -> None:
        """Deliver a finished job, or ask for confirmation, or say an identical request is already on its way."""
        if outcome.needs_confirmation:
            await self._say(target, **render.confirmation_message(outcome.job))
        elif outcome.duplicate:
            await self._say(target, "You asked for exactly this a moment ago; those images are on their way.")
        elif outcome.result is not None:
            await self._deliver(outcome.job, outcome.result)

    async def _deliver(self, job: Job, result: ImageResult) -> None:
        """Upload the images into the job's conversation, then the buttons; remember both messages' ts."""
        uploaded = await self.client.files_upload_v2(**render.upload_args(job, result))
        await self.core.jobs.mark_delivered(job.id)
        channel = job.context.channel or ""
        if self._store is None:
            return
        if job.context.thread:
            await self._store.remember(channel, job.context.thread, job.id)
        files = uploaded.get("files") or []
        if files and not job.context.thread:
            await self._remember_upload(channel, str(files[0].get("id")), job.id)
        posted = await self.client.chat_postMessage(**render.controls_message(job, result))
        await self._store.remember(channel, str(posted["ts"]), job.id)

    async def _remember_upload(self, channel: str, file_id: str, job_id: str) -> None:
        """The image message's ts (the SDK doesn't return it): from the file's shares, best effort."""
        if self._store is None:
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
                await self._store.remember(channel, str(share.get("ts")), job_id)

    async def _redeliver(self) -> None:
        """Post what a previous process finished but never delivered, into its conversation."""
        for job, result in await self.core.jobs.undelivered("slack"):
            try:
                await self._deliver(job, result)
                log.info("redelivered job %s to %s", job.id, job.context.channel)
            except Exception as exc:  # one bad channel must not stop the others
                log.warning("redelivery of job %s failed: %s", job.id, user_text(exc))

    # --- replies ----------------------------------------------------------------------------------------------

    def _progress(self, target: Target) -> ProgressSink:
        """Tell the user their place in line once (response_url allows five posts)."""
        told = False

        async def report(update: Progress) -> None:
            nonlocal told
            if update.status is JobStatus.QUEUED and update.position and not told:  # only sent when waiting
                told = True
                await self._say(target, render.queued_text(update.position), replace=True)

        return report

    async def _report(self, error: BaseException, target: Target) -> None:
        """The error path of every listener (bolt's @app.error): one friendly, ephemeral line with the ref."""
        text = user_text(error)
        try:
            await self._say(target, text)
        except Exception as exc:  # the user can't be told (e.g. not in the channel): the log has it
            log.warning("could not tell %s about an error: %r", target.user, type(exc).__name__)

    async def _say(self, target: Target, text: str, *, replace: bool = False, blocks: Any = None) -> None:
        """An ephemeral message to the user: via response_url when there is one, else chat.postEphemeral."""
        message = render.notice(text) if blocks is None else {"text": text, "blocks": blocks}
        if target.response_url:
            webhook = AsyncWebhookClient(target.response_url, session=self.session, timeout=WEB_API_TIMEOUT)
            await webhook.send(response_type="ephemeral", replace_original=replace, **message)
        elif target.channel and target.user:
            await self.client.chat_postEphemeral(
                channel=target.channel, user=target.user, thread_ts=target.thread, **message
            )

    def _refusal(self, target: Target) -> str | None:
        """Why the operator's allow-lists refuse this user or place (None: allowed)."""
        allowed = self.settings.slack
        if allowed.allowed_workspaces and target.team not in allowed.allowed_workspaces:
            return "This workspace isn't allowed to use me. Ask the person who runs the bot."
        if allowed.allowed_channels and target.channel not in allowed.allowed_channels:
            return "I'm not allowed to make images in this channel. Try one where I'm enabled."
        if allowed.allowed_users and target.user not in allowed.allowed_users:
            return "You're not on the list of people who may use me. Ask the person who runs the bot."
        return None

    async def _refused(self, target: Target) -> bool:
        refusal = self._refusal(target)
        if refusal is not None:
            log.info("refused slack user %s in %s/%s", target.user, target.team, target.channel)
            await self._say(target, refusal)
        return refusal is not None


# --- reading payloads ------------------------------------------------------------------------------------------


def _target(body: Mapping[str, Any]) -> Target:
    """Where to answer, from any payload: command, event, block action, shortcut or view submission."""
    if "command" in body:
        return Target(body.get("team_id"), body.get("user_id"), body.get("channel_id"), None, body.get("response_url"))
    if body.get("type") == "event_callback":
        return _event_target(body, body.get("event", {}))
    if body.get("type") == "message_action":
        return _message_target(body, body)
    if body.get("type") == "view_submission":
        metadata = _metadata(body.get("view", {}))
        return Target(
            _id(body.get("team")),
            _id(body.get("user")),
            metadata.get("channel"),
            metadata.get("thread"),
        )
    if body.get("type") == "block_actions" and body.get("message"):
        return _result_target(body)
    team, user, channel = _id(body.get("team")), _id(body.get("user")), _id(body.get("channel"))
    return Target(team, user, channel, None, body.get("response_url"))


def _event_target(body: Mapping[str, Any], event: Mapping[str, Any]) -> Target:
    thread = event.get("thread_ts") or event.get("ts")
    return Target(body.get("team_id"), event.get("user"), event.get("channel"), thread)


def _message_target(body: Mapping[str, Any], shortcut: Mapping[str, Any]) -> Target:
    message = shortcut.get("message", {})
    thread = message.get("thread_ts") or message.get("ts")
    team, user, channel = _id(body.get("team")), _id(body.get("user")), _id(body.get("channel"))
    return Target(team, user, channel, thread, body.get("response_url"))


def _result_target(body: Mapping[str, Any]) -> Target:
    """A button under a result: answers go in that result's thread (ephemeral notes via the response_url)."""
    message = body.get("message") or {}
    container = body.get("container") or {}
    thread = message.get("thread_ts") or message.get("ts") or container.get("message_ts")
    channel = _id(body.get("channel")) or container.get("channel_id")
    return Target(_id(body.get("team")), _id(body.get("user")), channel, thread, body.get("response_url"))


def _id(value: object) -> str | None:
    if isinstance(value, Mapping):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


def _metadata(view: Mapping[str, Any]) -> dict[str, Any]:
    try:
        metadata = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _input_value(view: Mapping[str, Any], block: str, action: str) -> str:
    value = view.get("state", {}).get("values", {}).get(block, {}).get(action, {}).get("value")
    return str(value or "")


def _job_value(action: Mapping[str, Any], kind: str, *, with_index: bool = False) -> tuple[str, int]:
    """``"<kind>:<job>[:<index>]"`` from a button's value (InvalidRequestError when it isn't one)."""
    parts = str(action.get("value") or "").split(":")
    try:
        if parts[0] != kind or len(parts) != (3 if with_index else 2):
            raise ValueError(parts[0])
        return parts[1], int(parts[2]) if with_index else 0
    except (ValueError, IndexError):
        raise InvalidRequestError(detail=f"bad button value for {kind}") from None


__all__ = ["EVENTS_PATH", "SlackAdapter", "Target"]
