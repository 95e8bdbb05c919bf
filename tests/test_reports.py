"""`imagebot usage` and `imagebot history` with ``--format json|csv``, run as the real command; CSV that survives
any prompt (and never lets a spreadsheet run one as a formula)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bot.reports import as_csv
from tests.fakes.openai_server import FakeOpenAI
from tests.test_cli import imagebot_process, openai_env


async def _two_jobs(fake: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    env = openai_env(fake)
    assert (await imagebot_process("imagine", "a fox", "-n", "2", cwd=tmp_path, env=env)).code == 0
    assert (await imagebot_process("imagine", '=HYPERLINK("x")', cwd=tmp_path, env=env)).code == 0
    return env


async def test_usage_and_history_as_json_and_csv(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    env = await _two_jobs(fake_openai, tmp_path)

    usage = await imagebot_process("usage", "--format", "json", cwd=tmp_path, env=env)
    assert usage.code == 0, usage.stderr
    (row,) = json.loads(usage.stdout)
    assert row["user"].startswith("cli:")
    assert (row["jobs"], row["images"]) == (2, 3)
    assert row["dollars"] > 0

    by_channel = await imagebot_process("usage", "--by", "channel", "--format", "csv", cwd=tmp_path, env=env)
    assert by_channel.code == 0, by_channel.stderr
    (record,) = list(csv.DictReader(io.StringIO(by_channel.stdout)))
    assert list(record) == ["channel", "jobs", "images", "dollars"]
    assert (record["jobs"], record["images"]) == ("2", "3")
    assert float(record["dollars"]) == row["dollars"]

    history = await imagebot_process("history", "--format", "json", cwd=tmp_path, env=env)
    assert history.code == 0, history.stderr
    newest, oldest = json.loads(history.stdout)
    assert newest["prompt"] == '=HYPERLINK("x")' and oldest["prompt"] == "a fox"
    assert oldest["images"] == 2 and oldest["status"] == "delivered" and oldest["kind"] == "generate"
    assert oldest["created"].endswith("+00:00") and oldest["cost"] > 0

    table = await imagebot_process("history", "--format", "csv", cwd=tmp_path, env=env)
    assert table.code == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [r["job"] for r in rows] == [newest["job"], oldest["job"]]
    assert rows[0]["prompt"] == '\'=HYPERLINK("x")'  # a spreadsheet shows it, never runs it
    assert rows[1]["prompt"] == "a fox"


async def test_the_table_stays_the_default(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    env = await _two_jobs(fake_openai, tmp_path)
    usage = await imagebot_process("usage", cwd=tmp_path, env=env)
    assert usage.stdout.startswith("since ")
    refused = await imagebot_process("history", "--format", "xml", cwd=tmp_path, env=env)
    assert refused.code == 2 and "invalid choice" in refused.stderr


async def test_empty_reports_are_still_well_formed(tmp_path: Path) -> None:
    assert json.loads((await imagebot_process("history", "--format", "json", cwd=tmp_path)).stdout) == []
    header = (await imagebot_process("usage", "--format", "csv", cwd=tmp_path)).stdout
    assert header.strip() == "user,jobs,images,dollars"


@given(st.lists(st.text(), max_size=5))
def test_csv_round_trips_any_prompt_as_one_cell(prompts: list[str]) -> None:
    records = [{"job": f"j{i}", "prompt": prompt} for i, prompt in enumerate(prompts)]
    rows = list(csv.DictReader(io.StringIO(as_csv(records, ["job", "prompt"]), newline="")))
    assert [r["job"] for r in rows] == [r["job"] for r in records]
    for row, prompt in zip(rows, prompts, strict=True):
        cell = row["prompt"]
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert cell == prompt or cell == "'" + prompt
