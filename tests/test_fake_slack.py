"""The fake Slack driven by real slack-bolt / slack-sdk code (a tiny test app here, not the product adapter)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_server import (
    ACK_DEADLINE,
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_ID,
    SIGNING_SECRET,
    UPLOAD,
    USER_ID,
    FakeSlack,
    command_body,
    event_body,
    interactive_body,
    retry_headers,
    sign_request,
)
from tests.images import decode, png

MODAL = {"type": "modal", "callback_id": "vary_modal", "title": {"type": "plain_text", "text": "Vary"}, "blocks": []}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        server.assert_no_errors()


@pytest.fixture
async def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)


@pytest.fixture
async def socket_app(fake: FakeSlack) -> AsyncIterator[AsyncApp]:
    """A bolt app connected to the fake over Socket Mode; a listener exception fails the test."""
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url))
    failures: list[Exception] = []

    @app.error
    async def record(error: Exception) -> None:
        failures.append(error)

    handler = AsyncSocketModeHandler(app, APP_TOKEN)
    await handler.connect_async()
    yield app
    await handler.close_async()
    assert not failures, failures


@pytest.fixture
async def http_app(fake: FakeSlack) -> AsyncIterator[tuple[AsyncApp, TestClient[Any, Any]]]:
    """A bolt app in HTTP mode: its own aiohttp app (``AsyncApp.web_app()``) served on 127.0.0.1."""
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), signing_secret=SIGNING_SECRET)
    async with TestClient(TestServer(app.web_app(path="/slack/events"), host="127.0.0.1")) as http:
        yield app, http


# --- Socket Mode -------------------------------------------------------------------------------------------


async def test_socket_mode_command_is_acked_then_two_pngs_are_uploaded(fake: FakeSlack, socket_app: AsyncApp) -> None:
    images = [png(64, 48, (200, 40, 40)), png(32, 32, (40, 200, 40))]

    @socket_app.command("/imagine")
    async def imagine(ack: AsyncAck, command: dict[str, str], client: AsyncWebClient) -> None:
        await ack("Working on it")
        uploads = [
            {"file": data, "filename": f"fox-{n}.png", "title": f"Fox {n}", "alt_txt": f"a red fox, take {n}"}
            for n, data in enumerate(images, 1)
        ]
        comment = f"<@{command['user_id']}> {command['text']}"
        await client.files_upload_v2(file_uploads=uploads, channel=command["channel_id"], initial_comment=comment)

    envelope = await fake.send_slash_command("/imagine", "a red fox")
    completion = await fake.wait_for_call("files.completeUploadExternal")
    await fake.wait_for_ack(envelope.envelope_id)  # bolt polls ack() every 10 ms: the upload may finish first

    latency = fake.ack_latency(envelope.envelope_id)
    assert latency is not None and latency < ACK_DEADLINE
    assert envelope.ack is not None and envelope.ack.payload == {"text": "Working on it"}
    steps = [call.method for call in fake.calls if call.method.startswith("files.") or call.method == UPLOAD]
    assert steps == ["files.getUploadURLExternal"] * 2 + [UPLOAD] * 2 + ["files.completeUploadExternal"]
    for data, upload in zip(images, fake.uploads.values(), strict=True):
        assert upload.declared_length == len(data) == len(upload.data or b"")
        assert upload.data == data and decode(upload.data).format == "PNG"
    assert [u.alt_txt for u in fake.uploads.values()] == ["a red fox, take 1", "a red fox, take 2"]
    assert completion.ok and completion.args["channel_id"] == CHANNEL_ID
    assert completion.args["files"] == [{"id": f, "title": f"Fox {n}"} for n, f in enumerate(fake.uploads, 1)]
    [message] = fake.messages_in(CHANNEL_ID)
    assert message.text == f"<@{USER_ID}> a red fox"
    assert [f["id"] for f in message.files] == list(fake.uploads)


async def test_message_shortcut_trigger_id_opens_one_modal_only(fake: FakeSlack, socket_app: AsyncApp) -> None:
    shared = fake.add_file(png(), "cat.png", "image/png", owner=USER_ID)
    message = fake.add_message(CHANNEL_ID, "vary this", files=[shared]).to_slack()

    @socket_app.message_shortcut("vary_image")
    async def vary(ack: AsyncAck, shortcut: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        view = MODAL | {"private_metadata": shortcut["message"]["files"][0]["id"]}
        await client.views_open(trigger_id=shortcut["trigger_id"], view=view)
        with contextlib.suppress(SlackApiError):  # refused; asserted on the wire below
            await client.views_open(trigger_id=shortcut["trigger_id"], view=view)

    envelope = await fake.send_interactive(fake.message_shortcut_payload("vary_image", message))
    opened, again = [await fake.wait_for_call("views.open", n) for n in (1, 2)]

    assert opened.args["trigger_id"] == again.args["trigger_id"] == envelope.payload["trigger_id"]
    assert opened.ok and opened.response["view"]["callback_id"] == "vary_modal"
    assert opened.response["view"]["private_metadata"] == shared["id"]
    assert again.error == "exchanged_trigger_id"


async def test_event_retry_is_delivered_again_with_the_same_event_id(fake: FakeSlack, socket_app: AsyncApp) -> None:
    deliveries: list[tuple[str, str]] = []

    @socket_app.event("app_mention")
    async def mention(body: dict[str, Any], request: AsyncBoltRequest) -> None:
        deliveries.append((body["event_id"], request.headers["x-slack-retry-num"][0]))

    event = fake.app_mention_event("draw a fox")
    first = await fake.send_event(event)
    retry = await fake.send_event(event, event_id=first.payload["event_id"], retry_attempt=1, retry_reason="timeout")
    await fake.wait_for(lambda: len(deliveries) == 2 and first.ack and retry.ack)

    assert first.envelope_id != retry.envelope_id
    assert retry.to_wire()["retry_attempt"] == 1 and retry.to_wire()["retry_reason"] == "timeout"
    assert sorted(deliveries) == [(first.payload["event_id"], "0"), (first.payload["event_id"], "1")]


async def test_view_submission_errors_travel_in_the_ack_payload(
    fake: FakeSlack, socket_app: AsyncApp, client: AsyncWebClient
) -> None:
    opened = await client.views_open(trigger_id=fake.new_trigger_id(), view=MODAL)

    @socket_app.view("vary_modal")
    async def submitted(ack: AsyncAck, view: dict[str, Any]) -> None:
        prompt = view["state"]["values"]["prompt"]["text"]["value"]
        await ack(response_action="errors", errors={"prompt": f"too long: {len(prompt)} characters"})

    values = {"prompt": {"text": {"type": "plain_text_input", "value": "x" * 40}}}
    envelope = await fake.send_interactive(fake.view_submission_payload(opened["view"]["id"], values))
    ack = await fake.wait_for_ack(envelope.envelope_id)

    assert envelope.accepts_response_payload is True
    assert ack.payload == {"response_action": "errors", "errors": {"prompt": "too long: 40 characters"}}


async def test_listener_too_slow_to_ack_is_reported(fake: FakeSlack, socket_app: AsyncApp) -> None:
    finished = asyncio.Event()

    @socket_app.command("/imagine")
    async def slow(ack: AsyncAck) -> None:
        await asyncio.sleep(ACK_DEADLINE + 0.1)  # the mistake under test: slow work before ack()
        await ack()  # too late: bolt gave up after its own 3 s ack_timeout and never acks the envelope
        finished.set()

    envelope = await fake.send_slash_command("/imagine", "slow")
    await fake.wait_for(finished.is_set, timeout=ACK_DEADLINE + 2)

    assert envelope.ack is None and fake.ack_latency(envelope.envelope_id) is None
    with pytest.raises(AssertionError, match=r"slash_commands envelope .* not acknowledged within 3\.0 s"):
        fake.assert_no_errors()
    fake.errors.clear()


async def test_ack_arriving_after_the_deadline_is_reported(http: aiohttp.ClientSession) -> None:
    async with FakeSlack(ack_deadline=0.2) as fake:
        client = AsyncWebClient(token=APP_TOKEN, base_url=fake.api_url)
        url = (await client.apps_connections_open(app_token=APP_TOKEN))["url"]
        async with http.ws_connect(url) as ws:
            assert (await ws.receive_json())["type"] == "hello"
            envelope = await fake.send_slash_command("/imagine", "slow")
            assert (await ws.receive_json())["envelope_id"] == envelope.envelope_id
            await asyncio.sleep(0.3)  # a client that acks late
            await ws.send_json({"envelope_id": envelope.envelope_id})
            await fake.wait_for_ack(envelope.envelope_id)

        assert (fake.ack_latency(envelope.envelope_id) or 0) > 0.2
        with pytest.raises(AssertionError, match=r"not acknowledged within 0\.2 s"):
            fake.assert_no_errors()


# --- HTTP mode ---------------------------------------------------------------------------------------------


async def test_http_mode_signed_slash_command_is_acked_and_handled(
    fake: FakeSlack, http_app: tuple[AsyncApp, TestClient[Any, Any]]
) -> None:
    app, http = http_app

    @app.command("/imagine")
    async def imagine(ack: AsyncAck, respond: AsyncRespond, command: dict[str, str]) -> None:
        await ack("Working on it")
        await respond(f"done: {command['text']}")

    body = command_body(fake.command_payload("/imagine", "a red fox"))
    async with http.post("/slack/events", data=body, headers=sign_request(body, SIGNING_SECRET)) as resp:
        assert resp.status == 200
        assert await resp.text() == "Working on it"  # bolt answers a text-only ack() as text/plain
    [posted] = await fake.wait_for(lambda: fake.responses)

    assert posted.status == 200 and posted.body["text"] == "done: a red fox"


@pytest.mark.parametrize(
    ("secret", "age"), [("not-the-signing-secret", 0), (SIGNING_SECRET, 301)], ids=["wrong signature", "stale"]
)
async def test_http_mode_rejects_a_bad_signature_with_401(
    fake: FakeSlack, http_app: tuple[AsyncApp, TestClient[Any, Any]], secret: str, age: int
) -> None:
    app, http = http_app
    handled: list[str] = []

    @app.command("/imagine")
    async def imagine(ack: AsyncAck, command: dict[str, str]) -> None:
        handled.append(command["text"])
        await ack()

    body = command_body(fake.command_payload("/imagine", "a red fox"))
    headers = sign_request(body, secret, timestamp=int(time.time()) - age)
    async with http.post("/slack/events", data=body, headers=headers) as resp:
        assert resp.status == 401
    assert handled == [] and fake.calls == []


async def test_http_mode_event_retry_headers_reach_the_listener(
    fake: FakeSlack, http_app: tuple[AsyncApp, TestClient[Any, Any]]
) -> None:
    app, http = http_app
    retries: list[str] = []

    @app.event("app_mention")
    async def mention(request: AsyncBoltRequest) -> None:
        retries.append(request.headers["x-slack-retry-num"][0])

    body = event_body(fake.event_payload(fake.app_mention_event("draw a fox")))
    async with http.post("/slack/events", data=body, headers=sign_request(body) | retry_headers(1)) as resp:
        assert resp.status == 200
    assert await fake.wait_for(lambda: retries) == ["1"]


async def test_http_mode_block_action_is_dispatched(
    fake: FakeSlack, http_app: tuple[AsyncApp, TestClient[Any, Any]]
) -> None:
    app, http = http_app
    values: list[str] = []

    @app.action("img:vary")
    async def vary(ack: AsyncAck, action: dict[str, Any]) -> None:
        await ack()
        values.append(action["value"])

    result = fake.add_message(CHANNEL_ID, "result", user=BOT_USER_ID).to_slack()
    body = interactive_body(fake.block_actions_payload("img:vary", "job42:1", message=result))
    async with http.post("/slack/events", data=body, headers=sign_request(body)) as resp:
        assert resp.status == 200
    assert await fake.wait_for(lambda: values) == ["job42:1"]


# --- Web API and files -------------------------------------------------------------------------------------


async def test_url_private_with_token_and_files_read_returns_the_bytes(
    fake: FakeSlack, http: aiohttp.ClientSession
) -> None:
    data = png()
    file = fake.add_file(data, "in.png", "image/png", owner=USER_ID)

    async with http.get(file["url_private"], headers={"Authorization": f"Bearer {BOT_TOKEN}"}) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        assert await resp.read() == data


@pytest.mark.parametrize("missing", ["token", "files:read"])
async def test_url_private_without_access_is_an_html_login_page(
    fake: FakeSlack, http: aiohttp.ClientSession, missing: str
) -> None:
    file = fake.add_file(png(), "in.png", "image/png", owner=USER_ID)
    headers = {} if missing == "token" else {"Authorization": f"Bearer {BOT_TOKEN}"}
    fake.scopes.discard(missing)

    async with http.get(file["url_private_download"], headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "<html" in await resp.text()
    assert [d.authorized for d in fake.downloads] == [False]


async def test_ratelimited_call_is_retried_after_retry_after_by_the_rate_limit_handler(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    fake.fail_next("chat.postMessage", error="ratelimited", status=429, retry_after=1)

    response = await client.chat_postMessage(channel=CHANNEL_ID, text="hello")

    limited, retried = fake.calls_to("chat.postMessage")
    assert (limited.status, limited.error, limited.response_headers["Retry-After"]) == (429, "ratelimited", "1")
    assert retried.ok and retried.at - limited.at >= 1.0
    assert response["ts"] == fake.messages_in(CHANNEL_ID)[0].ts


async def test_ratelimited_call_raises_without_the_rate_limit_handler(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("chat.postMessage", error="ratelimited", status=429, retry_after=30)

    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel=CHANNEL_ID, text="hello")

    assert raised.value.response.status_code == 429 and raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "30"
    assert len(fake.calls_to("chat.postMessage")) == 1


async def test_upload_to_a_channel_without_the_bot_fails_not_in_channel(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.add_channel("C0NOBOT001", "random", member=False)

    with pytest.raises(SlackApiError) as raised:
        await client.files_upload_v2(file=png(), filename="fox.png", channel="C0NOBOT001")

    assert raised.value.response["error"] == "not_in_channel"
    assert [u.completed for u in fake.uploads.values()] == [False] and fake.messages == []


async def test_failed_upload_step_stops_files_upload_v2(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next(UPLOAD, "upstream trouble", status=500)

    with pytest.raises(SlackRequestError, match="status: 500"):
        await client.files_upload_v2(file=png(), filename="fox.png", channel=CHANNEL_ID)

    assert fake.calls_to("files.completeUploadExternal") == []


async def test_upload_shorter_than_declared_is_refused_and_reported(
    fake: FakeSlack, client: AsyncWebClient, http: aiohttp.ClientSession
) -> None:
    ticket = await client.files_getUploadURLExternal(filename="fox.png", length=100)
    async with http.post(ticket["upload_url"], data=b"only 16 bytes..."):
        pass

    with pytest.raises(SlackApiError) as raised:
        await client.files_completeUploadExternal(files=[{"id": ticket["file_id"]}], channel_id=CHANNEL_ID)

    assert raised.value.response["error"] == "file_not_found" and fake.messages == []
    assert fake.errors == [
        f"files.completeUploadExternal: {ticket['file_id']}: uploaded 16 bytes but declared length 100"
    ]
    fake.errors.clear()


async def test_expired_trigger_id_is_refused(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.trigger_ttl = 0.0

    with pytest.raises(SlackApiError) as raised:
        await client.views_open(trigger_id=fake.new_trigger_id(), view=MODAL)

    assert raised.value.response["error"] == "expired_trigger_id"


async def test_views_push_stacks_at_most_three_views(fake: FakeSlack, client: AsyncWebClient) -> None:
    root = (await client.views_open(trigger_id=fake.new_trigger_id(), view=MODAL))["view"]

    async def push() -> str:
        trigger_id = fake.block_actions_payload("next", view_id=root["id"])["trigger_id"]
        try:
            pushed = await client.views_push(trigger_id=trigger_id, view=MODAL)
        except SlackApiError as exc:
            return str(exc.response["error"])
        return "ok" if pushed["view"]["root_view_id"] == root["id"] else "wrong root"

    assert [await push() for _ in range(3)] == ["ok", "ok", "push_limit_reached"]


@pytest.mark.parametrize(
    ("method", "token", "error"),
    [
        ("chat.postMessage", None, "not_authed"),
        ("chat.postMessage", "xoxb-not-the-bot-token", "invalid_auth"),
        ("chat.postMessage", APP_TOKEN, "not_allowed_token_type"),
        ("apps.connections.open", BOT_TOKEN, "not_allowed_token_type"),
        ("chat.launchRockets", BOT_TOKEN, "unknown_method"),
    ],
)
async def test_web_api_errors_are_http_200_with_ok_false(
    fake: FakeSlack, http: aiohttp.ClientSession, method: str, token: str | None, error: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async with http.post(
        f"{fake.api_url}{method}", json={"channel": CHANNEL_ID, "text": "hi"}, headers=headers
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["error"] == error


async def test_web_api_merges_query_string_and_form_arguments(fake: FakeSlack, http: aiohttp.ClientSession) -> None:
    url = f"{fake.api_url}chat.postMessage?channel={CHANNEL_ID}&thread_ts=1700000000.000100"
    form = {"token": BOT_TOKEN, "text": "hi", "blocks": '[{"type": "divider"}]'}

    async with http.post(url, data=form) as resp:
        assert (await resp.json())["ok"] is True

    [call] = fake.calls_to("chat.postMessage")
    assert call.args == {
        "channel": CHANNEL_ID,
        "thread_ts": "1700000000.000100",
        "text": "hi",
        "blocks": [{"type": "divider"}],
    }
    assert [m.text for m in fake.messages_in(CHANNEL_ID, thread_ts="1700000000.000100")] == ["hi"]


async def test_response_url_allows_five_posts(fake: FakeSlack, http: aiohttp.ClientSession) -> None:
    url = fake.command_payload()["response_url"]

    statuses = []
    for n in range(6):
        async with http.post(url, json={"text": f"update {n}"}) as resp:
            statuses.append(resp.status)

    assert statuses == [200] * 5 + [404]
    assert fake.errors == [f"response_url {url.rpartition('/')[2]}: used_url"]
    fake.errors.clear()
