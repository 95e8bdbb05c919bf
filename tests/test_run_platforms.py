"""`imagebot run` with platform credentials: Discord and Slack adapters in one process, on one loop."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN, CHANNEL_ID, FakeSlack
from tests.images import decode
from tests.test_run import platform_env, start, wait_healthy


async def test_discord_and_slack_run_together_and_answer(tmp_path: Path) -> None:
    async with FakeDiscord() as discord_fake, FakeSlack() as slack_fake:
        env = platform_env(tmp_path, discord_fake, slack_fake)
        process = await start(env, tmp_path)
        try:
            health = await wait_healthy(f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}/healthz", process)
            assert health["adapters"] == {"discord": "connected", "slack": "connected"}  # no playground

            await slack_fake.send_slash_command("/imagine", "a red fox --n 2", channel_id=CHANNEL_ID)
            done = await slack_fake.wait_for_call("files.completeUploadExternal", timeout=20)
            assert done.args["channel_id"] == CHANNEL_ID
            uploads = list(slack_fake.uploads.values())
            assert len(uploads) == 2 and all(decode(u.data).format == "PNG" for u in uploads)

            interaction = await discord_fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse at dusk"})
            callback = await discord_fake.next_callback(interaction.id, timeout=10)
            assert callback.type == 5 and callback.latency < 3.0
            result = await discord_fake.next_webhook_message(interaction.id, timeout=20)
            assert len(result.files) == 1 and decode(result.files[0].data).format == "PNG"

            process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
            assert process.returncode == 0, stderr.decode()
            assert "running discord, slack" in stdout.decode()
            for secret in (BOT_TOKEN, APP_TOKEN, discord_fake.token):
                assert secret not in stdout.decode() + stderr.decode()
            discord_fake.assert_no_errors()
            slack_fake.assert_no_errors()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
