"""Memory of `imagebot run` (Slack HTTP mode) under 4 concurrent unsigned 95 MB POSTs to /slack/events.

Starts the real process (offline images, the fake Slack in this process for auth.test), waits for /healthz,
reads its idle VmRSS, sends the POSTs, then reads its peak (VmHWM) from /proc/<pid>/status. Target: the peak
within 20 MB of idle (the signature headers are checked before any of the body is read).

    python bench/bench_slack_http.py [--requests 4] [--megabytes 95]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.slack_server import BOT_TOKEN, SIGNING_SECRET, FakeSlack  # noqa: E402


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if process.returncode is not None:
                raise SystemExit("imagebot run exited early")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("/healthz never answered 200")


async def post_unsigned(url: str, body: bytes) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        try:
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                return str(response.status)
        except aiohttp.ClientError as exc:  # closed while still sending: refused before the body was read
            return f"closed ({type(exc).__name__})"


async def main(requests: int, megabytes: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        async with FakeSlack() as fake:
            ours = ("OPENAI_", "IMAGEBOT_", "DISCORD_", "SLACK_")
            env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
            env |= {
                "IMAGEBOT_DATA_DIR": data_dir,
                "IMAGEBOT_WEB_PORT": str(port),
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": fake.api_url,
            }
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", cwd=data_dir, env=env, stdout=asyncio.subprocess.DEVNULL
            )
            try:
                await wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
                await asyncio.sleep(1.0)  # let start-up garbage settle before reading "idle"
                idle = memory_kb(process.pid)
                body = b"{" + b"x" * (megabytes * 1024 * 1024 - 1)
                url = f"http://127.0.0.1:{port}/slack/events"
                answers = await asyncio.gather(*(post_unsigned(url, body) for _ in range(requests)))
                after = memory_kb(process.pid)
            finally:
                process.terminate()
                await process.wait()
    growth_mb = (after["VmHWM"] - idle["VmRSS"]) / 1024
    print(f"{requests} concurrent unsigned {megabytes} MB POSTs to /slack/events: answers {answers}")
    print(f"idle VmRSS {idle['VmRSS'] / 1024:.1f} MB (VmHWM at idle {idle['VmHWM'] / 1024:.1f} MB)")
    print(f"peak VmHWM {after['VmHWM'] / 1024:.1f} MB: {growth_mb:+.1f} MB over idle (target: within 20 MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=95)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.megabytes))
