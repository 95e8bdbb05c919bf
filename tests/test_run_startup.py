"""`imagebot run` when a platform is unreachable at start (it retries, /healthz names it) or refuses the token
(one line, exit code 2). The real process; the fake platforms started late on a port reserved for them."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.test_run import free_port, platform_env, run_env, start, wait_healthy


async def _health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    return response.status, await response.json()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError("/healthz never answered")


async def test_platforms_unreachable_at_start_are_retried_while_healthz_names_them(tmp_path: Path) -> None:
    slack_fake = FakeSlack()
    discord_fake = FakeDiscord()
    slack_fake.port, discord_fake.port = free_port(), free_port()  # reserved: nothing listens there yet
    env = platform_env(tmp_path, discord_fake, slack_fake)
    health_url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}/healthz"
    process = await start(env, tmp_path)
    try:
        status, body = await _health(health_url)
        assert status == 503
        assert sorted(body["down"]) == ["discord", "slack"]
        assert set(body["adapters"].values()) <= {"starting", "disconnected"}  # (still trying, or retrying)

        async with slack_fake, discord_fake:  # the platforms come back
            health = await wait_healthy(health_url, process)
            assert health["adapters"] == {"discord": "connected", "slack": "connected"} and health["down"] == []
            process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    errors = stderr.decode()
    assert process.returncode == 0, errors
    assert "Traceback" not in errors and "Unclosed" not in errors and "went wrong" not in errors
    assert "imagebot: discord: cannot reach Discord" in errors and "retrying in the background" in errors
    # (Slack's own client retries a refused connection once: it may have met the fake already up)
    for secret in (BOT_TOKEN, APP_TOKEN, discord_fake.token):
        assert secret not in stdout.decode() + errors


async def test_a_refused_token_at_start_exits_with_one_line_and_code_2(tmp_path: Path) -> None:
    async with FakeSlack(bot_token="xoxb-the-right-one") as slack_fake:
        env = run_env(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN, SLACK_API_URL=slack_fake.api_url)
        process = await start(env, tmp_path)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    errors = [line for line in stderr.decode().splitlines() if line.startswith("imagebot:")]
    assert process.returncode == 2
    assert errors == ["imagebot: slack: setting SLACK_BOT_TOKEN: Slack refused the bot token (invalid_auth)"]
    assert "Traceback" not in stderr.decode() and BOT_TOKEN not in stderr.decode()


async def test_a_token_refused_when_the_platform_comes_back_ends_the_process_with_code_2(tmp_path: Path) -> None:
    discord_fake = FakeDiscord()
    discord_fake.port = free_port()
    env = run_env(
        tmp_path,
        DISCORD_TOKEN="not-" + discord_fake.token,
        DISCORD_API_BASE_URL=discord_fake.api_base,
        DISCORD_GATEWAY_URL=discord_fake.gateway_url,
    )
    process = await start(env, tmp_path)
    try:
        status, body = await _health(f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}/healthz")
        assert (status, body["down"]) == (503, ["discord"])
        async with discord_fake:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2, stderr.decode()
    assert "imagebot: discord: Discord rejected DISCORD_TOKEN" in stderr.decode()
    assert "Traceback" not in stderr.decode()
