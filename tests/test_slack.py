"""The Slack adapter end to end: real slack-bolt/slack-sdk and the real core against the fake Slack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from adapters.common.flags import parse_imagine
from adapters.slack import SlackAdapter, render
from bot.bootstrap import new_http_session, open_core
from bot.errors import InvalidRequestError
from bot.models import JobContext, JobStatus, VaryRequest
from bot.settings import SettingsError, load_settings
from tests.fakes.slack_server import (
    ACK_DEADLINE,
    BOT_USER_ID,
    CHANNEL_ID,
    SIGNING_SECRET,
    TEAM_ID,
    UPLOAD,
    USER_ID,
    FakeSlack,
    command_body,
    event_body,
    retry_headers,
    sign_request,
)
from tests.images import decode, png
from tests.slack_harness import (
    SlackBot,
    as_message,
    button,
    response_button,
    response_saying,
    responses_to,
    slack_bot,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        await server.settle()
        server.assert_no_errors()


@pytest.fixture
async def bot(fake: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackBot]:
    async with slack_bot(fake, tmp_path / "data") as running:
        yield running


@pytest.fixture
async def http_bot(fake: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackBot]:
    async with slack_bot(fake, tmp_path / "data", mode="http") as running:
        yield running


async def _imagine(bot: SlackBot, text: str = "a red fox") -> str:
    """Run /imagine to completion; the job id from its buttons."""
    before = len(bot.controls())
    await bot.fake.send_slash_command("/imagine", text)
    await bot.uploads_done(before + 1)
    return button(bot.controls()[before], "vary:")["value"].split(":")[1]


# --- /imagine ---------------------------------------------------------------------------------------------------


def test_flags_are_parsed_and_removed_from_the_prompt() -> None:
    request = parse_imagine("a red fox —n 2 in the snow --size=1536x1024 --quality high --model gpt-image-2")
    assert (request.prompt, request.n, request.size) == ("a red fox in the snow", 2, "1536x1024")
    assert (request.quality, request.model) == ("high", "gpt-image-2")


@pytest.mark.parametrize("text", ["a fox --n", "a fox --n lots", "a fox --colour red", "a fox --size big"])
def test_bad_flags_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_imagine(text)


async def test_options_without_a_prompt_are_refused_privately(fake: FakeSlack, bot: SlackBot) -> None:
    envelope = await fake.send_slash_command("/imagine", "--n 2")  # the shared grammar allows it; /imagine doesn't
    ack = await fake.wait_for_ack(envelope.envelope_id)
    refusal = await response_saying(fake, envelope.payload, "Tell me what to draw")
    await bot.adapter.idle()

    assert (fake.ack_latency(envelope.envelope_id) or 99) < ACK_DEADLINE and not ack.payload
    assert refusal.body["response_type"] == "ephemeral" and ack.at < refusal.at
    assert [p.body["text"] for p in responses_to(fake, envelope.payload)] == [refusal.body["text"]]  # only that
    assert await bot.core.jobs.store.history(limit=5) == []


async def test_imagine_over_socket_mode_acks_then_uploads_the_images_with_buttons(
    fake: FakeSlack, bot: SlackBot
) -> None:
    envelope = await fake.send_slash_command("/imagine", "a red fox --n 2 --size 1536x1024")
    completion = await bot.uploads_done()
    ack = await fake.wait_for_ack(envelope.envelope_id)

    note = await response_saying(fake, envelope.payload, "Working on it")

    assert (fake.ack_latency(envelope.envelope_id) or 99) < ACK_DEADLINE and not ack.payload
    assert note.body["response_type"] == "ephemeral" and ack.at < note.at < completion.at
    steps = [
        c.method
        for c in fake.calls
        if (c.method.startswith("files.") and c.method != "files.info") or c.method == UPLOAD
    ]
    assert steps == ["files.getUploadURLExternal"] * 2 + [UPLOAD] * 2 + ["files.completeUploadExternal"]
    for upload in fake.uploads.values():
        assert upload.data is not None and upload.declared_length == len(upload.data)
        assert decode(upload.data).format == "PNG" and decode(upload.data).size == (1536, 1024)
        assert upload.alt_txt and upload.completed
    assert completion.args["channel_id"] == CHANNEL_ID
    [images] = bot.image_messages(CHANNEL_ID)
    assert len(images.files) == 2 and images.text.startswith(f"<@{USER_ID}> asked for:\n> a red fox")
    [controls] = bot.controls()
    job_id = button(controls, "vary:")["value"].split(":")[1]
    assert [button(controls, f"vary:{job_id}:{i}")["action_id"] for i in (1, 2)] == ["img_vary_1", "img_vary_2"]
    assert button(controls, "reroll:")["value"] == f"reroll:{job_id}"
    job = await bot.job(job_id)
    assert job.status is JobStatus.DELIVERED and job.prompt == "a red fox" and job.request["size"] == "1536x1024"
    assert job.context == JobContext("slack", USER_ID, TEAM_ID, CHANNEL_ID, None)


async def test_imagine_over_http_mode_answers_the_signed_request_then_uploads(
    fake: FakeSlack, http_bot: SlackBot
) -> None:
    payload = fake.command_payload("/imagine", "a blue whale --quality low")
    started = time.monotonic()
    status, text = await http_bot.post(command_body(payload))
    answered = time.monotonic()
    await http_bot.uploads_done()
    note = await response_saying(fake, payload, "Working on it")

    assert status == 200 and answered - started < ACK_DEADLINE and text == ""  # the ack: an empty 200
    assert note.body["response_type"] == "ephemeral" and answered <= note.at
    [upload] = fake.uploads.values()
    assert upload.data is not None and decode(upload.data).format == "PNG"
    job = await http_bot.job(button(http_bot.controls()[0], "vary:")["value"].split(":")[1])
    assert job.prompt == "a blue whale" and job.request["quality"] == "low"


@pytest.mark.parametrize(("secret", "age"), [("wrong-secret", 0), (SIGNING_SECRET, 301)], ids=["wrong", "stale"])
async def test_http_mode_refuses_a_bad_signature_with_401(
    fake: FakeSlack, http_bot: SlackBot, secret: str, age: int
) -> None:
    body = command_body(fake.command_payload("/imagine", "a red fox"))
    status, _ = await http_bot.post(body, sign_request(body, secret, timestamp=int(time.time()) - age))

    assert status == 401
    assert not fake.uploads and await http_bot.core.jobs.store.history(limit=5) == []


async def test_bad_flag_gets_a_friendly_ephemeral_answer_after_the_ack(fake: FakeSlack, bot: SlackBot) -> None:
    envelope = await fake.send_slash_command("/imagine", "a red fox --colour red")
    ack = await fake.wait_for_ack(envelope.envelope_id)
    answer = await response_saying(fake, envelope.payload, "--colour")
    await bot.adapter.idle()

    assert (fake.ack_latency(envelope.envelope_id) or 99) < ACK_DEADLINE and not ack.payload
    assert answer.body["response_type"] == "ephemeral" and ack.at < answer.at
    assert "(ref " in answer.body["text"] and len(responses_to(fake, envelope.payload)) == 1
    assert not fake.uploads and await bot.core.jobs.store.history(limit=5) == []


async def test_prompt_cannot_ping_the_channel(fake: FakeSlack, bot: SlackBot) -> None:
    await fake.send_slash_command("/imagine", "<!channel> a fox & a hen")
    await bot.uploads_done()

    [images] = bot.image_messages(CHANNEL_ID)
    assert "<!channel>" not in images.text and "&lt;!channel&gt; a fox &amp; a hen" in images.text


# --- buttons ----------------------------------------------------------------------------------------------------


async def test_vary_button_posts_variations_in_the_results_thread(fake: FakeSlack, bot: SlackBot) -> None:
    await _imagine(bot)
    controls = bot.controls()[0]
    vary = button(controls, "vary:")
    payload = fake.block_actions_payload(vary["action_id"], vary["value"], message=controls.to_slack())
    envelope = await fake.send_interactive(payload)
    await bot.uploads_done(2)

    assert (fake.ack_latency(envelope.envelope_id) or 99) < ACK_DEADLINE
    [varied] = bot.image_messages(CHANNEL_ID, controls.ts)
    assert varied.text.startswith(f"<@{USER_ID}> · *Variations of image 1*\n> a red fox")
    job = await bot.job(button(bot.controls()[1], "vary:")["value"].split(":")[1])
    assert job.kind == "vary" and job.context.thread == controls.ts


async def test_reroll_button_makes_a_new_job_with_the_same_request(fake: FakeSlack, bot: SlackBot) -> None:
    first = await _imagine(bot, "a lighthouse")
    controls = bot.controls()[0]
    reroll = button(controls, "reroll:")
    await fake.send_interactive(
        fake.block_actions_payload(reroll["action_id"], reroll["value"], message=controls.to_slack())
    )
    await bot.uploads_done(2)

    second = button(bot.controls()[1], "vary:")["value"].split(":")[1]
    assert second != first and (await bot.job(second)).prompt == "a lighthouse"


async def test_remix_button_opens_a_prefilled_modal_and_its_submission_makes_the_new_prompt(
    fake: FakeSlack, bot: SlackBot
) -> None:
    await _imagine(bot, "a lighthouse at dusk")
    controls = bot.controls()[0]
    remix = button(controls, "remix:")
    await fake.send_interactive(
        fake.block_actions_payload(remix["action_id"], remix["value"], message=controls.to_slack())
    )
    opened = await fake.wait_for_call("views.open")

    assert opened.ok, opened.response
    view = opened.response["view"]
    assert view["callback_id"] == render.REMIX_VIEW
    assert view["blocks"][0]["element"]["initial_value"] == "a lighthouse at dusk"
    values = {
        render.PROMPT_BLOCK: {render.PROMPT_ACTION: {"type": "plain_text_input", "value": "a lighthouse at dawn"}}
    }
    envelope = await fake.send_interactive(fake.view_submission_payload(view["id"], values))
    await bot.uploads_done(2)

    assert (await fake.wait_for_ack(envelope.envelope_id)).payload in (None, {})
    remixed = await bot.job(button(bot.controls()[1], "vary:")["value"].split(":")[1])
    assert remixed.prompt == "a lighthouse at dawn" and remixed.context.thread == controls.ts


async def test_remix_with_an_empty_prompt_is_refused_in_the_modal(fake: FakeSlack, bot: SlackBot) -> None:
    job_id = await _imagine(bot)
    job = await bot.job(job_id)
    opened = await bot.adapter.client.views_open(
        trigger_id=fake.new_trigger_id(), view=render.remix_modal(job, CHANNEL_ID, None)
    )
    values = {render.PROMPT_BLOCK: {render.PROMPT_ACTION: {"type": "plain_text_input", "value": "  "}}}
    envelope = await fake.send_interactive(fake.view_submission_payload(opened["view"]["id"], values))
    ack = await fake.wait_for_ack(envelope.envelope_id)

    assert ack.payload is not None and ack.payload["response_action"] == "errors"


async def test_expensive_request_asks_for_confirmation_then_runs_on_confirm(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data", jobs={"confirm_above_usd": 0.000001}) as bot:
        await fake.send_slash_command("/imagine", "a castle")
        confirm = button(as_message(await response_button(fake, "confirm:")), "confirm:")
        job_id = confirm["value"].split(":")[1]
        assert (await bot.job(job_id)).status is JobStatus.AWAITING_CONFIRMATION and not fake.uploads

        await fake.send_interactive(fake.block_actions_payload(confirm["action_id"], confirm["value"]))
        await bot.uploads_done()

        assert (await bot.job(job_id)).status is JobStatus.DELIVERED
        assert len(bot.image_messages(CHANNEL_ID)) == 1


async def test_cancel_drops_the_held_job(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data", jobs={"confirm_above_usd": 0.000001}) as bot:
        await fake.send_slash_command("/imagine", "a castle")
        cancel = button(as_message(await response_button(fake, "cancel:")), "cancel:")
        await fake.send_interactive(fake.block_actions_payload(cancel["action_id"], cancel["value"]))
        await fake.wait_for(lambda: any("Cancelled" in t for t in bot.ephemeral_texts()))

        assert (await bot.job(cancel["value"].split(":")[1])).status is JobStatus.CANCELLED and not fake.uploads


@pytest.mark.parametrize("prefix", ["vary:", "reroll:", "remix:"])
async def test_buttons_of_an_old_message_work_after_a_restart(fake: FakeSlack, tmp_path: Path, prefix: str) -> None:
    async with slack_bot(fake, tmp_path / "data") as first:
        await _imagine(first, "a windmill")
        old = first.controls()[0]
    async with slack_bot(fake, tmp_path / "data") as second:
        pressed = button(old, prefix)
        await fake.send_interactive(
            fake.block_actions_payload(pressed["action_id"], pressed["value"], message=old.to_slack())
        )
        if prefix == "remix:":
            opened = await fake.wait_for_call("views.open")
            assert opened.ok and opened.response["view"]["blocks"][0]["element"]["initial_value"] == "a windmill"
        else:
            await second.uploads_done(2)
            assert len(second.image_messages(CHANNEL_ID, old.ts)) == 1


async def test_finished_but_undelivered_jobs_are_posted_at_start(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data") as first:
        context = JobContext("slack", USER_ID, TEAM_ID, CHANNEL_ID, "1700000000.000100")
        outcome = await first.core.jobs.submit(context, VaryRequest(image=png()))  # paid, never posted
    async with slack_bot(fake, tmp_path / "data") as second:
        await second.adapter.redelivered()
        await second.uploads_done()

        assert len(second.image_messages(CHANNEL_ID, "1700000000.000100")) == 1
        assert (await second.job(outcome.job.id)).status is JobStatus.DELIVERED
        assert await second.core.jobs.undelivered("slack") == []


# --- threads and mentions -------------------------------------------------------------------------------------


def _file_share(fake: FakeSlack, text: str, *, thread_ts: str | None = None) -> dict[str, object]:
    shared = fake.add_file(png(80, 60, (30, 90, 200)), "photo.png", "image/png")
    message = fake.add_message(CHANNEL_ID, text, files=[shared], thread_ts=thread_ts).to_slack()
    return message | {"channel": CHANNEL_ID, "event_ts": message["ts"]}


async def test_image_posted_in_a_results_thread_gets_variations_there(fake: FakeSlack, bot: SlackBot) -> None:
    await _imagine(bot)
    parent = bot.controls()[0].ts
    await fake.send_event(_file_share(fake, "like this but bluer", thread_ts=parent))
    await bot.uploads_done(2)

    assert len(bot.image_messages(CHANNEL_ID, parent)) == 1
    assert [d.authorized for d in fake.downloads] == [True]


async def test_image_in_an_unrelated_thread_without_a_mention_is_ignored(fake: FakeSlack, bot: SlackBot) -> None:
    await fake.send_event(_file_share(fake, "holiday photo", thread_ts="1700000000.000001"))
    await fake.send_event(_file_share(fake, "another holiday photo"))
    await fake.wait_for(lambda: len([e for e in fake.envelopes.values() if e.ack]) == 2)

    assert not fake.downloads and not fake.uploads


async def test_mention_with_an_image_delivered_as_message_and_app_mention_is_answered_once(
    fake: FakeSlack, bot: SlackBot
) -> None:
    message = _file_share(fake, f"<@{BOT_USER_ID}> vary this")
    mention = {"type": "app_mention", "user": USER_ID, "text": message["text"], "ts": message["ts"]}
    mention |= {"channel": CHANNEL_ID, "event_ts": message["ts"], "files": message["files"]}
    await fake.send_event(message)
    await fake.send_event(mention)
    await bot.uploads_done()
    await fake.wait_for(lambda: all(e.ack for e in fake.envelopes.values()))

    assert len(fake.calls_to("files.completeUploadExternal")) == 1 and len(fake.downloads) == 1
    assert len(bot.image_messages(CHANNEL_ID, str(message["ts"]))) == 1


async def test_retried_event_is_processed_once(fake: FakeSlack, bot: SlackBot) -> None:
    shared = fake.add_file(png(), "cat.png", "image/png")
    event = fake.app_mention_event("vary please", files=[shared])
    first = await fake.send_event(event)
    await bot.uploads_done()
    retry = await fake.send_event(event, event_id=first.payload["event_id"], retry_attempt=1, retry_reason="timeout")
    await fake.wait_for_ack(retry.envelope_id)
    await asyncio.wait_for(bot.adapter.idle(), 10)  # every listener has finished: a second upload would be done

    assert len(fake.calls_to("files.completeUploadExternal")) == 1


async def test_http_mode_event_retry_header_is_processed_once(fake: FakeSlack, http_bot: SlackBot) -> None:
    shared = fake.add_file(png(), "cat.png", "image/png")
    payload = fake.event_payload(fake.app_mention_event("vary please", files=[shared]))
    body = event_body(payload)
    assert (await http_bot.post(body))[0] == 200
    await http_bot.uploads_done()
    assert (await http_bot.post(body, sign_request(body) | retry_headers(1)))[0] == 200

    assert len(fake.calls_to("files.completeUploadExternal")) == 1


async def test_mention_in_a_results_thread_without_an_image_varies_the_result(fake: FakeSlack, bot: SlackBot) -> None:
    await _imagine(bot, "a red fox --n 2")
    parent = bot.controls()[0].ts
    await fake.send_event(fake.app_mention_event("more like 2 please", thread_ts=parent))
    await bot.uploads_done(2)

    varied = await bot.job(button(bot.controls()[1], "vary:")["value"].split(":")[1])
    assert varied.kind == "vary" and varied.context.thread == parent
    assert not fake.downloads


async def test_mention_in_the_image_messages_thread_finds_the_result_too(fake: FakeSlack, bot: SlackBot) -> None:
    await _imagine(bot)
    [images] = bot.image_messages(CHANNEL_ID)
    await fake.send_event(fake.app_mention_event("again", thread_ts=images.ts))
    await bot.uploads_done(2)

    assert len(bot.image_messages(CHANNEL_ID, images.ts)) == 1


async def test_mention_without_an_image_elsewhere_gets_a_hint(fake: FakeSlack, bot: SlackBot) -> None:
    await fake.send_event(fake.app_mention_event("hello"))
    await fake.wait_for(lambda: bot.ephemeral_texts())

    assert "/imagine" in bot.ephemeral_texts()[0] and not fake.uploads


# --- message shortcuts -------------------------------------------------------------------------------------------


async def test_vary_image_shortcut_posts_variations_in_the_messages_thread(fake: FakeSlack, bot: SlackBot) -> None:
    shared = fake.add_file(png(), "cat.png", "image/png")
    target = fake.add_message(CHANNEL_ID, "my cat", files=[shared])
    envelope = await fake.send_interactive(fake.message_shortcut_payload("vary_image", target.to_slack()))
    await bot.uploads_done()

    assert (fake.ack_latency(envelope.envelope_id) or 99) < ACK_DEADLINE
    assert len(bot.image_messages(CHANNEL_ID, target.ts)) == 1
    assert fake.downloads[0].file_id == shared["id"] and fake.downloads[0].authorized


async def test_edit_image_shortcut_opens_the_modal_and_the_submission_edits_in_the_thread(
    fake: FakeSlack, bot: SlackBot
) -> None:
    shared = fake.add_file(png(64, 64), "cat.png", "image/png")
    target = fake.add_message(CHANNEL_ID, "my cat", files=[shared])
    await fake.send_interactive(fake.message_shortcut_payload("edit_image", target.to_slack()))
    opened = await fake.wait_for_call("views.open")

    assert opened.ok, opened.response  # within the trigger's 3 s, and before any download
    assert not fake.downloads
    view = opened.response["view"]
    assert view["callback_id"] == render.EDIT_VIEW
    region_options = [o["value"] for o in view["blocks"][1]["element"]["options"]]
    assert "top-half" in region_options and "A1:B2" in region_options
    mask = fake.add_file(png(64, 64, (255, 255, 255)), "mask.png", "image/png")
    values = {
        render.PROMPT_BLOCK: {render.PROMPT_ACTION: {"type": "plain_text_input", "value": "give it a hat"}},
        render.REGION_BLOCK: {
            render.REGION_ACTION: {"type": "static_select", "selected_option": {"value": "top-half"}}
        },
        render.MASK_BLOCK: {render.MASK_ACTION: {"type": "file_input", "files": [mask]}},
    }
    await fake.send_interactive(fake.view_submission_payload(view["id"], values))
    await bot.uploads_done()

    assert len(bot.image_messages(CHANNEL_ID, target.ts)) == 1
    assert {d.file_id for d in fake.downloads} == {shared["id"], mask["id"]}
    edited = await bot.job(button(bot.controls()[0], "vary:")["value"].split(":")[1])
    assert edited.kind == "edit" and edited.prompt == "give it a hat" and edited.request["region"] == "top-half"


async def test_shortcut_on_a_message_without_an_image_says_so(fake: FakeSlack, bot: SlackBot) -> None:
    target = fake.add_message(CHANNEL_ID, "just words")
    await fake.send_interactive(fake.message_shortcut_payload("edit_image", target.to_slack()))
    await fake.wait_for(lambda: bot.ephemeral_texts())

    assert "no image" in bot.ephemeral_texts()[0] and not fake.calls_to("views.open")


# --- the app manifest ----------------------------------------------------------------------------------------------


def test_manifest_declares_what_the_adapter_uses() -> None:
    text = (Path(__file__).resolve().parent.parent / "config" / "slack-manifest.yml").read_text()
    lines = {line.split("#")[0].strip() for line in text.splitlines()}
    lines |= {line.removeprefix("- ") for line in lines}

    for needed in (
        "command: /imagine",
        "command: /history",
        "callback_id: vary_image",
        "callback_id: edit_image",
        "name: Vary image",
    ):
        assert needed in lines, needed
    scopes = ("commands", "chat:write", "files:write", "files:read", "app_mentions:read", "reactions:write", "im:write")
    for scope in scopes:
        assert f"- {scope}" in lines, scope
    for event in ("app_mention", "message.channels", "message.groups", "message.im", "message.mpim"):
        assert f"- {event}" in lines, event
    assert "socket_mode_enabled: true" in lines and "is_enabled: true" in lines


# --- the event loop and start-up --------------------------------------------------------------------------------


async def test_no_blocking_calls_on_the_loop_while_serving_slack(fake: FakeSlack, bot: SlackBot) -> None:
    from tests.blocking import no_blocking_calls

    with no_blocking_calls(["adapters", "bot"]):
        await _imagine(bot, "a red fox --n 2")
        shared = fake.add_file(png(64, 64), "cat.png", "image/png")
        target = fake.add_message(CHANNEL_ID, "my cat", files=[shared])
        await fake.send_interactive(fake.message_shortcut_payload("vary_image", target.to_slack()))
        await bot.uploads_done(2)


async def test_a_refused_bot_token_stops_start_up_with_one_line(fake: FakeSlack, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, slack_bot_token="xoxb-not-valid", slack_app_token="xapp-x", slack_api_url=fake.api_url
    )
    async with new_http_session() as session, open_core(settings, session) as core:
        adapter = SlackAdapter(core, settings, session)
        with pytest.raises(SettingsError, match=r"SLACK_BOT_TOKEN: Slack refused the bot token \(invalid_auth\)"):
            await adapter.start()
        await adapter.stop()


async def test_image_sent_in_a_direct_message_gets_variations(fake: FakeSlack, bot: SlackBot) -> None:
    fake.add_channel("D0ALICE001", "alice", im=True)
    shared = fake.add_file(png(), "cat.png", "image/png")
    message = fake.add_message("D0ALICE001", "", files=[shared]).to_slack()
    await fake.send_event(message | {"channel": "D0ALICE001", "channel_type": "im"})
    await bot.uploads_done()

    assert len(bot.image_messages("D0ALICE001", message["ts"])) == 1


async def test_socket_mode_mounts_no_unsigned_http_endpoint(bot: SlackBot) -> None:
    app = web.Application()
    bot.adapter.install_routes(app)

    assert not [route for route in app.router.routes() if "/slack" in str(route.resource)]
