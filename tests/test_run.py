"""`imagebot run` as a real process: /healthz, a clean exit on SIGTERM, refusals at start-up."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.settings import Settings
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI

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


async def test_healthz_answers_200_with_json(running: Running) -> None:
    health = await wait_healthy(f"{running.base_url}/healthz", running.process)
    assert health["adapters"] == {"playground": "connected"}
    assert health["provider"] == "offline"
    assert health["queue_length"] == 0
    assert health["running"] == 0


async def test_sigterm_exits_0_within_the_grace_period_and_says_where_it_was(running: Running) -> None:
    await wait_healthy(f"{running.base_url}/healthz", running.process)
    running.process.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(running.process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)
    assert running.process.returncode == 0
    assert stdout.decode().splitlines() == [f"imagebot: playground at {running.base_url}/"]
    log = stderr.decode()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log


async def test_sigint_also_stops_cleanly(running: Running) -> None:
    await wait_healthy(f"{running.base_url}/healthz", running.process)
    running.process.send_signal(signal.SIGINT)
    await asyncio.wait_for(running.process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)
    assert running.process.returncode == 0


async def exits(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await start(env, cwd)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    assert stdout == b""
    return process.returncode, stderr.decode()


async def test_a_bad_setting_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    code, stderr = await exits(run_env(tmp_path, IMAGEBOT_WEB_PORT="abc"), tmp_path)
    assert code != 0
    assert len(stderr.splitlines()) == 1
    assert "IMAGEBOT_WEB_PORT" in stderr


async def test_a_non_local_bind_without_a_password_is_refused(tmp_path: Path) -> None:
    code, stderr = await exits(run_env(tmp_path, IMAGEBOT_WEB_HOST="0.0.0.0"), tmp_path)  # noqa: S104
    assert code != 0
    assert len(stderr.splitlines()) == 1
    assert "IMAGEBOT_WEB_PASSWORD" in stderr


async def test_a_taken_port_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, stderr = await exits(run_env(tmp_path, IMAGEBOT_WEB_PORT=port, IMAGEBOT_LOG_LEVEL="ERROR"), tmp_path)
    assert code != 0
    assert stderr.splitlines() == [line for line in stderr.splitlines() if line.startswith("imagebot: cannot listen")]
    assert len(stderr.splitlines()) == 1


async def test_sigterm_lets_the_running_job_finish_and_tells_queued_users_it_is_restarting(tmp_path: Path) -> None:
    async with FakeOpenAI(latency=1.5) as fake:
        env = run_env(
            tmp_path,
            OPENAI_API_KEY=DEFAULT_KEY,
            OPENAI_BASE_URL=fake.base_url,
            IMAGEBOT_LIMITS__MAX_CONCURRENT="1",
        )
        process = await start(env, tmp_path)
        base_url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
        try:
            await wait_healthy(f"{base_url}/healthz", process)
            async with aiohttp.ClientSession() as http:

                async def imagine(text: str) -> tuple[int, dict[str, Any]]:
                    async with http.post(
                        f"{base_url}/api/imagine", json={"text": text}, headers={"X-Imagebot": "1"}
                    ) as response:
                        return response.status, await response.json()

                running = asyncio.create_task(imagine("a fox"))
                queued = asyncio.create_task(imagine("a cat"))
                for _ in range(100):  # until one job is running and the other waits behind it
                    async with http.get(f"{base_url}/healthz") as response:
                        health = await response.json()
                    if (health["running"], health["queue_length"]) == (1, 1):
                        break
                    await asyncio.sleep(0.05)
                assert (health["running"], health["queue_length"]) == (1, 1)
                process.send_signal(signal.SIGTERM)
                finished, refused = await running, await queued
            await asyncio.wait_for(process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0
    assert finished[0] == 200
    assert len(finished[1]["images"]) == 1
    assert refused[0] == 503
    assert "restarting" in refused[1]["error"]["message"]


async def test_a_non_local_bind_with_a_password_serves_and_asks_for_it(tmp_path: Path) -> None:
    password = "correct-horse-battery"
    env = run_env(tmp_path, IMAGEBOT_WEB_HOST="0.0.0.0", IMAGEBOT_WEB_PASSWORD=password)  # noqa: S104
    process = await start(env, tmp_path)
    base_url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
    try:
        await wait_healthy(f"{base_url}/healthz", process)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base_url}/") as response:
                assert response.status == 401
            auth = {"Authorization": aiohttp.encode_basic_auth("me", password)}
            async with http.get(f"{base_url}/", headers=auth) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert password not in stdout.decode() + stderr.decode()


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
async def test_a_bind_to_all_interfaces_prints_an_address_one_can_open(tmp_path: Path, host: str, opened: str) -> None:
    env = run_env(tmp_path, IMAGEBOT_WEB_HOST=host, IMAGEBOT_WEB_PASSWORD="a-long-playground-password")
    process = await start(env, tmp_path)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode().strip()
        port = env["IMAGEBOT_WEB_PORT"]
        assert line == f"imagebot: playground at http://{opened}:{port}/ (listening on all interfaces, port {port})"
        url = line.split()[3]
        health = await wait_healthy(f"{url}healthz", process)
        assert health["adapters"] == {"playground": "connected"}
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)


async def imagebot_command(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_a_second_run_on_the_same_data_folder_says_so_and_exits(running: Running, tmp_path: Path) -> None:
    await wait_healthy(f"{running.base_url}/healthz", running.process)
    code, stderr = await exits(run_env(tmp_path), tmp_path)  # same data folder, another free port
    assert code == 2
    folder = (tmp_path / "data").resolve()
    assert stderr.splitlines() == [
        f"imagebot: another imagebot is already using the data folder {folder} (pid {running.process.pid}); "
        "stop it first, or set IMAGEBOT_DATA_DIR"
    ]
    assert running.process.returncode is None  # the first one is untouched and still serving
    await wait_healthy(f"{running.base_url}/healthz", running.process)


async def test_reports_work_beside_a_running_bot_and_job_commands_wait_their_turn(
    running: Running, tmp_path: Path
) -> None:
    await wait_healthy(f"{running.base_url}/healthz", running.process)
    env = run_env(tmp_path)
    for report in (["history"], ["usage"], ["check"]):
        code, stdout, stderr = await imagebot_command(env, tmp_path, *report)
        assert code == 0, stderr
        assert stdout
    code, stdout, stderr = await imagebot_command(env, tmp_path, "imagine", "a fox")
    assert code == 2 and stdout == ""
    assert stderr.startswith("imagebot: another imagebot is already using the data folder")

    running.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(running.process.communicate(), timeout=SHUTDOWN_GRACE_SECONDS + 5)
    code, stdout, stderr = await imagebot_command(env, tmp_path, "imagine", "a fox")
    assert code == 0, stderr  # the lock went with the process
    assert stdout.strip() == "a_fox-1.png"
