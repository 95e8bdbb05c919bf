"""`imagebot run`: /healthz, a clean exit on SIGINT/SIGTERM, refusals at start-up. In-process through
``adapters.runner.serve`` and ``bot.__main__.main(argv)``, plus one smoke test of the real process and SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.runner import serve
from bot.__main__ import main
from bot.settings import Settings, load_settings
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN, FakeSlack

SHUTDOWN_GRACE_SECONDS = float(Settings.model_fields["shutdown_grace"].default)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    ours = ("OPENAI_", "IMAGEBOT_", "DISCORD_", "SLACK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update({"IMAGEBOT_DATA_DIR": str(tmp_path / "data"), "IMAGEBOT_WEB_PORT": str(free_port())})
    env.update(extra)
    return env


async def start(env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> dict[str, Any]:
    """Poll /healthz (at most ~20 s) until it answers 200."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            assert process.returncode is None, "imagebot run exited early"
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        return body
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("/healthz never answered 200")


def platform_env(tmp_path: Path, discord_fake: FakeDiscord, slack_fake: FakeSlack, **extra: str) -> dict[str, str]:
    """``run_env`` with Discord and Slack (Socket Mode) pointed at their fakes."""
    return run_env(
        tmp_path,
        DISCORD_TOKEN=discord_fake.token,
        DISCORD_API_BASE_URL=discord_fake.api_base,
        DISCORD_GATEWAY_URL=discord_fake.gateway_url,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_API_URL=slack_fake.api_url,
        **extra,
    )


@contextlib.asynccontextmanager
async def running_bot(env: dict[str, str], cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``imagebot run`` as a process, healthy; stopped with SIGTERM at the end unless the test killed it."""
    process = await start(env, cwd)
    try:
        await wait_healthy(f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}/healthz", process)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


@dataclass
class Running:
    process: asyncio.subprocess.Process
    base_url: str


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    env = run_env(tmp_path)
    process = await start(env, tmp_path)
    base_url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
    try:
        yield Running(process, base_url)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- in process ----------------------------------------------------------------------------------------------


@dataclass
class Served:
    """``serve`` running in the test's loop; ``stop()`` is what SIGTERM does."""

    task: asyncio.Task[int]
    stopping: asyncio.Event
    base_url: str

    async def stop(self) -> int:
        self.stopping.set()
        return await asyncio.wait_for(self.task, SHUTDOWN_GRACE_SECONDS + 5)


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **overrides: Any) -> AsyncIterator[Served]:
    settings = load_settings(data_dir=tmp_path / "data", web_port=free_port(), **overrides)
    stopping = asyncio.Event()
    task = asyncio.create_task(serve(settings, stopping))
    running = Served(task, stopping, f"http://127.0.0.1:{settings.web_port}")
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()


async def healthy(served: Served, url: str | None = None) -> dict[str, Any]:
    """Poll /healthz (at most ~20 s) until it answers 200."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            assert not served.task.done(), f"serve() ended early: {served.task.result()}"
            try:
                async with http.get(url or f"{served.base_url}/healthz") as response:
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        return body
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("/healthz never answered 200")


@pytest.fixture
def own_logging() -> Iterator[None]:
    """main() configures the root logger for the process: give pytest its handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def cli(monkeypatch: pytest.MonkeyPatch, *argv: str, **env: str) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(list(argv))


async def test_healthz_answers_200_with_json(tmp_path: Path) -> None:
    async with served(tmp_path) as running:
        health = await healthy(running)
        assert health["adapters"] == {"playground": "connected"}
        assert health["provider"] == "offline"
        assert health["queue_length"] == 0
        assert health["running"] == 0
        assert await running.stop() == 0


async def test_sigint_stops_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(data_dir=tmp_path / "data", web_port=free_port())
    task = asyncio.create_task(serve(settings))  # no event given: SIGINT and SIGTERM stop it
    await healthy(Served(task, asyncio.Event(), f"http://127.0.0.1:{settings.web_port}"))
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(task, SHUTDOWN_GRACE_SECONDS + 5) == 0
    assert capsys.readouterr().out == f"imagebot: playground at http://127.0.0.1:{settings.web_port}/\n"


def test_a_bad_setting_exits_nonzero_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], own_logging: None
) -> None:
    assert cli(monkeypatch, "run", IMAGEBOT_WEB_PORT="abc") == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert "IMAGEBOT_WEB_PORT" in err


def test_a_non_local_bind_without_a_password_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], own_logging: None
) -> None:
    assert cli(monkeypatch, "run", IMAGEBOT_WEB_HOST="0.0.0.0") == 2  # noqa: S104
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert "IMAGEBOT_WEB_PASSWORD" in err


def test_a_taken_port_exits_nonzero_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], own_logging: None
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {"IMAGEBOT_WEB_PORT": port, "IMAGEBOT_LOG_LEVEL": "ERROR", "IMAGEBOT_DATA_DIR": str(tmp_path / "d")}
        assert cli(monkeypatch, "run", **env) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"imagebot: cannot listen on 127.0.0.1:{port}: ")


async def test_stopping_lets_the_running_job_finish_and_tells_queued_users_it_is_restarting(tmp_path: Path) -> None:
    async with FakeOpenAI(latency=1.0) as fake:
        overrides = {"openai_api_key": DEFAULT_KEY, "openai_base_url": fake.base_url, "limits": {"max_concurrent": 1}}
        jar = aiohttp.CookieJar(unsafe=True)  # (cookies of 127.0.0.1)
        async with served(tmp_path, **overrides) as running, aiohttp.ClientSession(cookie_jar=jar) as http:
            await healthy(running)
            async with http.get(f"{running.base_url}/") as page:  # the session, as the page gets it
                assert page.status == 200

            async def imagine(text: str) -> tuple[int, dict[str, Any]]:
                url = f"{running.base_url}/api/imagine"
                async with http.post(url, json={"text": text}, headers={"X-Imagebot": "1"}) as response:
                    return response.status, await response.json()

            first = asyncio.create_task(imagine("a fox"))
            second = asyncio.create_task(imagine("a cat"))
            while (health := await healthy(running))["queue_length"] < 1 or health["running"] < 1:
                await asyncio.sleep(0.02)  # until one job runs and the other waits behind it
            assert await running.stop() == 0  # what SIGTERM does
            finished, refused = await first, await second
    assert finished[0] == 200
    assert len(finished[1]["images"]) == 1
    assert refused[0] == 503
    assert "restarting" in refused[1]["error"]["message"]


async def test_a_non_local_bind_with_a_password_serves_and_asks_for_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    password = "correct-horse-battery"
    async with served(tmp_path, web_host="0.0.0.0", web_password=password) as running:  # noqa: S104
        await healthy(running)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{running.base_url}/") as response:
                assert response.status == 401
            auth = {"Authorization": aiohttp.encode_basic_auth("me", password)}
            async with http.get(f"{running.base_url}/", headers=auth) as response:
                assert response.status == 200
        assert await running.stop() == 0
    out, err = capsys.readouterr()
    assert password not in out + err + caplog.text


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "opened"),
    [
        ("0.0.0.0", "127.0.0.1"),  # noqa: S104
        pytest.param("::", "[::1]", marks=pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 here")),
    ],
)
async def test_a_bind_to_all_interfaces_prints_an_address_one_can_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, opened: str
) -> None:
    async with served(tmp_path, web_host=host, web_password="a-long-playground-password") as running:
        port = running.base_url.rsplit(":", 1)[1]
        health = await healthy(running, f"http://{opened}:{port}/healthz")
        assert health["adapters"] == {"playground": "connected"}
        line = capsys.readouterr().out.strip()
        assert line == f"imagebot: playground at http://{opened}:{port}/ (listening on all interfaces, port {port})"


async def test_a_second_run_on_the_same_data_folder_says_so_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], own_logging: None
) -> None:
    async with served(tmp_path) as running:
        await healthy(running)
        env = {"IMAGEBOT_DATA_DIR": str(tmp_path / "data"), "IMAGEBOT_WEB_PORT": str(free_port())}
        capsys.readouterr()
        assert await asyncio.to_thread(cli, monkeypatch, "run", **env) == 2
        folder = (tmp_path / "data").resolve()
        assert capsys.readouterr().err.splitlines() == [
            f"imagebot: another imagebot is already using the data folder {folder} (pid {os.getpid()}); "
            "stop it first, or set IMAGEBOT_DATA_DIR"
        ]
        await healthy(running)  # the first one is untouched and still serving


async def test_reports_work_beside_a_running_bot_and_job_commands_wait_their_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], own_logging: None
) -> None:
    monkeypatch.chdir(tmp_path)
    data = {"IMAGEBOT_DATA_DIR": str(tmp_path / "data")}
    async with served(tmp_path) as running:
        await healthy(running)
        for report in (["history"], ["usage"], ["check"]):
            capsys.readouterr()
            assert await asyncio.to_thread(cli, monkeypatch, *report, **data) == 0
            assert capsys.readouterr().out
        assert await asyncio.to_thread(cli, monkeypatch, "imagine", "a fox", **data) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("imagebot: another imagebot is already using the data folder")
    assert await asyncio.to_thread(cli, monkeypatch, "imagine", "a fox", **data) == 0  # the lock went with it
    assert capsys.readouterr().out.strip() == "a_fox-1.png"


# --- the real process: one smoke test ---------------------------------------------------------------------


async def test_sigterm_exits_0_within_the_grace_period_and_says_where_it_was(running: Running) -> None:
    await wait_healthy(f"{running.base_url}/healthz", running.process)
    running.process.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(running.process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)
    assert running.process.returncode == 0
    assert stdout.decode().splitlines() == [f"imagebot: playground at {running.base_url}/"]
    log = stderr.decode()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log
