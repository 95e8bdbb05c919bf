"""/metrics: jobs of every upstream outcome driven through the playground against FakeOpenAI, then scraped and
parsed as Prometheus would; who may read it; the Grafana dashboard only charts metrics we export."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from adapters.runner import wire
from adapters.web.server import metrics_refusal
from bot.bootstrap import new_http_session, open_core
from bot.metrics import UPSTREAM_OUTCOMES, upstream_outcome
from bot.settings import load_settings
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import (
    DEFAULT_KEY,
    INSUFFICIENT_QUOTA,
    FakeOpenAI,
    moderation_blocked,
    rate_limited,
    server_error,
    truncated,
)
from tests.fakes.slack_server import CHANNEL_ID as SLACK_CHANNEL
from tests.fakes.slack_server import FakeSlack
from tests.test_run import platform_env, running_bot

HEADERS = {"X-Imagebot": "1"}
DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana-dashboard.json"
MODEL = "gpt-image-2"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _client(tmp_path: Path, **overrides: Any) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The web app exactly as `imagebot run` wires it (the playground when no platform is configured)."""
    settings = load_settings(data_dir=tmp_path / "data", **overrides)
    async with new_http_session() as session, open_core(settings, session) as core:
        wiring = wire(core, settings, session)
        assert wiring.playground is not None
        await wiring.playground.start()
        async with TestClient(TestServer(wiring.app)) as client:
            yield client
        await wiring.playground.stop()


async def _imagine(client: TestClient[web.Request, web.Application], prompt: str) -> int:
    response = await client.post("/api/imagine", json={"text": prompt}, headers=HEADERS)
    return response.status


async def test_metrics_count_jobs_of_every_upstream_outcome(tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        overrides = {"openai_api_key": DEFAULT_KEY, "openai_base_url": fake.base_url, "openai": {"max_retries": 1}}
        async for client in _client(tmp_path, **overrides):
            await client.get("/")  # the session cookie, as a browser gets it
            imagine = functools.partial(_imagine, client)
            assert await imagine("a fox in the snow") == 200  # ok
            fake.script(moderation_blocked())
            assert await imagine("something refused") >= 400
            fake.script(rate_limited(retry_after=0))  # one 429, then the retry succeeds
            assert await imagine("a rate-limited owl") == 200
            fake.script(INSUFFICIENT_QUOTA)
            assert await imagine("no credit left") >= 400
            fake.script(*[replace(server_error(), headers={"Retry-After": "0"})] * 2)
            assert await imagine("an outage") >= 400
            fake.script(truncated(), truncated())  # the connection drops mid-answer, twice
            assert await imagine("a cut connection") >= 400
            assert fake.pending == 0

            response = await client.get("/metrics")
            assert response.status == 200
            assert response.content_type == "text/plain"
            samples = parse(await response.text())

    calls = "imagebot_upstream_calls_total"
    assert value(samples, calls, model=MODEL, outcome="ok") == 2
    assert value(samples, calls, model=MODEL, outcome="refused_by_safety") == 1
    assert value(samples, calls, model=MODEL, outcome="rate_limited") == 1
    assert value(samples, calls, model=MODEL, outcome="quota") == 1
    assert value(samples, calls, model=MODEL, outcome="upstream_5xx") == 2
    assert value(samples, calls, model=MODEL, outcome="transport") == 2
    assert value(samples, "imagebot_upstream_retries_total", model=MODEL) == 3  # the 429, the 5xx, the cut
    assert value(samples, "imagebot_upstream_429_backoffs_total", model=MODEL) == 1

    jobs = "imagebot_jobs_total"
    assert value(samples, jobs, platform="web", kind="generate", status="delivered") == 2
    assert value(samples, jobs, platform="web", kind="generate", status="refused_by_safety") == 1
    assert value(samples, jobs, platform="web", kind="generate", status="quota_exceeded") == 1
    assert value(samples, jobs, platform="web", kind="generate", status="provider_outage") == 2

    assert value(samples, "imagebot_images_total", platform="web") == 2
    assert value(samples, "imagebot_spend_dollars_total", platform="web") > 0

    assert value(samples, "imagebot_request_seconds_count", platform="web") == 6
    assert value(samples, "imagebot_request_seconds_bucket", platform="web", le="+Inf") == 6
    assert value(samples, "imagebot_delivery_seconds_count", platform="web") == 2
    assert value(samples, "imagebot_queue_wait_seconds_count") == 6
    assert value(samples, "imagebot_upstream_seconds_count", model=MODEL) == 6
    assert value(samples, "imagebot_upstream_seconds_sum", model=MODEL) > 0
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "imagebot_upstream_seconds_bucket"
    )
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative

    assert value(samples, "imagebot_queue_length") == 0
    assert value(samples, "imagebot_running_jobs") == 0
    assert value(samples, "imagebot_adapter_connected", adapter="playground") == 1
    assert value(samples, "imagebot_adapter_state", adapter="playground", state="connected") == 1


async def test_metrics_are_per_core(tmp_path: Path) -> None:
    """Two cores in one process keep their own numbers (no global registry)."""
    async for first in _client(tmp_path / "a"):
        await first.get("/")
        response = await first.post("/api/imagine", json={"text": "a fox"}, headers=HEADERS)
        assert response.status == 200
        async for second in _client(tmp_path / "b"):
            samples = parse(await (await second.get("/metrics")).text())
            assert value(samples, "imagebot_jobs_total", platform="web", kind="generate", status="delivered") == 0
        samples = parse(await (await first.get("/metrics")).text())
        assert value(samples, "imagebot_jobs_total", platform="web", kind="generate", status="delivered") == 1


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()}


async def test_metrics_beyond_localhost_need_the_web_password(tmp_path: Path) -> None:
    async for client in _client(tmp_path, web_host="0.0.0.0", web_password="hunter2-metrics"):  # noqa: S104
        refused = await client.get("/metrics")
        assert refused.status == 401
        assert "IMAGEBOT_WEB_PASSWORD" in await refused.text()
        assert "hunter2" not in await refused.text()
        assert (await client.get("/metrics", headers=basic("wrong"))).status == 401
        allowed = await client.get("/metrics", headers=basic("hunter2-metrics"))
        assert allowed.status == 200
        assert "# TYPE imagebot_jobs_total counter" in await allowed.text()
        assert (await client.get("/healthz")).status == 200  # health stays open


async def test_metrics_on_localhost_need_no_password(tmp_path: Path) -> None:
    async for client in _client(tmp_path, web_password="hunter2-metrics"):
        assert (await client.get("/metrics")).status == 200


@pytest.mark.parametrize("outcome", UPSTREAM_OUTCOMES)
def test_every_outcome_class_is_reachable(outcome: str) -> None:
    from bot import errors

    examples = {
        "ok": (None, 200),
        "refused_by_safety": (errors.SafetyRefusalError(), 400),
        "rate_limited": (errors.RateLimitedError(), 429),
        "quota": (errors.QuotaExhaustedError(), 429),
        "upstream_5xx": (errors.ProviderOutageError(), 502),
        "transport": (errors.ProviderTimeoutError(), None),
        "bad_response": (errors.ProviderResponseError(), None),
        "rejected": (errors.AuthenticationError(), 401),
    }
    error, status = examples[outcome]
    assert upstream_outcome(error, status) == outcome


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names(text: str) -> set[str]:
    """The sample names a scrape declares (labelled series appear only once used; their ``# TYPE`` always does)."""
    return {family.name + suffix for family in text_string_to_metric_families(text) for suffix in SUFFIXES[family.type]}


async def test_dashboard_charts_only_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    async with FakeOpenAI() as fake:
        overrides = {"openai_api_key": DEFAULT_KEY, "openai_base_url": fake.base_url}
        async for client in _client(tmp_path, **overrides):
            await client.get("/")
            await client.post("/api/imagine", json={"text": "a fox"}, headers=HEADERS)
            exported = exported_names(await (await client.get("/metrics")).text())
    for expr in exprs:
        names = set(re.findall(r"\bimagebot_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exported, (expr, names - exported)


# --- a real `imagebot run` process with Discord and Slack ---------------------------------------------------------


async def _scrape_until(url: str, password: str, ready: Callable[[Samples], bool]) -> Samples:
    """Scrape (at most ~20 s) until ``ready``: a job's final status is counted just after its answer is out."""
    async with aiohttp.ClientSession() as http:
        samples: Samples = {}
        for _ in range(200):
            async with http.get(url, headers=basic(password)) as response:
                assert response.status == 200
                samples = parse(await response.text())
            if ready(samples):
                return samples
            await asyncio.sleep(0.1)
    raise AssertionError(f"the metrics never got there: {samples}")


async def test_a_running_bot_counts_discord_and_slack_jobs_behind_its_password(tmp_path: Path) -> None:
    password = "hunter2-scrape"
    async with FakeDiscord() as discord_fake, FakeSlack() as slack_fake:
        everywhere = {"IMAGEBOT_WEB_HOST": "0.0.0.0", "IMAGEBOT_WEB_PASSWORD": password}  # noqa: S104
        env = platform_env(tmp_path, discord_fake, slack_fake, **everywhere)
        url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
        async with running_bot(env, tmp_path):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/metrics") as refused:
                    assert refused.status == 401
                async with http.get(f"{url}/healthz") as health:
                    assert health.status == 200  # open, as before

            await slack_fake.send_slash_command("/imagine", "a red fox", channel_id=SLACK_CHANNEL)
            await slack_fake.wait_for_call("files.completeUploadExternal", timeout=20)
            interaction = await discord_fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse at dusk"})
            while not (await discord_fake.next_webhook_message(interaction.id, timeout=20)).files:
                pass

            def both_delivered(samples: Samples) -> bool:
                return all(
                    value(samples, "imagebot_jobs_total", platform=p, kind="generate", status="delivered") == 1
                    for p in ("discord", "slack")
                )

            samples = await _scrape_until(f"{url}/metrics", password, both_delivered)

    assert value(samples, "imagebot_ack_seconds_count", platform="discord") == 1  # the defer
    assert value(samples, "imagebot_ack_seconds_count", platform="slack") >= 1  # every request Slack sent
    assert value(samples, "imagebot_ack_seconds_bucket", platform="discord", le="3.0") == 1  # within Discord's 3 s
    for platform in ("discord", "slack"):
        assert value(samples, "imagebot_delivery_seconds_count", platform=platform) == 1
        assert value(samples, "imagebot_request_seconds_count", platform=platform) == 1
        assert value(samples, "imagebot_images_total", platform=platform) == 1
        assert value(samples, "imagebot_adapter_connected", adapter=platform) == 1
    assert value(samples, "imagebot_upstream_calls_total") == 0  # the offline provider makes no upstream calls


def _request_from(peer: str, headers: dict[str, str] | None = None) -> web.Request:
    """A request as aiohttp builds it for a connection from ``peer`` (a test client always comes from loopback)."""
    transport = asyncio.Transport({"peername": (peer, 40000)})
    return make_mocked_request("GET", "/metrics", headers=headers or {}, transport=transport)


@pytest.mark.parametrize(
    ("peer", "password", "headers", "status"),
    [
        ("203.0.113.9", None, None, 403),  # beyond localhost, no password set: this machine only
        ("127.0.0.1", None, None, None),
        ("::1", None, None, None),
        ("203.0.113.9", "pw-123", None, 401),
        ("203.0.113.9", "pw-123", basic("pw-123"), None),
        ("127.0.0.1", "pw-123", None, 401),  # with a password, everyone gives it (as for the playground)
    ],
)
def test_who_may_read_metrics_on_a_server_bound_beyond_localhost(
    peer: str, password: str | None, headers: dict[str, str] | None, status: int | None
) -> None:
    refusal = metrics_refusal(_request_from(peer, headers), password=password, local_only=False)
    assert (refusal.status if refusal is not None else None) == status
