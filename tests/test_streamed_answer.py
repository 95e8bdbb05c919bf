"""The spooled answer decoder: whatever the JSON's layout and however the body arrived, the same images.

The decoder scans the spool for ``b64_json`` strings and decodes them straight from a memory map; these
properties hold it to what ``json.loads`` + ``base64`` would say about the same bytes (the oracle below).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.bootstrap import build_images
from bot.errors import ProviderResponseError
from bot.models import GenerateRequest, Usage, WriteAhead
from bot.providers.openai import _decode_success, _SpoolWriter
from bot.settings import load_settings
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.images import decode

PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"

images = st.binary(max_size=300).map(lambda middle: PNG_START + middle + PNG_END)
texts = st.text(alphabet=st.characters(max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=40)


def _oracle(raw: bytes) -> tuple[tuple[bytes | str, ...], tuple[str | None, ...], Usage | None] | None:
    """What the whole-body decoder made of an answer (None: it refused it)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return None
    found: list[bytes | str] = []
    revised: list[str | None] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("b64_json"), str):
            try:
                image = base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError):
                return None
            if not image.endswith(PNG_END) or not image.startswith(PNG_START):
                return None
            found.append(image)
        elif isinstance(item.get("url"), str) and item["url"].startswith(("http://", "https://")):
            found.append(item["url"])
        else:
            return None
        revised.append(item["revised_prompt"] if isinstance(item.get("revised_prompt"), str) else None)
    usage = body.get("usage")
    return tuple(found), tuple(revised), (None if not isinstance(usage, dict) else _usage(usage))


def _usage(usage: dict[str, Any]) -> Usage:
    def number(value: Any) -> int:
        return value if isinstance(value, int) and value >= 0 else 0

    return Usage(
        input_tokens=number(usage.get("input_tokens")),
        output_tokens=number(usage.get("output_tokens")),
        total_tokens=number(usage.get("total_tokens")),
    )


async def _paid(cost: float | None) -> None:
    return None


def _spool_and_decode(raw: bytes, cuts: list[int], recycled: bytes | None = None) -> Any:
    """Write ``raw`` to a spool in pieces split at ``cuts`` (as the network would hand it over), then decode.
    ``recycled``: the spool is a recycled file holding these bytes, written over (``WriteAhead.reuse``)."""

    def reuse(part: Path) -> bool:
        if recycled is None:
            return False
        part.write_bytes(recycled)
        return True

    async def run(spool: Path) -> Any:
        async with _SpoolWriter.to(WriteAhead(spool, _paid, reuse=reuse)) as writer:
            previous = 0
            for cut in [*sorted(set(cuts)), len(raw)]:
                if cut > previous:
                    await writer.write(raw[previous:cut])
                    previous = cut
            await writer.settle()
            return await asyncio.to_thread(writer.commit_and_decode)

    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(run(Path(folder) / "answer.json"))


@st.composite
def answers(draw: st.DrawFn, strays: bool = True) -> tuple[bytes, list[bytes | str], list[str | None]]:
    """An Images API answer encoded in any way JSON allows: spacing, key order, escapes, extra fields.

    ``strays``: may hold a ``b64_json`` outside ``data`` (never decoded, so damage there is not noticed).
    """
    count = draw(st.integers(1, 3))
    items: list[dict[str, Any]] = []
    expected: list[bytes | str] = []
    revised: list[str | None] = []
    for _ in range(count):
        item: dict[str, Any] = {}
        if draw(st.booleans()) or not draw(st.booleans()):
            image = draw(images)
            item["b64_json"] = base64.b64encode(image).decode()
            expected.append(image)
        else:
            url = "https://files.example/" + draw(st.text('abc/\\"', max_size=8))
            item["url"] = url
            expected.append(url)
        prompt = draw(st.none() | texts)
        if prompt is not None:
            item["revised_prompt"] = prompt
        revised.append(prompt)
        if draw(st.booleans()):
            item["note"] = draw(texts)  # a string value before or after the image (order is shuffled below)
        keys = draw(st.permutations(list(item)))
        items.append({key: item[key] for key in keys})
    body: dict[str, Any] = {"created": 1, "data": items}
    if draw(st.booleans()):
        body["usage"] = {"input_tokens": draw(st.integers(0, 99)), "output_tokens": 7, "total_tokens": 9}
    if strays and draw(st.booleans()):
        body["extra"] = {"b64_json": draw(st.sampled_from(["", "!!not base64", "QUJD"]))}  # elsewhere: ignored
    text = json.dumps(
        body,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.none() | st.integers(0, 3)),
        separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : "), (",\n", ":\t")])),
    )
    if draw(st.booleans()):
        text = text.replace("/", "\\/")  # some encoders escape every slash, inside base64 too
    return text.encode(), expected, revised


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.lists(st.integers(0, 4000), max_size=8), st.none() | st.binary(max_size=6000))
def test_any_layout_and_any_split_decode_to_the_same_images(
    answer: tuple[bytes, list[bytes | str], list[str | None]], cuts: list[int], recycled: bytes | None
) -> None:
    """... also written over a recycled spool that held another answer, longer or shorter."""
    raw, expected, revised = answer
    decoded = _spool_and_decode(raw, [c % (len(raw) + 1) for c in cuts], recycled)
    assert list(decoded.images) == expected
    assert list(decoded.revised_prompts) == revised
    assert (decoded.usage is None) == (b'"usage"' not in raw)


@settings(max_examples=150, deadline=None)
@given(answers(), st.integers(0, 10**6))
def test_a_cut_off_answer_is_refused(answer: tuple[bytes, list[bytes | str], list[str | None]], cut: int) -> None:
    raw, _, _ = answer
    shorter = raw[: cut % len(raw)].rstrip()
    if shorter == raw.rstrip():
        return
    with pytest.raises(ProviderResponseError):
        _decode_success(shorter)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(answers(strays=False).map(lambda a: a[0]), st.binary(max_size=200)),
    st.integers(0, 10**6),
    st.binary(max_size=4),
)
def test_the_decoder_agrees_with_the_whole_body_decoder(raw: bytes, at: int, garbage: bytes) -> None:
    damaged = raw[: at % (len(raw) + 1)] + garbage + raw[at % (len(raw) + 1) + len(garbage) :]
    expected = _oracle(damaged)
    if expected is None:
        with pytest.raises(ProviderResponseError):
            _decode_success(damaged)
        return
    decoded = _decode_success(damaged)
    assert (decoded.images, decoded.revised_prompts) == expected[:2]


def test_a_big_escaped_image_decodes_in_linear_time() -> None:
    """Every '/' escaped in megabytes of base64 (as some encoders write it) stays fast."""
    image = PNG_START + bytes(range(256)) * 8000 + PNG_END
    raw = json.dumps({"data": [{"b64_json": base64.b64encode(image).decode()}]}).replace("/", "\\/").encode()
    assert raw.count(b"\\/") > 10_000
    assert _decode_success(raw).images == (image,)


async def test_results_bigger_than_the_byte_budget_still_all_arrive(http: aiohttp.ClientSession) -> None:
    """A tight ``limits.max_result_bytes``: the jobs take turns decoding photo-sized answers, none is lost."""
    async with FakeOpenAI(photo_like=True) as fake:
        settings = load_settings(
            openai_api_key=DEFAULT_KEY,
            openai_base_url=fake.base_url,
            limits={"max_concurrent": 6, "images_per_minute": 0, "max_result_bytes": 1024**2},
        )
        core = build_images(settings, http)
        budget = core.admission.result_bytes
        seen: list[int] = []
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                seen.append(budget.held)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(
            *(core.service.generate(GenerateRequest(prompt="a fox", requester=f"u{i}", n=2)) for i in range(6))
        )
        stop.set()
        await watcher
    assert [len(r.images) for r in results] == [2] * 6
    assert all(decode(image.data).size == (1024, 1024) for r in results for image in r.images)
    assert max(seen) == budget.limit  # each answer (~6 MB of base64) went alone, at the whole budget
    assert budget.held == 0


@pytest.mark.parametrize("forged", ["\\u0000b64:0", "\\u0000b64:99", "\\u0000b64:x"])
def test_an_answer_cannot_forge_the_decoders_placeholders(forged: str) -> None:
    """A b64_json the scan did not take out (its key written with escapes) is decoded as it is: here, refused."""
    image = PNG_START + b"real" + PNG_END
    raw = json.dumps({"data": [{"b64_json": base64.b64encode(image).decode()}]})
    raw = raw[:-2] + ', {"b\\u0036\\u0034_json": "' + forged + '"}]}'
    with pytest.raises(ProviderResponseError) as caught:
        _decode_success(raw.encode())
    assert "base64" in caught.value.detail  # (not the image of another b64_json value)


def test_a_spooled_answer_is_decoded_without_holding_its_body() -> None:
    """Decoding holds the images and a small skeleton, never the megabytes of base64 (nor a copy of them)."""
    import tracemalloc

    from bot.providers.openai import _decode_spool
    from tests.fakes.openai_server import _render_photo

    image, b64 = _render_photo((1024, 1024), (10, 20, 30), "png")
    answer = json.dumps({"created": 1, "data": [{"b64_json": b64, "revised_prompt": "a fox"}], "usage": {}})
    with tempfile.TemporaryDirectory() as folder:
        spool = Path(folder) / "answer.json"
        spool.write_text(answer)
        tracemalloc.start()
        try:
            decoded = _decode_spool(spool)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert decoded.images == (image,)
    assert peak < len(image) + 256 * 1024  # the image itself, plus small change; the body is ~1.35x the image
