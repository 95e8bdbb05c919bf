"""Localisation: the catalogues match the code, every shipped language translates every message with the same
placeholders, Discord's command registration carries localised names within Discord's limits, and people get
their replies in their own language on the wire (Discord's interaction locale, the browser's language; Slack's
user locale is in test_slack_locales.py)."""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po
from hypothesis import given
from hypothesis import strategies as st

from adapters.common import i18n
from adapters.common.flags import parse_imagine
from adapters.common.words import kind_word, region_label, size_label, status_word
from adapters.discord.registration import commands_differ
from bot import imaging
from bot.errors import (
    InvalidImageError,
    InvalidRequestError,
    ModelUnavailableError,
    RateLimitedError,
    SafetyRefusalError,
)
from bot.models import GenerateRequest, JobStatus
from bot.settings import load_settings
from bot.text import N_, NP_, placeholders
from tests.fakes.discord_server import APP_ID, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, moderation_blocked
from tests.fakes.provider import FakeImages
from tests.test_discord import fake, openai_settings, running, settings_for  # noqa: F401
from tests.test_discord_lifecycle import snapshot
from tests.test_service import make_service, provider  # noqa: F401
from tests.test_web import HEADERS, Harness, web_bot  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "adapters" / "locales"
SHIPPED = ("de", "es", "fr", "ja", "pt_BR")
# Discord's locales for the shipped languages (both Spanish variants read the one Spanish catalogue)
DISCORD_LOCALES = ("de", "fr", "es-ES", "es-419", "pt-BR", "ja")
# the README's pybabel command: Babel's default keywords plus ``-k NP_:1,2 -k NC_:1c,2 -k locale_str``
KEYWORDS = {**DEFAULT_KEYWORDS, "NP_": (1, 2), "NC_": ((1, "c"), 2), "locale_str": None}


def _catalogue(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale, domain="imagebot")


def _key(message: Message) -> tuple[str | None, str]:
    msgid = message.id[0] if isinstance(message.id, tuple | list) else message.id
    return message.context, str(msgid)


def _extracted() -> set[tuple[str | None, str]]:
    found: set[tuple[str | None, str]] = set()
    for folder in ("bot", "adapters"):
        for _, _, message, _, context in extract_from_dir(
            ROOT / folder, method_map=[("**.py", "python")], keywords=KEYWORDS
        ):
            found.add((context, message[0] if isinstance(message, tuple | list) else message))
    return found


def _translations() -> Iterator[tuple[str, Message]]:
    for locale in SHIPPED:
        for message in _catalogue(LOCALES / locale / "LC_MESSAGES" / "imagebot.po", locale):
            if message.id:
                yield locale, message


# --- the catalogues ---------------------------------------------------------------------------------------------


def test_the_template_holds_exactly_the_strings_marked_in_the_code() -> None:
    """A user-facing string wrapped in the code but missing from the .pot (or left over in it) fails here:
    run the pybabel commands of the README's "Languages" section."""
    template = {_key(m) for m in _catalogue(LOCALES / "imagebot.pot") if m.id}
    code = _extracted()
    assert sorted(code - template, key=str) == [], "marked in the code, not in adapters/locales/imagebot.pot"
    assert sorted(template - code, key=str) == [], "in the .pot, no longer in the code"


def test_the_shipped_languages_are_the_ones_loaded() -> None:
    assert i18n.SHIPPED == SHIPPED
    assert sorted(p.name for p in LOCALES.iterdir() if p.is_dir()) == sorted(SHIPPED)


@pytest.mark.parametrize("locale", SHIPPED)
def test_every_message_is_translated_in_every_language(locale: str) -> None:
    template = {_key(m) for m in _catalogue(LOCALES / "imagebot.pot") if m.id}
    catalogue = _catalogue(LOCALES / locale / "LC_MESSAGES" / "imagebot.po", locale)
    done = {
        _key(m)
        for m in catalogue
        if m.id and not m.fuzzy and all(m.string if isinstance(m.string, tuple) else [m.string])
    }
    assert sorted(template - done, key=str) == []


def test_no_translation_drops_or_adds_a_placeholder() -> None:
    wrong = []
    for locale, message in _translations():
        ids = message.id if isinstance(message.id, tuple | list) else (message.id,)
        expected = set().union(*(placeholders(str(i)) for i in ids))
        forms = message.string if isinstance(message.string, tuple | list) else (message.string,)
        for form in forms:
            if placeholders(str(form)) != expected:
                wrong.append((locale, str(ids[0])[:60], str(form)[:60]))
    assert wrong == []


def test_the_placeholder_check_sees_a_dropped_placeholder() -> None:
    assert placeholders("Queued — #{position} in line") == {"position"}
    assert placeholders("In der Warteschlange") != placeholders("Queued — #{position} in line")


def test_command_names_follow_discords_rules_in_every_language() -> None:
    for locale, message in _translations():
        if message.context == "option name" or (message.context == "command name" and " " not in str(message.id)):
            assert _valid_name(str(message.string)), (locale, message.id, message.string)
        elif message.context in ("command name", "choice"):  # context menu names and choices: 1-32 / 1-100
            assert 1 <= len(str(message.string)) <= (32 if message.context == "command name" else 100)


def _valid_name(name: str) -> bool:
    """Discord's ``^[-_\\p{L}\\p{N}]{1,32}$``, lowercase where the letter has a lowercase form."""
    letters = all(c in "-_" or unicodedata.category(c)[0] in "LN" for c in name)
    return 1 <= len(name) <= 32 and letters and name == name.lower()


# --- rendering ------------------------------------------------------------------------------------------------


def test_a_core_error_renders_with_its_values_in_each_language_and_stays_english_in_str() -> None:
    error = RateLimitedError(retry_after=12)
    assert str(error) == "The image service is rate-limiting the bot right now. Please try again in about 12 seconds."
    assert error.friendly() == f"{error} (ref {error.ref})"
    rendered = {locale: i18n._(error.friendly_text(), locale) for locale in SHIPPED}
    assert rendered["de"].startswith("Der Bilddienst bremst den Bot gerade aus.") and "12 Sekunden" in rendered["de"]
    assert "12 secondes" in rendered["fr"] and "12 segundos" in rendered["es"] and "12 segundos" in rendered["pt_BR"]
    assert "12 秒" in rendered["ja"]
    assert all(error.ref in text for text in rendered.values())


def test_plural_forms_follow_each_language() -> None:
    one, many = RateLimitedError(retry_after=1).text, RateLimitedError(retry_after=120).text
    assert "1 Sekunde " in i18n._(one, "de") and "2 Minuten" in i18n._(many, "de")
    assert "1 seconde" in i18n._(one, "fr") and "2 minutes" in i18n._(many, "fr")


def test_a_nested_phrase_is_translated_inside_its_sentence() -> None:
    refusal = SafetyRefusalError(stage="output", categories=("violence",))
    assert "(flagged: violence)" in str(refusal)
    assert "abgelehnt (markiert: violence)." in i18n._(refusal.text, "de")


def test_a_broken_translation_falls_back_to_english_instead_of_failing() -> None:
    text = N_("Queued — #{position} in line", position=3)
    assert text.render(lambda _: "Platz {platz}") == "Queued — #3 in line"
    assert NP_("{count} image", "{count} images", 2).render() == "2 images"


def test_a_plain_string_message_is_shown_verbatim_even_with_braces() -> None:
    error = InvalidRequestError("a {weird} prompt")
    assert i18n._(error.text, "de") == "a {weird} prompt"


def test_flag_errors_keep_their_values_in_translation() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_imagine("a cat --n 99")
    assert i18n._(caught.value.text, "de") == "--n erwartet eine Bildanzahl von 1 bis 10 (angegeben: 99)."


async def test_a_retired_model_is_refused_in_german_through_the_core(provider: FakeImages) -> None:  # noqa: F811
    service = make_service(provider, today=dt.date(2026, 12, 1))
    with pytest.raises(ModelUnavailableError) as caught:
        await service.generate(GenerateRequest(prompt="ein Fuchs", model="gpt-image-1-mini"))
    german = i18n._(caught.value.text, "de")
    assert german.startswith(
        "Das Bildmodell „gpt-image-1-mini“ wurde am 2026-12-01 eingestellt. Bitte nimm stattdessen "
    )
    assert "gpt-image-2.6-flare" in german
    assert str(caught.value).startswith("The image model 'gpt-image-1-mini' was retired on 2026-12-01. Please use ")
    assert provider.calls == []


def test_a_region_error_and_an_unreadable_upload_are_whole_german_sentences() -> None:
    with pytest.raises(InvalidImageError) as region:
        imaging.parse_region("somewhere nice")
    assert i18n._(region.value.text, "de").startswith("Diesen Bereich kenne ich nicht. Nimm einen von top-half, ")
    with pytest.raises(InvalidImageError) as upload:
        imaging.open_image(b"not a picture at all", max_bytes=1000, max_pixels=1000)
    assert i18n._(upload.value.text, "de") == (
        "Diese Datei ist kein Bild, das ich lesen kann. Schick ein PNG, JPEG, WebP oder GIF."
    )
    assert i18n._(upload.value.text, "fr").endswith("Envoie un PNG, JPEG, WebP ou GIF.")


def test_a_size_rule_problem_is_translated_inside_its_sentence() -> None:
    catalog = load_settings().catalog()
    model, spec = catalog.resolve("gpt-image-2")
    with pytest.raises(InvalidRequestError) as caught:
        catalog.check_size(model, spec, "1000x1000")
    assert str(caught.value) == "1000x1000 doesn't work for gpt-image-2: both sides must be multiples of 16."
    assert "beide Seiten müssen Vielfache von 16 sein" in i18n._(caught.value.text, "de")
    assert "両辺を 16 の倍数にしてください" in i18n._(caught.value.text, "ja")


def test_status_words_and_labels_follow_the_readers_language() -> None:
    with i18n.speaking("de"):
        assert status_word(JobStatus.FAILED) == "fehlgeschlagen"
        assert region_label("top-half") == "Obere Hälfte"
        assert kind_word("vary") == "Variation" and kind_word("edit") == "Bildbearbeitung"
        assert size_label("auto") == "auto (das Modell wählt)" and size_label("1024x1024") == "1024x1024"
    with i18n.speaking("pt-BR"):
        assert status_word(JobStatus.INTERRUPTED) == "interrompido"
    assert status_word(JobStatus.AWAITING_CONFIRMATION) == "awaiting confirmation"


@pytest.mark.parametrize(
    ("tag", "locale"),
    [
        *[("de", "de"), ("de-DE", "de"), ("es-ES", "es"), ("es-419", "es"), ("pt-BR", "pt_BR"), ("pt-PT", "pt_BR")],
        *[("ja", "ja"), ("fr-CA", "fr"), ("en-US", "en"), ("it", "en"), ("", "en"), (None, "en")],
    ],
)
def test_language_tags_map_to_shipped_catalogues(tag: str | None, locale: str) -> None:
    assert i18n.negotiate(tag) == locale


def test_accept_language_picks_the_best_shipped_language() -> None:
    assert i18n.from_accept_language("it-IT, fr;q=0.8, de;q=0.9") == "de"
    assert i18n.from_accept_language("en-US,en;q=0.9,de;q=0.8") == "en"
    assert i18n.from_accept_language("ja;q=0") == "en"


@given(st.text(max_size=300))
def test_any_accept_language_header_gives_a_shipped_language_or_english(header: str) -> None:
    assert i18n.from_accept_language(header) in (*SHIPPED, "en")
    assert i18n.negotiate(header) in (*SHIPPED, "en")


# --- Discord ------------------------------------------------------------------------------------------------


def _all_localised(raw: dict[str, Any], *, description: bool) -> Iterator[str]:
    """Problems with one command or option's localisations (empty when all shipped locales are there, valid)."""
    names = raw.get("name_localizations") or {}
    slash_like = raw.get("type", 1) != 3 or "options" not in raw  # menus (type 3) may have spaces and capitals
    for locale in DISCORD_LOCALES:
        name = names.get(locale)
        if name is None:
            yield f"{raw['name']}: no name for {locale}"
        elif slash_like and not _valid_name(name):
            yield f"{raw['name']}: invalid {locale} name {name!r}"
        elif len(name) > 32:
            yield f"{raw['name']}: {locale} name too long"
        if description:
            text = (raw.get("description_localizations") or {}).get(locale)
            if text is None or not 1 <= len(text) <= 100:
                yield f"{raw['name']}: bad {locale} description {text!r}"


async def test_registration_carries_localised_names_and_descriptions(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with running(settings_for(fake, tmp_path)):
        pass
    ((_, payload),) = fake.command_puts
    problems: list[str] = []
    for command in payload:
        menu = command.get("type") == 3
        if menu:
            names = command.get("name_localizations") or {}
            problems += [
                f"{command['name']}: {loc}" for loc in DISCORD_LOCALES if not 1 <= len(names.get(loc, "")) <= 32
            ]
            continue
        problems += _all_localised(command, description=True)
        for option in command.get("options") or []:
            problems += _all_localised(option, description=True)
            for choice in option.get("choices") or []:
                shown = choice.get("name_localizations") or {}
                problems += [f"choice {choice['name']}: {loc}" for loc in DISCORD_LOCALES if not shown.get(loc)]
    assert problems == []
    imagine = next(c for c in payload if c["name"] == "imagine")
    assert imagine["name_localizations"]["de"] == "bild"
    assert imagine["description_localizations"]["es-419"] == imagine["description_localizations"]["es-ES"]
    assert imagine["description_localizations"]["ja"] == "テキストのプロンプトから画像を作成します"
    fake.assert_no_errors()


async def test_a_remote_copy_without_the_localisations_is_synced_again(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    settings = settings_for(fake, tmp_path)
    async with running(settings) as first:
        assert first.synced is True
    async with running(settings) as second:
        assert second.synced is False  # the same localisations came back from Discord: nothing to do
    imagine = next(c for c in fake.commands if c["name"] == "imagine")
    del imagine["options"][0]["description_localizations"]  # an older registration, before translations
    async with running(settings) as third:
        assert third.synced is True
    for command in fake.commands:
        command["name_localizations"] = None
    async with running(settings) as fourth:
        assert fourth.synced is True
    assert len(fake.command_puts) == 3
    fake.assert_no_errors()


def test_localisations_are_compared_whatever_their_order_or_absence() -> None:
    local = {"type": 1, "name": "imagine", "description": "d", "name_localizations": {"de": "bild", "ja": "画像生成"}}
    same = {**local, "name_localizations": {"ja": "画像生成", "de": "bild"}}
    assert not commands_differ([local], [same])
    assert commands_differ([local], [{**local, "name_localizations": None}])
    bare = {"type": 1, "name": "imagine", "description": "d"}
    assert not commands_differ([bare], [{**bare, "name_localizations": None, "description_localizations": {}}])


def _texts_to(server: FakeDiscord, interaction_id: str) -> list[str]:
    return [s.content or "" for s in server.sent if s.interaction_id == interaction_id]


async def test_imagine_from_a_german_user_gets_german_progress_result_and_failures(
    fake: FakeDiscord,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with FakeOpenAI(latency=0.3) as openai, running(openai_settings(fake, openai, tmp_path)):
        made = await fake.dispatch_slash_command("imagine", {"prompt": "ein Fuchs im Schnee"}, locale="de")
        await fake.wait_for(lambda: any(s.files for s in fake.sent if s.interaction_id == made.id), what="result")
        empty = await fake.dispatch_slash_command("imagine", {"prompt": "   "}, locale="de")
        refused_text = await fake.wait_for(
            lambda: next((t for t in _texts_to(fake, empty.id) if "Ref." in t), None), what="the German failure"
        )
        openai.script(moderation_blocked("input", ["violence"]))
        blocked = await fake.dispatch_slash_command("imagine", {"prompt": "etwas"}, locale="de")
        blocked_text = await fake.wait_for(
            lambda: next((t for t in _texts_to(fake, blocked.id) if "Ref." in t), None), what="the safety refusal"
        )
        english = await fake.dispatch_slash_command("imagine", {"prompt": "   "}, locale="en-US")
        english_text = await fake.wait_for(
            lambda: next((t for t in _texts_to(fake, english.id) if "(ref " in t), None), what="the English failure"
        )
    assert "Wird erstellt…" in _texts_to(fake, made.id)[0]
    assert refused_text.startswith("Bitte beschreib das gewünschte Bild: Die Beschreibung ist leer. (Ref. ")
    assert blocked_text.startswith("Der Sicherheitsfilter des Bilddienstes hat diese Beschreibung oder dieses Bild")
    assert "(markiert: violence)" in blocked_text
    assert english_text.startswith("Please describe the image you want: the prompt is empty. (ref ")
    fake.assert_no_errors()


async def test_a_refusal_is_in_the_interaction_language(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    settings = settings_for(fake, tmp_path, discord={"allowed_guilds": ["123"]})
    async with running(settings):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a cat"}, locale="ja")
        callback = await fake.next_callback(inter.id)
    assert callback.data is not None
    assert callback.data["content"] == "このサーバーでは有効になっていません。"
    fake.assert_no_errors()


# --- the playground -------------------------------------------------------------------------------------------


async def test_the_playground_answers_in_the_browsers_language(web_bot: Harness) -> None:  # noqa: F811
    headers = {**HEADERS, "Accept-Language": "ja-JP,ja;q=0.9,en;q=0.8"}
    response = await web_bot.client.post("/api/imagine", json={"text": "/imagine   --n 2"}, headers=headers)
    error = (await response.json())["error"]
    assert response.status == 400
    assert error["message"] == f"作成したい画像を説明してください。プロンプトが空です。（参照 ID: {error['ref']}）"
    english = await web_bot.imagine("/imagine   --n 2", status=400)
    assert english["error"]["message"].startswith("Please describe the image you want")


async def test_the_playground_page_gets_its_words_in_the_browsers_language(web_bot: Harness) -> None:  # noqa: F811
    response = await web_bot.client.get("/api/config", headers={"Accept-Language": "ja-JP,ja;q=0.9"})
    config = await response.json()
    assert config["locale"] == "ja"
    assert config["strings"]["Send"] == "送信"
    assert config["strings"]["Upload a mask…"] == "マスクをアップロード…"
    assert config["strings"]["{count} image"] == config["strings"]["{count} images"] == "{count} 枚の画像"
    assert config["region_labels"]["top-half"] == "上半分"
    english = await (await web_bot.client.get("/api/config", headers={"Accept-Language": "en-US"})).json()
    assert english["strings"]["Send"] == "Send" and english["region_labels"]["center"] == "Center"
    assert english["strings"]["{count} images"] == "{count} images"


async def test_a_lost_playground_session_is_explained_in_the_browsers_language(web_bot: Harness) -> None:  # noqa: F811
    web_bot.client.session.cookie_jar.clear()
    response = await web_bot.client.get("/api/history", headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert response.status == 401
    message = (await response.json())["error"]["message"]
    assert message.startswith("Deine Playground-Sitzung fehlt oder ist abgelaufen. Bitte lade die Seite neu")


async def test_the_fake_refuses_a_localised_name_outside_discords_rules(fake: FakeDiscord) -> None:  # noqa: F811
    command = {"type": 1, "name": "imagine", "description": "d", "name_localizations": {"de": "Bild Erzeugen"}}
    async with aiohttp.ClientSession() as session:
        url = f"{fake.api_base}/applications/{APP_ID}/commands"
        async with session.put(url, json=[command], headers={"Authorization": f"Bot {fake.token}"}) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 50035
    fake.command_puts.clear()


async def test_a_restart_tells_a_german_requester_in_german(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    crashed = tmp_path / "after-crash"
    async with FakeOpenAI(latency=30) as openai:
        async with running(openai_settings(fake, openai, tmp_path / "before")):
            await fake.dispatch_slash_command("imagine", {"prompt": "eine langsame Burg"}, locale="de")
            await fake.wait_for(lambda: openai.image_requests or None, what="the upstream call")
            snapshot(tmp_path / "before", crashed)
        told_before = len(fake.sent)
        async with running(openai_settings(fake, openai, crashed)):
            english = await fake.dispatch_slash_command("imagine", {"prompt": "   "})  # someone else, after it
            failure = await fake.wait_for(
                lambda: next((t for t in _texts_to(fake, english.id) if "(ref " in t), None), what="English failure"
            )
    notices = [s.content or "" for s in fake.sent[told_before:] if "Neustart" in (s.content or "")]
    assert notices == [
        "Ein Neustart hat deine Anfrage „eine langsame Burg“ unterbrochen; es wurde nichts berechnet. "
        "Bitte frag noch einmal."
    ]
    assert failure.startswith("Please describe the image you want")  # an English user still reads English
    fake.assert_no_errors()
