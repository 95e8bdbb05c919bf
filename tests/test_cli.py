"""The `imagebot` command end to end against the fake Images API on 127.0.0.1: in-process through
``bot.__main__.main(argv)`` (stdout/stderr captured), plus one smoke test of the real subprocess."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from bot.__main__ import main
from tests.fakes.openai_server import (
    BILLING_HARD_LIMIT,
    DEFAULT_KEY,
    FakeOpenAI,
    moderation_blocked,
    server_error,
)
from tests.images import decode, half_white_mask, jpeg, png
from tests.postgres import PASSWORD

SECRET_LOOKING = ("sk-", "Bearer", "Traceback", '{"error"', "invalid_request_error")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def paths(self) -> list[str]:
        return self.stdout.splitlines()


async def imagebot_process(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run `python -m bot ARGS` as a real process, without blocking the loop that serves the fake."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGEBOT_"))}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class CLI:
    """``imagebot ARGS`` in this process: ``main(argv)`` in a worker thread (it runs its own event loop, while the
    test's loop keeps serving the fakes), in ``cwd`` with ``env`` added, its output captured."""

    capsys: pytest.CaptureFixture[str]

    async def __call__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Run:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level  # main() configures logging: give pytest its own back
        self.capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(cwd)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            try:
                code = await asyncio.to_thread(main, list(args))
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 2
            finally:
                root.handlers[:] = handlers
                root.setLevel(level)
        out, err = self.capsys.readouterr()
        return Run(code, out, err)


@pytest.fixture
def imagebot(capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(capsys)


def openai_env(fake: FakeOpenAI, key: str = DEFAULT_KEY) -> dict[str, str]:
    return {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.base_url, "IMAGEBOT_OPENAI__MAX_RETRIES": "1"}


def assert_clean(run: Run, *secrets: str) -> None:
    text = run.stdout + run.stderr
    for secret in (DEFAULT_KEY, *secrets):
        assert secret not in text


async def test_imagine_writes_pngs_named_from_the_prompt(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    run = await imagebot_process(  # the smoke test of the real command
        "imagine",
        "RESTfull API security",
        "-n",
        "2",
        "--size",
        "1024x1024",
        "--out",
        "shots/",
        cwd=tmp_path,
        env=openai_env(fake_openai),
    )
    assert run.code == 0, run.stderr
    assert run.paths == ["shots/restfull_api_security-1.png", "shots/restfull_api_security-2.png"]
    for path in run.paths:
        assert decode((tmp_path / path).read_bytes()).size == (1024, 1024)
    assert fake_openai.last.json == {
        "model": "gpt-image-2",
        "prompt": "RESTfull API security",
        "n": 2,
        "size": "1024x1024",
    }
    assert_clean(run)


async def test_imagine_never_overwrites_existing_files(imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / "a_fox-1.png").write_bytes(b"keep me")
    run = await imagebot("imagine", "a fox", "-n", "2", cwd=tmp_path, env=openai_env(fake_openai))
    assert run.code == 0, run.stderr
    assert run.paths == ["a_fox-2.png", "a_fox-3.png"]
    assert (tmp_path / "a_fox-1.png").read_bytes() == b"keep me"


async def test_model_and_quality_are_passed_as_given(imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    run = await imagebot(
        "imagine",
        "a fox",
        "--model",
        "gpt-image-2.6-flare",
        "--quality",
        "low",
        cwd=tmp_path,
        env=openai_env(fake_openai),
    )
    assert run.code == 0, run.stderr
    assert fake_openai.last.json["model"] == "gpt-image-2.6-flare"
    assert fake_openai.last.json["quality"] == "low"


async def test_edit_with_a_mask_sends_image_and_mask_of_the_same_size(
    imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "kolochava.png").write_bytes(png(96, 64))
    (tmp_path / "kolochava-mask.png").write_bytes(half_white_mask(96, 64))
    run = await imagebot(
        "edit",
        "kolochava.png",
        "DS-1 Death Star in the sky",
        "--mask",
        "kolochava-mask.png",
        cwd=tmp_path,
        env=openai_env(fake_openai),
    )
    assert run.code == 0, run.stderr
    assert run.paths == ["ds_1_death_star_in_the_sky-1.png"]
    request = fake_openai.last
    assert request.path == "/v1/images/edits"
    image, mask = decode(request.files["image"][0].data), decode(request.files["mask"][0].data)
    assert image.size == mask.size == (96, 64)
    assert mask.mode == "RGBA"


async def test_edit_with_a_region(imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(jpeg(120, 80))
    run = await imagebot(
        "edit", "photo.jpg", "a dragon", "--region", "top-half", cwd=tmp_path, env=openai_env(fake_openai)
    )
    assert run.code == 0, run.stderr
    mask = decode(fake_openai.last.files["mask"][0].data).getchannel("A")
    assert mask.size == (120, 80)
    assert mask.getpixel((60, 10)) == 0 and mask.getpixel((60, 70)) == 255


@pytest.mark.parametrize("region", ["", "   "])
async def test_an_empty_region_is_refused_with_the_valid_ones(imagebot: CLI, tmp_path: Path, region: str) -> None:
    (tmp_path / "in.png").write_bytes(png(64, 64))
    run = await imagebot("edit", "in.png", "a hat", "--region", region, cwd=tmp_path)
    assert run.code == 1
    assert run.stderr.startswith("imagebot: The region is empty. Use one of top-half, bottom-half, left-half,")
    assert "like B2 or A1:B2" in run.stderr
    assert run.stdout == ""
    assert not list(tmp_path.glob("a_hat*"))


async def test_vary_is_an_edit_with_the_variation_prompt(
    imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "photo.jpg").write_bytes(jpeg(120, 80))
    run = await imagebot("vary", "photo.jpg", "-n", "3", cwd=tmp_path, env=openai_env(fake_openai))
    assert run.code == 0, run.stderr
    assert run.paths == ["photo-variation-1.png", "photo-variation-2.png", "photo-variation-3.png"]
    request = fake_openai.last
    assert request.path == "/v1/images/edits"
    assert request.form["n"] == ["3"]
    assert request.form["prompt"][0].startswith("Create a variation")


async def test_offline_without_a_key_still_makes_images(imagebot: CLI, tmp_path: Path) -> None:
    run = await imagebot("imagine", "a lighthouse at dusk", "--out", "out", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert run.paths == ["out/a_lighthouse_at_dusk-1.png"]
    assert decode((tmp_path / run.paths[0]).read_bytes()).size == (1024, 1024)
    assert "offline" in run.stderr


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (BILLING_HARD_LIMIT, "budget"),
        (moderation_blocked(categories=("violence",)), "safety filter"),
        (server_error(500), "having trouble"),
    ],
)
async def test_failures_are_one_friendly_paragraph(
    imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path, reply, fragment: str
) -> None:
    fake_openai.script(reply, reply)
    run = await imagebot("imagine", "a fox", cwd=tmp_path, env=openai_env(fake_openai))
    assert run.code == 1
    assert run.stdout == ""
    assert fragment in run.stderr
    assert "(ref " in run.stderr
    for marker in SECRET_LOOKING:
        assert marker not in run.stderr
    assert_clean(run)


async def test_a_wrong_key_is_never_echoed(imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    wrong = "sk-proj-THISisWRONG000111222"
    run = await imagebot("imagine", "a fox", cwd=tmp_path, env=openai_env(fake_openai, key=wrong))
    assert run.code == 1
    assert "OPENAI_API_KEY" in run.stderr
    assert_clean(run, wrong, wrong[-4:], "THISisWRONG")


async def test_verbose_logs_go_to_stderr_and_are_redacted(
    imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    wrong = "sk-proj-THISisWRONG000111222"
    run = await imagebot("-v", "imagine", "a fox", cwd=tmp_path, env=openai_env(fake_openai, key=wrong))
    assert run.code == 1
    assert "POST /images/generations -> 401" in run.stderr
    assert_clean(run, wrong, "THISisWRONG")


async def test_a_missing_input_file_is_a_friendly_error(imagebot: CLI, tmp_path: Path) -> None:
    run = await imagebot("vary", "nope.png", cwd=tmp_path)
    assert run.code == 1
    assert "no file at nope.png" in run.stderr
    assert "Traceback" not in run.stderr


async def test_a_text_file_posing_as_png_is_refused(imagebot: CLI, tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("hello, I am not a picture")
    run = await imagebot("vary", "fake.png", cwd=tmp_path)
    assert run.code == 1
    assert "PNG" in run.stderr and "Traceback" not in run.stderr


async def test_a_bad_setting_stops_with_one_line(imagebot: CLI, tmp_path: Path) -> None:
    run = await imagebot("imagine", "a fox", cwd=tmp_path, env={"IMAGEBOT_LIMITS__MAX_CONCURRENT": "zero"})
    assert run.code == 2
    assert run.stderr.count("\n") == 1
    assert "IMAGEBOT_LIMITS__MAX_CONCURRENT" in run.stderr


async def test_usage_errors_exit_non_zero(imagebot: CLI, tmp_path: Path) -> None:
    run = await imagebot("imagine", "a fox", "-n", "0", cwd=tmp_path)
    assert run.code == 2
    assert "between 1 and 10" in run.stderr


async def test_check_with_the_fake_server(imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    run = await imagebot("check", cwd=tmp_path, env=openai_env(fake_openai))
    assert run.code == 0, run.stderr
    assert "reachable: yes" in run.stdout
    assert "model gpt-image-2 known: yes" in run.stdout
    assert "openai_api_key = set (28 characters)" in run.stdout
    assert_clean(run)


async def test_check_reports_an_unreachable_provider(imagebot: CLI, tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": DEFAULT_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    run = await imagebot("check", cwd=tmp_path, env=env)
    assert run.code == 1
    assert "reachable: no" in run.stdout
    assert_clean(run)


async def test_check_offline(imagebot: CLI, tmp_path: Path) -> None:
    run = await imagebot("check", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "provider: offline (built-in generator, no API key)" in run.stdout
    assert "database: SQLite at data/jobs.sqlite3\n  reachable: yes" in run.stdout
    assert " at offline" not in run.stdout


async def test_check_masks_credentials_inside_url_settings(imagebot: CLI, tmp_path: Path) -> None:
    env = {
        "DISCORD_API_BASE_URL": "https://Zm9vYmFyLXRva2Vu@discord.example/api/v10",
        "SLACK_API_URL": "https://bob:slack-Pa55word@slack.example/api/",
    }
    run = await imagebot("check", cwd=tmp_path, env=env)
    assert run.code == 0, run.stderr
    assert "discord_api_base_url = https://[redacted]@discord.example/api/v10" in run.stdout
    assert "slack_api_url = https://bob:[redacted]@slack.example/api/" in run.stdout
    assert_clean(run, "Zm9vYmFyLXRva2Vu", "slack-Pa55word")


async def test_check_with_credentials_in_the_openai_url_masks_them_and_says_what_to_do(
    imagebot: CLI, tmp_path: Path
) -> None:
    env = {"OPENAI_API_KEY": DEFAULT_KEY, "OPENAI_BASE_URL": "http://user:hunter2-proxy@127.0.0.1:9/v1"}
    run = await imagebot("check", cwd=tmp_path, env=env)
    assert run.code == 2
    assert "openai_base_url = http://user:[redacted]@127.0.0.1:9/v1" in run.stdout
    assert run.stderr.strip().splitlines() == [
        "imagebot: setting OPENAI_BASE_URL: remove the user:password part; the API key goes in OPENAI_API_KEY "
        "(and a proxy's credentials in HTTPS_PROXY)"
    ]
    assert_clean(run, "hunter2-proxy")


async def test_usage_and_history_report_what_the_cli_made(
    imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = openai_env(fake_openai)
    assert (await imagebot("imagine", "a fox", "-n", "2", cwd=tmp_path, env=env)).code == 0
    assert (await imagebot("imagine", "a cat", cwd=tmp_path, env=env)).code == 0
    usage = await imagebot("usage", "--by", "user", cwd=tmp_path, env=env)
    assert usage.code == 0, usage.stderr
    lines = usage.stdout.splitlines()
    user_line = next(line for line in lines if line.startswith("cli:"))
    # two calls priced from the fake's usage body: 2 x (50 x $5 + 1056 x $30) / 1M
    assert user_line.split()[1:] == ["2", "3", "$0.0639"]
    history = await imagebot("history", "--limit", "5", cwd=tmp_path, env=env)
    assert history.code == 0, history.stderr
    rows = history.stdout.splitlines()[1:]
    assert len(rows) == 2
    assert "delivered" in rows[0] and "a cat" in rows[0]
    assert (tmp_path / "data" / "jobs.sqlite3").exists()


# --- PostgreSQL (IMAGEBOT_DATABASE_URL) ----------------------------------------------------------------------------


async def test_with_a_database_url_the_jobs_live_in_postgresql(
    imagebot: CLI, fake_openai: FakeOpenAI, tmp_path: Path, postgres_url: str
) -> None:
    env = {**openai_env(fake_openai), "IMAGEBOT_DATABASE_URL": postgres_url}
    assert (await imagebot("imagine", "a fox", "-n", "2", cwd=tmp_path, env=env)).code == 0
    usage = await imagebot("usage", "--by", "user", cwd=tmp_path, env=env)
    assert usage.code == 0, usage.stderr
    assert next(line for line in usage.stdout.splitlines() if line.startswith("cli:")).split()[1:3] == ["1", "2"]
    history = await imagebot("history", cwd=tmp_path, env=env)
    (row,) = history.stdout.splitlines()[1:]
    assert "delivered" in row and "a fox" in row
    assert not (tmp_path / "data" / "jobs.sqlite3").exists()  # nothing went to SQLite
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM jobs WHERE status = 'delivered'") == 1
    finally:
        await connection.close()
    assert_clean(usage, PASSWORD)
    assert_clean(history, PASSWORD)


async def test_check_reports_the_database_with_its_password_masked(
    imagebot: CLI, tmp_path: Path, postgres_url: str
) -> None:
    run = await imagebot("check", cwd=tmp_path, env={"IMAGEBOT_DATABASE_URL": postgres_url})
    assert run.code == 0, run.stderr
    where = postgres_url.rsplit("@", 1)[1]
    assert f"database: PostgreSQL at {where}\n  reachable: yes" in run.stdout
    assert f"database_url = set ({len(postgres_url)} characters)" in run.stdout
    assert_clean(run, PASSWORD, "imagebot:pg-")


async def test_check_with_an_unreachable_database_fails_with_one_line(
    imagebot: CLI, tmp_path: Path, unused_tcp_port: int
) -> None:
    url = f"postgresql://bot:Sup3r-secret-pw@127.0.0.1:{unused_tcp_port}/imagebot"
    run = await imagebot("check", cwd=tmp_path, env={"IMAGEBOT_DATABASE_URL": url})
    assert run.code == 2
    assert f"database: PostgreSQL at 127.0.0.1:{unused_tcp_port}/imagebot" in run.stdout
    assert run.stderr.strip().splitlines() == [
        f"imagebot: IMAGEBOT_DATABASE_URL: cannot connect to 127.0.0.1:{unused_tcp_port}/imagebot "
        "(connection refused: is PostgreSQL running there?)."
    ]
    assert_clean(run, "Sup3r-secret-pw")


async def test_a_database_url_that_is_not_postgresql_stops_with_one_line(imagebot: CLI, tmp_path: Path) -> None:
    run = await imagebot("check", cwd=tmp_path, env={"IMAGEBOT_DATABASE_URL": "mysql://root:hunter2-db@db/bot"})
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        "imagebot: setting IMAGEBOT_DATABASE_URL: must be a PostgreSQL URL: postgresql://user:password@host:5432/database"
    ]
    assert_clean(run, "hunter2-db")


async def test_history_names_vary_jobs_and_their_steer(imagebot: CLI, tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png(64, 64))
    assert (await imagebot("vary", "cat.png", cwd=tmp_path)).code == 0
    assert (await imagebot("vary", "cat.png", "--prompt", "in winter", cwd=tmp_path)).code == 0
    history = await imagebot("history", cwd=tmp_path)
    assert history.code == 0, history.stderr
    steered, plain = history.stdout.splitlines()[1:]
    assert "  variation: in winter (cli:" in steered
    assert "  variation (cli:" in plain


async def test_prune_reports_what_it_removed(imagebot: CLI, tmp_path: Path) -> None:
    assert (await imagebot("imagine", "a fox", cwd=tmp_path)).code == 0
    run = await imagebot("prune", cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "of 0 job(s) older than 30 days" in run.stdout


async def test_a_damaged_job_database_stops_with_one_line(imagebot: CLI, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jobs.sqlite3").write_text("garbage" * 200)
    run = await imagebot("imagine", "a fox", cwd=tmp_path)
    assert run.code == 2
    assert "damaged or not a database" in run.stderr
    assert run.stderr.count("\n") == 1
